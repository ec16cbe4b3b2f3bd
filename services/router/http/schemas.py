"""The request bodies of the OpenAI-compatible HTTP API, as pydantic models.

Only shapes and types are checked here; ranges (temperature, max_tokens, stop strings, the
context) are the router's own checks (``router/request.py``), shared with gRPC. Fields OpenAI
clients commonly send and this server cannot honour yet are declared, so that ``unsupported``
can refuse them by name rather than ignore them. Unknown fields are ignored, as OpenAI does.

Non-goals: response bodies (``responses.py`` builds plain dicts), tools, function calling,
multi-modal content, the Responses API.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_N = 16  # generations per prompt
TokenIds = list[int]


class SpecdecOptions(BaseModel):
    """The ``specdec`` extra: speculation settings of one request (GenerateRequest fields)."""

    model_config = ConfigDict(extra="forbid")

    depth_policy: Literal["fixed", "heuristic", "goodput"] | None = None
    k: int | None = Field(default=None, ge=0)  # fixed depth; implies depth_policy "fixed"
    draft_method: Literal["model", "ngram", "none"] | None = None
    session_id: str = ""
    draft_ahead: bool | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class CommonParams(BaseModel):
    """What both endpoints take."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None  # None: the served model
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None  # extra (vLLM's): -1 or 0 turns it off
    min_p: float | None = None  # extra: refused unless 0 (the router has no min-p)
    seed: int | None = Field(default=None, ge=0, lt=2**64)
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted, not used
    specdec: SpecdecOptions | None = None
    # Completions: alternatives per token, 0-20; chat: true, with top_logprobs alternatives.
    # The target's raw logprobs (before temperature, top-k, top-p), as vLLM returns by default.
    logprobs: bool | int | None = None
    top_logprobs: int | None = None  # chat only
    # Declared so they can be refused by name (see ``unsupported``).
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = False  # vLLM's extra

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(CommonParams):
    """``POST /v1/completions``: one choice per prompt (and per ``n``)."""

    prompt: str | list[str] | TokenIds | list[TokenIds]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


class ChatMessage(BaseModel):
    """One message; ``content`` as a string or as a list of text parts."""

    model_config = ConfigDict(extra="allow")  # name, tool_call_id, ...: the template may use them

    role: str
    content: str | list[dict[str, object]] | None = None

    def text(self) -> str:
        """The content as one string (text parts joined; other parts refused by the caller)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(str(part.get("text", "")) for part in self.content)


class ChatCompletionRequest(CommonParams):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    add_generation_prompt: bool = True  # extra (vLLM's)
    # Declared so they can be refused by name (see ``unsupported``).
    tools: list[dict[str, object]] | None = None
    response_format: dict[str, object] | None = None


def unsupported(body: CommonParams) -> tuple[str, str] | None:
    """The first field set to something this server cannot do: (param, message); else None."""
    checks: list[tuple[str, bool, str]] = [
        ("min_p", bool(body.min_p), "min_p is not supported by this server; use top_p or top_k"),
        ("presence_penalty", bool(body.presence_penalty), "penalties are not supported"),
        ("frequency_penalty", bool(body.frequency_penalty), "penalties are not supported"),
        ("logit_bias", bool(body.logit_bias), "logit_bias is not supported"),
        ("ignore_eos", body.ignore_eos, "ignore_eos is not supported; leave it false"),
    ]
    if isinstance(body, CompletionRequest):
        checks += [
            ("echo", body.echo, "echo is not supported; leave it false"),
            ("suffix", bool(body.suffix), "suffix is not supported"),
            ("best_of", (body.best_of or 1) > 1, "best_of is not supported; use n"),
        ]
    elif isinstance(body, ChatCompletionRequest):
        text_only = (body.response_format or {}).get("type", "text") == "text"
        checks += [
            ("tools", bool(body.tools), "tools are not supported"),
            ("response_format", not text_only, "only the text response format is supported"),
        ]
        for message in body.messages:
            parts = message.content if isinstance(message.content, list) else []
            if any(part.get("type", "text") != "text" for part in parts):
                checks.append(("messages", True, "only text content parts are supported"))
                break
    return next(((param, message) for param, bad, message in checks if bad), None)
