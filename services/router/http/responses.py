"""Response bodies of the HTTP API: whole answers, stream chunks and ``usage``.

One ``Answer`` per request knows its endpoint (completion or chat), id, creation time and model,
and writes OpenAI's shapes: ``text_completion`` / ``chat.completion`` objects, their stream
chunks (``chat.completion.chunk`` with a ``delta``; the first delta of a choice carries the
role), and the ``usage`` object built from the loop's ``GenerationStats``: OpenAI's token counts
(prompt tokens counted once per prompt, however many choices continue it), the cached prompt
tokens, and a ``specdec`` object with the speculation's own counts.

A choice's ``logprobs`` is null unless asked for; its shape is ``logprobs.py``'s.
Non-goals: tool calls, ``system_fingerprint``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from specdec.router.http.convert import Choice
from specdec.router.speculation import FINISH_NAMES
from specdec.v1 import generation_pb2


def finish_name(reason: int) -> str:
    return FINISH_NAMES.get(reason, "stop")  # type: ignore[call-overload]


def usage(
    choices: Sequence[Choice], stats: Mapping[int, generation_pb2.GenerationStats]
) -> dict[str, Any]:
    """``usage`` over every choice's stats (choice index → its stats)."""
    firsts = {c.prompt_index: stats[c.index] for c in reversed(choices) if c.index in stats}
    prompt_tokens = sum(s.prompt_tokens for s in firsts.values())
    completion = sum(s.output_tokens for s in stats.values())
    rounds = sum(s.rounds for s in stats.values())
    drafted = sum(s.draft_tokens for s in stats.values())
    accepted = sum(s.accepted_tokens for s in stats.values())
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {
            "cached_tokens": sum(s.cached_prompt_tokens for s in firsts.values())
        },
        "specdec": {
            "rounds": rounds,
            "draft_tokens": drafted,
            "accepted_tokens": accepted,
            "acceptance_rate": accepted / drafted if drafted else 0.0,
            "mean_acceptance_length": completion / rounds if rounds else 0.0,  # tokens/round
            "queue_ms": max((s.queue_ns for s in stats.values()), default=0) / 1e6,
        },
    }


@dataclass
class Answer:
    """The shapes of one request's answer."""

    kind: Literal["completion", "chat"]
    model: str
    request_id: str  # the answer's id is cmpl-<request_id> or chatcmpl-<request_id>
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def id(self) -> str:
        return f"{'cmpl' if self.kind == 'completion' else 'chatcmpl'}-{self.request_id}"

    def _head(self, object_: str) -> dict[str, Any]:
        return {"id": self.id, "object": object_, "created": self.created, "model": self.model}

    def whole(
        self,
        texts: Mapping[int, str],
        finishes: Mapping[int, int],
        usage_: dict[str, Any],
        logprobs: Mapping[int, dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """The non-streamed answer (choice index → text, finish reason, logprobs object)."""
        choices = []
        for index in sorted(texts):
            choice: dict[str, Any] = {"index": index}
            if self.kind == "completion":
                choice["text"] = texts[index]
            else:
                choice["message"] = {"role": "assistant", "content": texts[index]}
            found = logprobs.get(index) if logprobs is not None else None
            choice.update(logprobs=found, finish_reason=finish_name(finishes[index]))
            choices.append(choice)
        object_ = "text_completion" if self.kind == "completion" else "chat.completion"
        return {**self._head(object_), "choices": choices, "usage": usage_}

    def chunk(
        self,
        index: int,
        text: str,
        finish: str | None,
        first: bool,
        with_usage: bool,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A stream chunk of choice ``index`` (``first``: its first chunk) and the logprobs
        object of its tokens, when asked for."""
        choice: dict[str, Any] = {"index": index}
        if self.kind == "completion":
            choice["text"] = text
            object_ = "text_completion"
        else:
            delta: dict[str, str] = {"role": "assistant"} if first else {}
            if text or first or logprobs:
                delta["content"] = text
            choice["delta"] = delta
            object_ = "chat.completion.chunk"
        choice.update(logprobs=logprobs, finish_reason=finish)
        body = {**self._head(object_), "choices": [choice]}
        if with_usage:
            body["usage"] = None  # OpenAI's shape: null on every chunk but the last
        return body

    def usage_chunk(self, usage_: dict[str, Any]) -> dict[str, Any]:
        """The last chunk with ``stream_options.include_usage``: no choices, the usage."""
        object_ = "text_completion" if self.kind == "completion" else "chat.completion.chunk"
        return {**self._head(object_), "choices": [], "usage": usage_}


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event: ``data: <json>`` (or a literal such as ``[DONE]``)."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n"
