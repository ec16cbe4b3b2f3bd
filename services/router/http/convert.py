"""An OpenAI request body → the router's ``GenerateRequest`` messages, one per choice.

Prompts are tokenized here (off the event loop) rather than in ``parse_request``, so that the
context check can count them and answer in vLLM's words, and so that a chat prompt (whose
template already wrote the special tokens) is encoded without adding them again. Everything
else (ranges, vocabulary, stop strings, ids) is left to ``parse_request``, as for gRPC.

Choices are ordered prompt by prompt, ``n`` per prompt; with a ``seed``, choice j of a prompt
samples with seed + j.

Non-goals: prompt caching across requests (the sessions do that), multi-modal prompts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from specdec.core.limits import MAX_TOP_LOGPROBS
from specdec.core.tokenizer import Tokenizer
from specdec.router.http.chat_template import ChatTemplate
from specdec.router.http.errors import ApiError, bad_request
from specdec.router.http.schemas import ChatCompletionRequest, CommonParams, CompletionRequest
from specdec.router.request import (
    DRAFT_METHOD_BY_NAME,
    POLICY_BY_NAME,
    Limits,
    check_prompt_bytes,
)
from specdec.v1 import common_pb2, generation_pb2

DEFAULT_COMPLETION_TOKENS = 16  # /v1/completions without max_tokens (OpenAI's default)
MAX_CHOICES = 64  # prompts × n in one request
UINT32 = 2**32
UINT64 = 2**64


@dataclass(frozen=True)
class Choice:
    """One generation of a request: which prompt it continues, and the router's request."""

    index: int
    prompt_index: int
    message: generation_pb2.GenerateRequest


async def _tokenize(text: str, tokenizer: Tokenizer, limits: Limits, param: str) -> list[int]:
    check_prompt_bytes(text, limits, param)  # cannot fit: not tokenized (a 400 naming param)
    special = param == "prompt"  # a chat template writes the special tokens itself
    return await asyncio.to_thread(tokenizer.encode, text, special)


async def completion_prompts(
    body: CompletionRequest, tokenizer: Tokenizer, limits: Limits
) -> list[list[int]]:
    """The token ids of each prompt of ``body.prompt`` (text, texts, ids, or lists of ids)."""
    prompt = body.prompt
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise bad_request("prompt", "prompt: is empty")
    if isinstance(prompt[0], int):
        prompt = [prompt]  # type: ignore[list-item]  # one prompt of token ids
    prompts: list[list[int]] = []
    for item in prompt:
        if isinstance(item, str):
            prompts.append(await _tokenize(item, tokenizer, limits, "prompt"))
        else:
            ids = list(item)  # type: ignore[arg-type]
            if any(not 0 <= t < UINT32 for t in ids):
                raise bad_request("prompt", "prompt: token ids must be non-negative")
            prompts.append(ids)
    return prompts


async def chat_prompt(
    body: ChatCompletionRequest, template: ChatTemplate | None, tokenizer: Tokenizer, limits: Limits
) -> list[int]:
    """The token ids of ``body.messages`` rendered with the model's chat template."""
    if template is None:
        raise bad_request(
            "messages",
            "this model has no chat template (no chat_template.jinja, nor a chat_template in "
            "tokenizer_config.json): start the router with --chat-template FILE, or use "
            "/v1/completions",
        )
    messages = [{**m.model_dump(exclude_none=True), "content": m.text()} for m in body.messages]
    text = await asyncio.to_thread(template.render, messages, body.add_generation_prompt)
    return await _tokenize(text, tokenizer, limits, "messages")


