"""Sampling: the distribution a request draws its next token from, and the draws themselves.

``target_probs`` turns logits into the warped distribution plain decoding samples from
(temperature, then top-k, then top-p). Speculative sampling must reproduce exactly this
distribution, so the plain sampler and the verifier both call this one function.

Randomness is keyed by absolute token position: ``position_generator(seed, position, stream)``
gives a fresh ``torch.Generator`` for each (request seed, position, stream), so a retried or
rolled-back step draws the same numbers again. Draws happen on the CPU in float64, so the same
seed gives the same token whatever device computed the probabilities.

The greedy path (``greedy_token_ids``, the one-hot ``target_probs``) is kept apart from the
sampling path: greedy decoding needs no generator and no probabilities.

Non-goals: repetition/frequency penalties, min-p, logit bias, beam search, batched draws with
per-row parameters (one ``SamplingParams`` applies to all rows of a call).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from specdec.core.errors import InvalidRequest

MAX_TEMPERATURE = 100.0
MAX_SEED = 2**63  # exclusive bound: seeds travel as int64 on the wire

# Stream ids: independent random streams at the same position of the same request.
STREAM_DRAFT = 1  # the draft model's draw of a draft token
STREAM_TARGET = 2  # the verifier's acceptance test, recovered and bonus tokens

_MASK64 = (1 << 64) - 1
_MASK32 = (1 << 32) - 1


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens."""

    temperature: float = 0.0  # 0 means greedy (argmax)
    top_k: int = 0  # keep the k most likely tokens; 0 turns it off
    top_p: float = 1.0  # keep the smallest nucleus with at least this mass; 1 turns it off
    seed: int | None = None  # None: the caller picks one (e.g. at random) and records it

    @property
    def is_greedy(self) -> bool:
        """True when the distribution is a one-hot at the argmax (temperature 0, or top_k 1)."""
        return self.temperature == 0.0 or self.top_k == 1

    def validate(self) -> None:
        """Raise ``InvalidRequest`` naming the first field out of range."""
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise InvalidRequest("temperature", f"must be a finite number, got {t!r}")
        if not 0.0 <= t <= MAX_TEMPERATURE:
            raise InvalidRequest("temperature", f"must be in [0, {MAX_TEMPERATURE:g}], got {t}")
        k = self.top_k
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise InvalidRequest("top_k", f"must be an integer >= 0 (0 = off), got {k!r}")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
            raise InvalidRequest("top_p", f"must be in (0, 1], got {p!r}")
        s = self.seed
        if s is not None and (
            isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < MAX_SEED
        ):
            raise InvalidRequest("seed", f"must be an integer in [0, 2**63), got {s!r}")


def greedy_token_ids(logits: Tensor) -> Tensor:
    """The argmax of each row of ``logits`` [N, V] → [N] int64; ties go to the lowest id."""
    return logits.argmax(dim=-1)


