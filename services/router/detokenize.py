"""Streaming text out of token ids: incremental decoding and stop strings.

Text is released only when it is final: never half a multi-byte character (the tokenizer's
replacement character at the end means "wait"), and never a piece that could still turn out to
be the start of a stop string. Each round decodes only a short window of recent tokens (the
prefix/read offsets of text-generation-inference), not the whole output again.
"""

from __future__ import annotations

from collections.abc import Sequence

from specdec.core.tokenizer import Tokenizer


class Detokenizer:
    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self._hold = max((len(s) for s in stop), default=1) - 1
        self.token_ids: list[int] = []
        self.text = ""  # decoded text that no later token can change
        self._prefix = 0  # tokens before this are decoded into self.text for good
        self._read = 0  # tokens before this are in self.text
        self.emitted = 0  # characters of self.text already released
        self.stopped = False

    def add(self, token_ids: Sequence[int]) -> str:
        """Take new tokens; return the text that became final (may be empty)."""
        self.token_ids.extend(token_ids)
        self._decode_window(final=False)
        cut = self._find_stop()
        if cut is not None:
            self.stopped = True
            return self._release(cut)
        return self._release(len(self.text) - self._hold)

    def flush(self) -> str:
        """The rest of the text, at the end of generation."""
        if self.stopped:
            return ""
        self._decode_window(final=True)
        return self._release(len(self.text))

    def _decode_window(self, final: bool) -> None:
        """Append the text of tokens after ``_read``, decoded in the context of the tokens from
        ``_prefix`` (so a word's leading space or a multi-byte character comes out right)."""
        decode = self.tokenizer.decode
        prefix_text = decode(self.token_ids[self._prefix : self._read])
        new_text = decode(self.token_ids[self._prefix :])
        if len(new_text) > len(prefix_text) and (final or not new_text.endswith("\ufffd")):
            self.text += new_text[len(prefix_text) :]
            self._prefix, self._read = self._read, len(self.token_ids)

    def _find_stop(self) -> int | None:
        start = max(0, self.emitted - self._hold)
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _release(self, end: int) -> str:
        if end <= self.emitted:
            return ""
        piece = self.text[self.emitted : end]
        self.emitted = end
        return piece