def max_tokens(body: CommonParams, prompts: Sequence[list[int]], limits: Limits, param: str) -> int:
    """The completion budget asked for (or the default), checked against the context."""
    asked = body.max_tokens
    if isinstance(body, ChatCompletionRequest) and body.max_completion_tokens is not None:
        asked = body.max_completion_tokens
    context = limits.max_context_tokens
    longest = max(len(p) for p in prompts)
    if asked is None:
        if isinstance(body, CompletionRequest):
            asked = DEFAULT_COMPLETION_TOKENS
        else:  # chat: the rest of the context
            asked = max(1, min(limits.max_output_tokens, context - longest))
    if asked < 1:
        raise bad_request("max_tokens", f"max_tokens: must be at least 1, got {asked}")
    if longest + asked > context:
        raise ApiError(
            400,
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{longest + asked} tokens ({longest} in the messages, {asked} in the completion). "
            "Please reduce the length of the messages or completion.",
            param=param,
            code="context_length_exceeded",
        )
    return asked


def logprobs_asked(body: CommonParams) -> int | None:
    """Alternatives per token asked for (``GenerateRequest.logprobs``); None: no logprobs.
    Completions take ``logprobs: N``; chat takes ``logprobs: true`` and ``top_logprobs: N``."""
    if isinstance(body, ChatCompletionRequest):
        if not body.logprobs:
            if body.top_logprobs is not None:
                raise bad_request("top_logprobs", "top_logprobs: needs logprobs: true")
            return None
        if not isinstance(body.logprobs, bool):
            raise bad_request(
                "logprobs",
                "logprobs: true or false on chat completions (top_logprobs: N sets how many "
                "alternatives per token)",
            )
        param, asked = "top_logprobs", body.top_logprobs or 0
    else:
        if body.top_logprobs is not None:
            raise bad_request(
                "top_logprobs", "top_logprobs: is for chat; /v1/completions takes logprobs: N"
            )
        if body.logprobs is None or body.logprobs is False:
            return None
        if body.logprobs is True:
            raise bad_request(
                "logprobs",
                f"logprobs: a count of alternatives per token (0-{MAX_TOP_LOGPROBS}) on "
                "/v1/completions, not true",
            )
        param, asked = "logprobs", body.logprobs
    if not 0 <= asked <= MAX_TOP_LOGPROBS:
        raise bad_request(param, f"{param}: must be in [0, {MAX_TOP_LOGPROBS}], got {asked}")
    return asked


def choices(
    body: CommonParams, prompts: Sequence[list[int]], budget: int, request_id: str
) -> list[Choice]:
    """One ``GenerateRequest`` per prompt and per ``n``."""
    if len(prompts) * body.n > MAX_CHOICES:
        raise bad_request("n", f"n: at most {MAX_CHOICES} choices (prompts × n) per request")
    top_k = body.top_k or 0
    if top_k < -1:
        raise bad_request("top_k", "top_k: must be -1 or 0 (off) or a positive count")
    options = body.specdec
    policy = options.depth_policy if options else None
    k = options.k if options else None
    num_top = logprobs_asked(body)
    if k is not None and policy is None:
        policy = "fixed"  # a depth asked for: keep it
    out = []
    for p, ids in enumerate(prompts):
        for j in range(body.n):
            sampling = common_pb2.SamplingParams(
                temperature=body.temperature, top_k=max(top_k, 0), top_p=body.top_p
            )
            if body.seed is not None:
                sampling.seed = (body.seed + j) % UINT64
            index = p * body.n + j
            message = generation_pb2.GenerateRequest(
                prompt_token_ids=generation_pb2.TokenIds(ids=ids),
                sampling=sampling,
                max_tokens=budget,
                stop=body.stop_strings(),
                session_id=options.session_id if options else "",
                request_id=f"{request_id}-{index}",
                depth_policy=POLICY_BY_NAME[policy],
                fixed_depth=min(k or 0, UINT32 - 1),
                draft_method=DRAFT_METHOD_BY_NAME[options.draft_method if options else None],
            )
            if options is not None and options.draft_ahead is not None:
                message.draft_ahead = options.draft_ahead
            if num_top is not None:
                message.logprobs = num_top
            out.append(Choice(index, p, message))
    return out