def target_probs(logits: Tensor, params: SamplingParams) -> Tensor:
    """The distribution plain sampling draws from: logits [N, V] → probabilities [N, V] fp32.

    Temperature scaling, then top-k (the k largest logits, ties broken towards the lowest id),
    then top-p (the smallest set of most likely tokens whose mass reaches ``top_p``, the top
    token always kept), renormalised. Greedy params give a one-hot at the argmax.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be [N, V], got shape {tuple(logits.shape)}")
    logits = logits.float()
    if params.is_greedy:
        probs = torch.zeros_like(logits)  # [N, V]
        return probs.scatter_(1, greedy_token_ids(logits).unsqueeze(1), 1.0)
    # Subtracting the row max first keeps a tiny temperature from overflowing to inf.
    row_max = logits.max(dim=-1, keepdim=True).values  # [N, 1]
    scaled = (logits - row_max) / params.temperature  # [N, V]
    vocab = logits.shape[1]
    use_top_k = 0 < params.top_k < vocab
    use_top_p = params.top_p < 1.0
    if not (use_top_k or use_top_p):
        return torch.softmax(scaled, dim=-1)
    # Stable descending sort: ties keep id order, so every device keeps the same tokens.
    sorted_logits, sorted_ids = torch.sort(scaled, dim=-1, descending=True, stable=True)
    if use_top_k:
        sorted_logits[:, params.top_k :] = -math.inf
    sorted_probs = torch.softmax(sorted_logits, dim=-1)  # [N, V], descending
    if use_top_p:
        # Mass strictly before each token (exclusive cumsum, in fp64 to keep the boundary
        # sharp over a large vocabulary); a token is kept while that mass is below top_p.
        cum = sorted_probs.double().cumsum(dim=-1)  # [N, V] fp64
        mass_before = torch.cat([torch.zeros_like(cum[:, :1]), cum[:, :-1]], dim=-1)
        keep = mass_before < params.top_p
        keep[:, 0] = True
        sorted_probs = sorted_probs * keep
        sorted_probs = sorted_probs / sorted_probs.sum(dim=-1, keepdim=True)
    return torch.zeros_like(sorted_probs).scatter_(1, sorted_ids, sorted_probs)


def _splitmix64(x: int) -> int:
    """One step of splitmix64 (Steele et al. 2014): a bijective, well-mixing 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def position_seed(seed: int, position: int, stream: int) -> int:
    """The 32-bit generator seed for (request seed, absolute position, stream id).

    torch's CPU generator (mt19937) keeps only the low 32 bits of its seed, so the 64-bit
    splitmix64 chain is folded to 32 bits here rather than truncated silently there.
    """
    if seed < 0 or position < 0 or stream < 0:
        raise ValueError(
            f"seed, position and stream must be >= 0, got {seed}, {position}, {stream}"
        )
    h = _splitmix64(seed & _MASK64)
    h = _splitmix64(h ^ (position & _MASK64))
    h = _splitmix64(h ^ (stream & _MASK64))
    return (h ^ (h >> 32)) & _MASK32


def position_generator(seed: int, position: int, stream: int) -> torch.Generator:
    """A fresh CPU generator for one (request seed, absolute token position, stream id)."""
    return torch.Generator(device="cpu").manual_seed(position_seed(seed, position, stream))


def sample_token(probs_row: Tensor, generator: torch.Generator) -> int:
    """Draw one token id from ``probs_row`` [V] (any device; need not sum to 1).

    The draw runs on the CPU in float64 so CPU and GPU probabilities give the same token for
    the same generator state.
    """
    row = probs_row.detach().to(device="cpu", dtype=torch.float64)  # [V] fp64
    return int(torch.multinomial(row, 1, generator=generator).item())


def sparse_top(probs: Tensor, m: int, mass: float = 1.0) -> tuple[Tensor, Tensor]:
    """The most likely tokens of each row, renormalised: the sparse draft distribution.

    A row keeps its tokens in order of probability until they hold ``mass`` (the token that
    crosses it included), at most ``m`` of them. Its total-variation distance from the full row
    is the mass it drops, so a draft loses at most ``1 - mass`` acceptance per position to the
    cut, plus what lies beyond the top ``m``.

    probs [N, V] → (ids [N, m'] int64, probs [N, m'] fp32) with m' = min(m, V); rows sum to 1,
    and cut entries, like entries that were 0, are 0 (the wire drops them). A draft that sends
    this must also sample from it (``sample_sparse_token``): the verifier treats it as the
    exact draft distribution.
    """
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m}")
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    if probs.dim() != 2:
        raise ValueError(f"probs must be [N, V], got shape {tuple(probs.shape)}")
    probs = probs.float()
    top = torch.topk(probs, min(m, probs.shape[1]), dim=-1)  # sorted, descending
    kept = top.values  # [N, m']
    if mass < 1.0:
        above = kept.cumsum(dim=-1) - kept  # [N, m'] mass of the tokens ranked higher
        kept = torch.where(above < mass * probs.sum(dim=-1, keepdim=True), kept, 0.0)
    return top.indices, kept / kept.sum(dim=-1, keepdim=True)


def sample_sparse_token(
    sparse_ids_row: Tensor, sparse_probs_row: Tensor, generator: torch.Generator
) -> int:
    """Draw one token id from a sparse row: ids [M] int64, probs [M] (from ``sparse_top``)."""
    index = sample_token(sparse_probs_row, generator)
    return int(sparse_ids_row[index].item())
