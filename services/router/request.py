"""A validated generation request: every public field checked at the edge, errors naming it.

``parse_request`` turns a ``GenerateRequest`` into a ``Request`` or raises ``InvalidRequest``
(→ INVALID_ARGUMENT) with the field and what to change. Tokenization happens here too, so the
prompt's length is checked against the context: on a worker thread, so a long prompt never
stalls the event loop (other requests, ``GetInfo``), and only once the text is known to be
within ``PROMPT_BYTES_PER_TOKEN`` UTF-8 bytes per context token (no tokenizer packs more into
one token in practice; a longer text could not fit the context).
"""

from __future__ import annotations

import asyncio
import math
import re
import uuid
from dataclasses import dataclass

from specdec.core.errors import InvalidRequest
from specdec.core.limits import MAX_SPEC_DEPTH, check_logprobs
from specdec.core.tokenizer import Tokenizer
from specdec.router.depth_policy import POLICIES
from specdec.v1 import generation_pb2

PROMPT_BYTES_PER_TOKEN = 16
MAX_STOP_STRINGS = 8
MAX_STOP_CHARS = 64
MAX_ID_CHARS = 128
_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:@/+=-]*$")

POLICY_NAMES = {
    generation_pb2.DEPTH_POLICY_UNSPECIFIED: None,
    generation_pb2.DEPTH_POLICY_FIXED: "fixed",
    generation_pb2.DEPTH_POLICY_HEURISTIC: "heuristic",
    generation_pb2.DEPTH_POLICY_GOODPUT: "goodput",
}
DRAFT_METHODS = {
    generation_pb2.DRAFT_METHOD_UNSPECIFIED: None,
    generation_pb2.DRAFT_METHOD_MODEL: "model",
    generation_pb2.DRAFT_METHOD_NGRAM: "ngram",
    generation_pb2.DRAFT_METHOD_NONE: "none",
}
# The other way round, for clients that build requests from names (CLI, HTTP face).
POLICY_BY_NAME = {name: value for value, name in POLICY_NAMES.items()}
DRAFT_METHOD_BY_NAME = {name: value for value, name in DRAFT_METHODS.items()}


@dataclass(frozen=True)
class Limits:
    vocab_size: int
    max_context_tokens: int
    max_output_tokens: int


@dataclass(frozen=True)
class Request:
    prompt_ids: list[int]
    temperature: float
    top_k: int
    top_p: float
    seed: int | None
    max_tokens: int
    stop: tuple[str, ...]
    session_id: str
    request_id: str
    policy: str | None  # None: the server's default
    fixed_depth: int
    draft_method: str | None  # "model", "ngram", "none"; None: the server's default
    draft_ahead: bool | None = None  # None: the server's default
    identity: str = ""  # the caller, from its API key ("" without API keys): owns its sessions
    logprobs: int | None = None  # alternatives per generated token's logprob; None: no logprobs


