"""A model with its KV cache: validates a step's chunks, runs one batched forward, moves lengths.

This is the engine's only door to the model for the services and the in-process generator.
Every chunk must continue its slot exactly where the cache ends (``start_pos == length``): the
caller rolls back first. That check is what makes position-addressed messages safe to retry.
With ``compile`` the forward goes through ``CompiledForward`` (``compiled.py``): eager until
``warm_compiled`` has compiled its shapes, compiled after, eager again if compiling fails.
Non-goals: scheduling, sampling (see ``sampling.py``), acceptance (see ``rejection.py``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from specdec.core.errors import InvalidRequest
from specdec.engine.batch import Chunk, ForwardBatch
from specdec.engine.compiled import CompiledForward, mark_static
from specdec.engine.kv_cache import KVCache
from specdec.engine.model import DecoderModel

CUDA_CONTEXT_BUCKET = 128  # keys: CUDA graphs are recorded per context bucket


class ModelRunner:
    """Runs ``DecoderModel`` forwards over a slot cache of ``num_slots`` sequences."""

    returns_hidden = True  # ``step_hidden`` works (a tensor-parallel runner's does not)

    def __init__(
        self,
        model: DecoderModel,
        num_slots: int = 8,
        max_seq_len: int | None = None,
        compile: bool = False,
    ) -> None:
        self.model = model.eval()
        self.config = model.config
        self.cache: KVCache = model.new_cache(num_slots, max_seq_len)
        self.device = model.lm_head.weight.device
        self.compiled = CompiledForward(model) if compile else None
        if self.compiled is not None and self.device.type == "cuda":
            mark_static(self.cache)

    def warm_compiled(self, background: bool = False) -> None:
        """Compile the forward's shapes (no-op without ``compile``); see ``CompiledForward``."""
        if self.compiled is not None:
            self.compiled.warm(self.cache.num_slots, self.cache.max_seq_len, background)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_seq_len(self) -> int:
        return self.cache.max_seq_len

    def timed_step(self, slot: int, base: int, num_tokens: int = 1) -> float:
        """Seconds for one step of ``num_tokens`` tokens on ``slot`` from position ``base``,
        rolled back after it: for measuring what a step costs, not for generating."""
        chunk = Chunk(slot, [1] * num_tokens, base, num_tokens, self.blank_features(num_tokens))
        start = time.perf_counter()
        self.step([chunk])
        elapsed = time.perf_counter() - start
        self.cache.rollback_to(slot, base)
        return elapsed

    def blank_features(self, n: int) -> torch.Tensor | None:
        """Zero input features for ``n`` tokens when the model reads them (a feature draft),
        else None: what timing and warm-up steps feed.  # → [n, C] or None"""
        if not self.model.reads_features:
            return None
        return torch.zeros(n, self.config.hidden_size, device=self.device)

    def step(self, chunks: Sequence[Chunk]) -> list[torch.Tensor]:
        """One forward over all ``chunks``; each chunk's logits.  # → [num_logits, V] fp32 each"""
        if not chunks:
            return []
        logits, _ = self._forward(chunks, hidden=False)
        return logits

    def step_hidden(self, chunks: Sequence[Chunk]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``step``, and each chunk's hidden state at every token it fed (a target's normed
        final hidden, a feature draft's output), eager always.
        # → [num_logits, V] fp32 each, [len(token_ids), C] each"""
        if not chunks:
            return [], []
        logits, hidden = self._forward(chunks, hidden=True)
        assert hidden is not None
        return logits, list(torch.split(hidden, [len(c.token_ids) for c in chunks]))

    def _forward(
        self, chunks: Sequence[Chunk], hidden: bool
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        self._validate(chunks)
        generic = not hidden and self.compiled is not None and self.compiled.ready
        batch = ForwardBatch.build(
            chunks,
            self.device,
            self.config.sliding_window,
            generic,
            CUDA_CONTEXT_BUCKET if self.device.type == "cuda" else 1,
            self.cache.max_seq_len,
        )
        states = None
        with torch.inference_mode():
            if hidden:
                logits, states = self.model(batch, self.cache, hidden=True)
            else:
                logits = (self.compiled or self.model)(batch, self.cache)  # [N (+ pad), V]
        for chunk in chunks:
            self.cache.append(chunk.slot, len(chunk.token_ids))
        split = torch.split(logits[: sum(batch.num_logits)], list(batch.num_logits))
        return list(split), states

    def _validate(self, chunks: Sequence[Chunk]) -> None:
        seen: set[int] = set()
        vocab = self.config.vocab_size
        for chunk in chunks:
            if chunk.slot in seen:
                raise InvalidRequest("slot", f"slot {chunk.slot} appears twice in one step")
            seen.add(chunk.slot)
            length = self.cache.length(chunk.slot)  # also checks the slot is allocated
            if chunk.start_pos != length:
                raise InvalidRequest(
                    "position",
                    f"slot {chunk.slot} holds {length} tokens; "
                    f"a chunk must start there, not at {chunk.start_pos}",
                )
            n = len(chunk.token_ids)
            if n == 0:
                raise InvalidRequest("token_ids", "a chunk needs at least one token")
            if not 0 <= chunk.num_logits <= n:
                raise InvalidRequest("num_logits", f"must be in [0, {n}], got {chunk.num_logits}")
            if length + n > self.cache.max_seq_len:
                raise InvalidRequest(
                    "token_ids",
                    f"{length + n} tokens exceed the context of {self.cache.max_seq_len}",
                )
            if (chunk.features is not None) != self.model.reads_features or (
                chunk.features is not None and chunk.features.shape != (n, self.config.hidden_size)
            ):
                want = f"[{n}, {self.config.hidden_size}]" if self.model.reads_features else "none"
                raise InvalidRequest("features", f"this model takes input features {want}")
            bad = [t for t in chunk.token_ids if not 0 <= t < vocab]
            if bad:
                raise InvalidRequest(
                    "token_ids", f"token id {bad[0]} is outside the vocabulary [0, {vocab})"
                )
