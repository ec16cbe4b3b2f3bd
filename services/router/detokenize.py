"""Streaming text out of token ids: incremental decoding and stop strings.

Text is released only when it is final: never half a multi-byte character (the tokenizer's
replacement character at the end means "wait"), and never a piece that could still turn out to
be the start of a stop string.
"""

from __future__ import annotations

from collections.abc import Sequence

from specdec.engine.tokenizer import Tokenizer


class Detokenizer:
    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self._hold = max((len(s) for s in stop), default=1) - 1
        self.token_ids: list[int] = []
        self.emitted = 0  # characters of text already released
        self.stopped = False

    def add(self, token_ids: Sequence[int]) -> str:
        """Take new tokens; return the text that became final (may be empty)."""
        self.token_ids.extend(token_ids)
        text = self.tokenizer.decode(self.token_ids)
        cut = self._find_stop(text)
        if cut is not None:
            self.stopped = True
            return self._release(text, cut)
        end = len(text) - self._hold
        if text.endswith("\ufffd"):
            end = min(end, len(text) - 1)
        return self._release(text, end)

    def flush(self) -> str:
        """The rest of the text, at the end of generation."""
        if self.stopped:
            return ""
        text = self.tokenizer.decode(self.token_ids)
        return self._release(text, len(text))

    def _find_stop(self, text: str) -> int | None:
        start = max(0, self.emitted - self._hold)
        hits = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _release(self, text: str, end: int) -> str:
        if end <= self.emitted:
            return ""
        piece = text[self.emitted : end]
        self.emitted = end
        return piece
