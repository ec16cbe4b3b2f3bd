"""The router's OpenAI-compatible HTTP face (Starlette on uvicorn, in the router's loop)."""