async def parse_request(
    msg: generation_pb2.GenerateRequest, tokenizer: Tokenizer, limits: Limits, identity: str = ""
) -> Request:
    """``msg`` checked field by field, from the caller ``identity`` (its API key's)."""
    prompt_ids = await _prompt(msg, tokenizer, limits)
    sampling = msg.sampling
    temperature = sampling.temperature
    if not math.isfinite(temperature) or not 0.0 <= temperature <= 100.0:
        raise InvalidRequest("sampling.temperature", f"must be in [0, 100], got {temperature}")
    top_p = sampling.top_p if sampling.HasField("top_p") else 1.0
    if not (math.isfinite(top_p) and 0.0 < top_p <= 1.0):
        raise InvalidRequest("sampling.top_p", f"must be in (0, 1], got {top_p}")
    if not 1 <= msg.max_tokens <= limits.max_output_tokens:
        raise InvalidRequest(
            "max_tokens", f"must be in [1, {limits.max_output_tokens}], got {msg.max_tokens}"
        )
    stop = tuple(msg.stop)
    if len(stop) > MAX_STOP_STRINGS or any(not 1 <= len(s) <= MAX_STOP_CHARS for s in stop):
        raise InvalidRequest(
            "stop", f"at most {MAX_STOP_STRINGS} strings of 1-{MAX_STOP_CHARS} characters"
        )
    for field, value in (("session_id", msg.session_id), ("request_id", msg.request_id)):
        if len(value) > MAX_ID_CHARS or not _ID_PATTERN.match(value):
            raise InvalidRequest(
                field, f"at most {MAX_ID_CHARS} characters of letters, digits and ._:@/+=-"
            )
    if msg.depth_policy not in POLICY_NAMES:
        raise InvalidRequest(
            "depth_policy",
            f"unknown policy {msg.depth_policy}; known: {', '.join(sorted(POLICIES))}",
        )
    if msg.fixed_depth > MAX_SPEC_DEPTH:
        raise InvalidRequest(
            "fixed_depth", f"must be in [0, {MAX_SPEC_DEPTH}], got {msg.fixed_depth}"
        )
    if msg.draft_method not in DRAFT_METHODS:
        raise InvalidRequest("draft_method", f"unknown draft method {msg.draft_method}")
    logprobs = msg.logprobs if msg.HasField("logprobs") else None
    check_logprobs(logprobs)
    return Request(
        prompt_ids=prompt_ids,
        temperature=temperature,
        top_k=sampling.top_k,
        top_p=top_p,
        seed=sampling.seed if sampling.HasField("seed") else None,
        max_tokens=msg.max_tokens,
        stop=stop,
        session_id=msg.session_id,
        request_id=msg.request_id or uuid.uuid4().hex,
        policy=POLICY_NAMES[msg.depth_policy],
        fixed_depth=msg.fixed_depth,
        draft_method=DRAFT_METHODS[msg.draft_method],
        draft_ahead=msg.draft_ahead if msg.HasField("draft_ahead") else None,
        identity=identity,
        logprobs=logprobs,
    )


def check_prompt_bytes(text: str, limits: Limits, field: str) -> None:
    """Refuse, before tokenizing it, a text too long for the context in any tokenization."""
    max_bytes = limits.max_context_tokens * PROMPT_BYTES_PER_TOKEN
    # A character is at least one byte: the count alone refuses most oversized texts.
    if len(text) > max_bytes or len(text.encode()) > max_bytes:
        raise InvalidRequest(
            field,
            f"is over {max_bytes} bytes of UTF-8 ({PROMPT_BYTES_PER_TOKEN} per token of "
            f"the {limits.max_context_tokens}-token context); shorten it",
        )


async def _prompt(
    msg: generation_pb2.GenerateRequest, tokenizer: Tokenizer, limits: Limits
) -> list[int]:
    which = msg.WhichOneof("prompt")
    if which is None:
        raise InvalidRequest("prompt", "set prompt_text or prompt_token_ids")
    if which == "prompt_text":
        field, text = "prompt_text", msg.prompt_text
        if not text:
            raise InvalidRequest(field, "is empty")
        check_prompt_bytes(text, limits, field)
        ids = await asyncio.to_thread(tokenizer.encode, text)
    else:
        field, ids = "prompt_token_ids", list(msg.prompt_token_ids.ids)
        if len(ids) < limits.max_context_tokens:  # (else refused below)
            bad = [t for t in ids if t >= limits.vocab_size]
            if bad:
                raise InvalidRequest(
                    field, f"token id {bad[0]} is outside the vocabulary [0, {limits.vocab_size})"
                )
    if not ids:
        raise InvalidRequest(field, "is empty (no tokens)")
    if len(ids) >= limits.max_context_tokens:
        raise InvalidRequest(
            field,
            f"has {len(ids)} tokens; the context holds "
            f"{limits.max_context_tokens}, leaving no room to generate",
        )
    return ids
