"""Speculative acceptance: which draft tokens the target keeps, and the token that follows them.

Glossary (used in every name here and in the services):

- *draft tokens* (``draft_token_ids``): the K tokens the draft model proposed, one per position.
- *draft_probs*: the draft distribution each draft token was sampled from. On the wire it is
  sparse (``draft_sparse_ids`` [K, M], ``draft_sparse_probs`` [K, M]); tokens outside a row's ids
  have draft probability 0. It must be exactly the distribution the draft sampled from.
- *target_probs*: the target model's warped distribution (``sampling.target_probs``) at each of
  the K+1 positions: the one plain decoding would sample from.
- *accepted*: a draft token the target keeps. ``num_accepted`` counts the leading run of them.
- *recovered* token: after the first rejection, the replacement drawn from the residual
  ``normalize(max(0, target_probs - draft_probs))`` at that position.
- *bonus* token: after all K are accepted, the extra token drawn from ``target_probs[K]``.

Each verify step commits ``num_accepted`` draft tokens plus one recovered or bonus token, so the
output distribution is exactly the target's (speculative sampling: Leviathan, Kalman & Matias,
"Fast Inference from Transformers via Speculative Decoding", arXiv 2211.17192; Chen et al.,
"Accelerating Large Language Model Decoding with Speculative Sampling", arXiv 2302.01318).

The math is pure: randomness comes only from the generators passed in (one per position, see
``sampling.position_generator``), never from global seeding. Greedy verification
(``verify_greedy``) is kept apart from sampling verification (``verify_sampling``).

Errors: malformed draft input (it arrives over the wire) raises ``InvalidRequest`` naming
``draft_token_ids`` or ``draft_probs``; inconsistent target-side input is a bug (``ValueError``).

Non-goals: batching several requests in one call, tree (multi-branch) drafts, typical
acceptance or any other lossy acceptance rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from specdec.core.errors import InvalidRequest
from specdec.engine.logprobs import TokenLogprob
from specdec.engine.sampling import sample_token

# A sparse draft row must sum to 1 within this (fp16 rounding on the wire stays inside it).
DRAFT_PROBS_SUM_TOL = 1e-3


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of verifying one request's K draft tokens."""

    num_accepted: int  # leading draft tokens kept, 0..K
    next_token_id: int  # the recovered token on a rejection, the bonus token otherwise
    is_bonus: bool  # True when all K were accepted and next_token_id is the bonus token
    # When asked for: the target's logprob of each committed token (``token_ids``), in order.
    logprobs: tuple[TokenLogprob, ...] = ()
    # When asked for (a feature draft reads them): the target's final hidden state at each
    # position this step added to its cache, the last at the new cache length - 1.  # [n, C]
    features: Tensor | None = None

    @property
    def bonus_token_id(self) -> int | None:
        return self.next_token_id if self.is_bonus else None

    @property
    def recovered_token_id(self) -> int | None:
        return None if self.is_bonus else self.next_token_id

    def token_ids(self, draft_token_ids: Sequence[int]) -> list[int]:
        """The tokens this step commits: the accepted draft tokens, then the next token."""
        return [int(t) for t in draft_token_ids[: self.num_accepted]] + [self.next_token_id]


def verify_greedy(draft_token_ids: Sequence[int], target_logits: Tensor) -> VerifyResult:
    """Greedy verification: keep draft tokens while they equal the target's argmax.

    target_logits [K+1, V] (or already-warped probabilities: only the argmax matters). K may be
    0, which is plain greedy decoding. Ties go to the lowest id, as in ``torch.argmax``.
    """
    draft_ids = [int(t) for t in draft_token_ids]
    k = len(draft_ids)
    if target_logits.dim() != 2 or target_logits.shape[0] != k + 1:
        raise ValueError(f"target_logits must be [{k + 1}, V], got {tuple(target_logits.shape)}")
    _check_draft_ids(draft_ids, target_logits.shape[1])
    target_ids = target_logits.argmax(dim=-1).tolist()  # [K+1], one device sync
    for i, draft_id in enumerate(draft_ids):
        if draft_id != target_ids[i]:
            return VerifyResult(num_accepted=i, next_token_id=target_ids[i], is_bonus=False)
    return VerifyResult(num_accepted=k, next_token_id=target_ids[k], is_bonus=True)


def draft_dense_probs(draft_sparse_ids: Tensor, draft_sparse_probs: Tensor, vocab: int) -> Tensor:
    """Scatter sparse draft rows (ids [..., M], probs [..., M]) into dense rows [..., vocab].

    Ids must be distinct within a row. Only the verifier builds this; the wire stays sparse.
    """
    shape = (*draft_sparse_ids.shape[:-1], vocab)
    dense = torch.zeros(shape, dtype=draft_sparse_probs.dtype, device=draft_sparse_probs.device)
    return dense.scatter_(-1, draft_sparse_ids, draft_sparse_probs)  # [..., V]


def residual_probs(target_row: Tensor, draft_row: Tensor) -> Tensor:
    """The recovered-token distribution normalize(max(0, target - draft)), both rows [V].

    Keeps the input dtype. If the residual has no mass (the rows are equal, up to rounding, so a
    rejection was only a rounding artefact) it falls back to the target row, normalised.
    """
    residual = (target_row - draft_row).clamp_min(0.0)  # [V]
    mass = residual.sum()
    if not float(mass) > 0.0:
        return target_row / target_row.sum()
    return residual / mass


