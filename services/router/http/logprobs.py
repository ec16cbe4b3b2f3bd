"""Logprobs in OpenAI's two shapes, from the router's ``TokenLogprob`` messages.

``/v1/completions`` with ``logprobs: N`` answers in the legacy shape: parallel lists ``tokens``,
``token_logprobs``, ``top_logprobs`` (one dict token text → logprob per token: the N likeliest
and the chosen token) and
``text_offset`` (each token's character offset in the completion, running across a stream's
chunks). ``/v1/chat/completions`` with ``logprobs: true, top_logprobs: N`` answers with
``content``: one ``{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}`` per token.

A token's text is its own decoding (special tokens included); a token that holds part of a
multi-byte character decodes to U+FFFD, as in vLLM, and ``bytes`` are that text's UTF-8 bytes.
The values are the target's raw logprobs (see ``TokenLogprob`` in ``common.proto``).
Non-goals: prompt logprobs (``echo``), ``return_tokens_as_token_ids``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from specdec.core.tokenizer import Tokenizer
from specdec.v1 import common_pb2


class TokenTexts:
    """Each token id's own text, decoded once per request."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._texts: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._texts.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            self._texts[token_id] = text
        return text


class CompletionLogprobs:
    """One choice's legacy ``logprobs`` objects; ``text_offset`` runs on from chunk to chunk."""

    def __init__(self, texts: TokenTexts) -> None:
        self.texts = texts
        self.offset = 0  # characters of the choice's tokens so far

    def shape(self, found: Sequence[common_pb2.TokenLogprob]) -> dict[str, Any]:
        tokens = [self.texts(t.token_id) for t in found]
        offsets = []
        for text in tokens:
            offsets.append(self.offset)
            self.offset += len(text)
        return {
            "tokens": tokens,
            "token_logprobs": [t.logprob for t in found],
            "top_logprobs": [self._tops(t) for t in found],
            "text_offset": offsets,
        }

    def _tops(self, token: common_pb2.TokenLogprob) -> dict[str, float]:
        """text → logprob of the N likeliest, most likely first, then the chosen token when it
        is not among them (OpenAI's legacy shape: up to N + 1 entries). Tokens whose texts
        coincide (pieces of one multi-byte character all read U+FFFD) keep the likeliest one's
        value."""
        tops: dict[str, float] = {}
        for alternative in (*token.top, token):
            tops.setdefault(self.texts(alternative.token_id), alternative.logprob)
        return tops


class ChatLogprobs:
    """One choice's chat ``logprobs`` objects (``content``)."""

    def __init__(self, texts: TokenTexts) -> None:
        self.texts = texts

    def shape(self, found: Sequence[common_pb2.TokenLogprob]) -> dict[str, Any]:
        content = [
            {**self._entry(t), "top_logprobs": [self._entry(a) for a in t.top]} for t in found
        ]
        return {"content": content}

    def _entry(self, token: common_pb2.TokenLogprob | common_pb2.TopLogprob) -> dict[str, Any]:
        text = self.texts(token.token_id)
        return {"token": text, "logprob": token.logprob, "bytes": list(text.encode())}
