"""The draft service: proposes tokens with a small model or n-gram lookup (see issue: pipeline)."""