def verify_sampling(
    draft_token_ids: Sequence[int],
    draft_sparse_ids: Tensor,
    draft_sparse_probs: Tensor,
    target_probs: Tensor,
    generators: Sequence[torch.Generator],
) -> VerifyResult:
    """Lossless speculative sampling over K draft tokens.

    draft_sparse_ids [K, M] int64 and draft_sparse_probs [K, M] fp32: the sparse draft
    distribution at each position. target_probs [K+1, V] fp32: the target's warped distribution.
    generators: K+1 generators, one per position, used in order (position i draws its uniform
    and, on rejection, its recovered token from generators[i]; the bonus uses generators[K]).

    Position i accepts its draft token d when u * draft(d) < target(d), u ~ U[0, 1): the
    division-free form of u < min(1, target(d) / draft(d)). The first rejection draws the
    recovered token from the residual and stops.
    """
    draft_ids = [int(t) for t in draft_token_ids]
    k = len(draft_ids)
    if target_probs.dim() != 2 or target_probs.shape[0] != k + 1:
        raise ValueError(f"target_probs must be [{k + 1}, V], got {tuple(target_probs.shape)}")
    if len(generators) != k + 1:
        raise ValueError(f"need {k + 1} generators (one per position), got {len(generators)}")
    vocab = target_probs.shape[1]
    _check_draft_ids(draft_ids, vocab)
    draft_at_draft = _draft_prob_of_draft_tokens(
        draft_ids, draft_sparse_ids, draft_sparse_probs, vocab
    )
    target_at_draft: list[float] = []
    if k:
        # gather with a [K, 1] index reads rows 0..K-1 of the [K+1, V] target: one device sync.
        index = torch.tensor([[d] for d in draft_ids], device=target_probs.device)  # [K, 1]
        target_at_draft = [row[0] for row in target_probs.gather(1, index).tolist()]
    for i in range(k):
        u = torch.rand((), dtype=torch.float64, generator=generators[i]).item()
        if u * draft_at_draft[i] < target_at_draft[i]:
            continue  # accepted
        draft_row = draft_dense_probs(
            draft_sparse_ids[i].to(target_probs.device),
            draft_sparse_probs[i].to(target_probs),
            vocab,
        )  # [V], same device and dtype as the target
        recovered = sample_token(residual_probs(target_probs[i], draft_row), generators[i])
        return VerifyResult(num_accepted=i, next_token_id=recovered, is_bonus=False)
    bonus = sample_token(target_probs[k], generators[k])
    return VerifyResult(num_accepted=k, next_token_id=bonus, is_bonus=True)


def _check_draft_ids(draft_ids: list[int], vocab: int) -> None:
    for i, token_id in enumerate(draft_ids):
        if not 0 <= token_id < vocab:
            raise InvalidRequest(
                "draft_token_ids", f"token {token_id} at position {i} is outside [0, {vocab})"
            )


def _draft_prob_of_draft_tokens(
    draft_ids: list[int], sparse_ids: Tensor, sparse_probs: Tensor, vocab: int
) -> list[float]:
    """Check the sparse draft rows and return draft_probs(d_i) for each draft token d_i.

    The rows are small ([K, M], M at most a few hundred), so they are checked as Python lists:
    at K = 4, M = 256 that took 0.19 ms on a 2-core VM, the same checks as whole-tensor ops
    0.35 ms (each tiny op has a fixed cost). Raises InvalidRequest("draft_probs").
    """
    k = len(draft_ids)
    if k == 0 and sparse_ids.numel() == 0 and sparse_probs.numel() == 0:
        return []  # plain decoding: nothing was drafted, any empty shape will do
    if sparse_ids.dim() != 2 or sparse_ids.shape[0] != k or sparse_ids.shape[1] < 1:
        raise InvalidRequest(
            "draft_probs", f"ids must be [{k}, M] with M >= 1, got {tuple(sparse_ids.shape)}"
        )
    if sparse_probs.shape != sparse_ids.shape:
        raise InvalidRequest(
            "draft_probs",
            f"probs shape {tuple(sparse_probs.shape)} differs from ids {tuple(sparse_ids.shape)}",
        )
    if sparse_ids.dtype != torch.int64 or not sparse_probs.is_floating_point():
        raise InvalidRequest(
            "draft_probs",
            f"need int64 ids and float probs, got {sparse_ids.dtype}, {sparse_probs.dtype}",
        )
    draft_at_draft = []
    for i, (row_ids, row_probs) in enumerate(
        zip(sparse_ids.tolist(), sparse_probs.tolist(), strict=True)
    ):
        if min(row_ids) < 0 or max(row_ids) >= vocab:
            raise InvalidRequest("draft_probs", f"row {i}: ids must lie in [0, {vocab})")
        if len(set(row_ids)) != len(row_ids):
            raise InvalidRequest("draft_probs", f"row {i}: ids must be distinct")
        total = sum(row_probs)  # NaN or inf anywhere makes this fail the check below
        if not abs(total - 1.0) <= DRAFT_PROBS_SUM_TOL or min(row_probs) < 0.0:
            raise InvalidRequest(
                "draft_probs", f"row {i}: probs must be >= 0 and sum to 1 (sum {total:.6g})"
            )
        draft_prob = 0.0
        for token_id, prob in zip(row_ids, row_probs, strict=True):
            if token_id == draft_ids[i]:
                draft_prob = prob
        if not draft_prob > 0.0:
            raise InvalidRequest(
                "draft_probs",
                f"draft token {draft_ids[i]} at position {i} has draft probability 0 "
                "(it must be one of the row's ids, with a positive probability)",
            )
        draft_at_draft.append(draft_prob)
    return draft_at_draft
