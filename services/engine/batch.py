"""One batched forward's inputs: many sequences, each with its own new tokens and position.

A ``Chunk`` is one sequence's share of a step: a prefill chunk, the k+1 tokens of a verification,
or one decode token, written into its KV-cache slot from ``start_pos`` on. ``ForwardBatch`` packs
a list of chunks into flat tensors for the linear layers ([T] tokens, no padding) and the index
tensors that scatter them into a padded [B, L] layout for attention.
``generic=True`` builds the batch for a compiled forward (``compiled.py``): the same inputs in
fewer shape classes, so dynamo compiles fewer graphs: always a mask and no ``single_slot``, at
least ``MIN_LOGIT_ROWS`` logit rows (extra rows repeat token 0; the caller drops them) and a
context of at least ``MIN_CONTEXT`` keys (the mask hides those past a query).
Non-goals: scheduling (which chunks go together is the services' business).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch

MIN_LOGIT_ROWS = 2  # a generic batch's logit rows never number 0 or 1 (dynamo specialises both)
MIN_CONTEXT = 2  # ... nor its context length 1


@dataclass(frozen=True)
class Chunk:
    """New tokens for one slot, the first at absolute position ``start_pos``.

    ``num_logits`` asks for the logits of the last that many tokens (0 for a prefill chunk whose
    output nobody needs, k+1 for a verification, 1 for a decode step). ``features`` is each
    token's input feature, for a draft that reads the target's hidden states
    (``feature_draft.py``); None for every other model.
    """

    slot: int
    token_ids: Sequence[int]
    start_pos: int
    num_logits: int = 1
    features: torch.Tensor | None = None  # [n, C]


@dataclass(frozen=True)
class ForwardBatch:
    """Flat and padded views of a list of chunks, on one device."""

    input_ids: torch.Tensor  # [T] int64, all chunks' tokens back to back
    positions: torch.Tensor  # [T] int64, absolute position of each token
    token_slots: torch.Tensor  # [T] int64, KV-cache slot of each token
    token_rows: torch.Tensor  # [T] int64, chunk index b of each token
    token_cols: torch.Tensor  # [T] int64, index of the token inside its chunk
    slot_ids: torch.Tensor  # [B] int64
    attn_mask: torch.Tensor | None  # [B, 1, L, S] bool, True = may attend; None = attend to all
    logit_indices: torch.Tensor  # [N] int64, rows of [T] whose logits are returned
    num_logits: tuple[int, ...]  # per chunk, sums to N (less padding rows in a generic batch)
    max_query_len: int  # L
    context_len: int  # S, the longest start_pos + len(token_ids) in the batch
    single_slot: int | None  # the slot when B == 1 (lets attention read the cache without a copy)
    generic: bool = False  # built for a compiled forward (see the module docstring)
    features: torch.Tensor | None = None  # [T, C], the chunks' input features back to back

    @classmethod
    def build(
        cls,
        chunks: Sequence[Chunk],
        device: torch.device | str = "cpu",
        sliding_window: int | None = None,
        generic: bool = False,
        context_bucket: int = 1,
        max_context: int | None = None,
    ) -> ForwardBatch:
        """``context_bucket``: a generic batch's context rounds up to a multiple of it (capped
        at ``max_context``), so CUDA graphs are recorded per bucket, not per length."""
        ids: list[int] = []
        positions: list[int] = []
        token_slots: list[int] = []
        rows: list[int] = []
        cols: list[int] = []
        logit_idx: list[int] = []
        for b, chunk in enumerate(chunks):
            n = len(chunk.token_ids)
            base = len(ids)
            ids.extend(chunk.token_ids)
            positions.extend(range(chunk.start_pos, chunk.start_pos + n))
            token_slots.extend([chunk.slot] * n)
            rows.extend([b] * n)
            cols.extend(range(n))
            logit_idx.extend(range(base + n - chunk.num_logits, base + n))
        if generic and len(logit_idx) < MIN_LOGIT_ROWS:
            logit_idx.extend([0] * (MIN_LOGIT_ROWS - len(logit_idx)))
        starts = [c.start_pos for c in chunks]
        query_lens = [len(c.token_ids) for c in chunks]
        max_q = max(query_lens)
        context = max(s + q for s, q in zip(starts, query_lens, strict=True))
        if generic:  # a context of 1 (a first token) would be one more shape class
            context = max(context, MIN_CONTEXT)  # the mask hides the keys past a query
            context = -(-context // context_bucket) * context_bucket
            context = min(context, max_context or context)

        def t(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64, device=device)

        needs_mask = (
            generic or not (max_q == 1 and len(set(starts)) == 1) or sliding_window is not None
        )
        mask = None
        if needs_mask:
            query_pos = t(starts)[:, None] + torch.arange(max_q, device=device)  # [B, L]
            key_pos = torch.arange(context, device=device)  # [S]
            mask = key_pos[None, None, :] <= query_pos[:, :, None]  # [B, L, S] causal
            if sliding_window is not None:
                mask &= key_pos[None, None, :] > query_pos[:, :, None] - sliding_window
            mask = mask[:, None]  # [B, 1, L, S]
        features = None  # the runner checked: every chunk has them, one per token, or none
        if chunks[0].features is not None:
            features = torch.cat([cast(torch.Tensor, c.features) for c in chunks]).to(device)
        return cls(
            input_ids=t(ids),
            positions=t(positions),
            token_slots=t(token_slots),
            token_rows=t(rows),
            token_cols=t(cols),
            slot_ids=t([c.slot for c in chunks]),
            attn_mask=mask,
            logit_indices=t(logit_idx),
            num_logits=tuple(c.num_logits for c in chunks),
            max_query_len=max_q,
            context_len=context,
            single_slot=chunks[0].slot if len(chunks) == 1 and not generic else None,
            generic=generic,
            features=features,
        )
