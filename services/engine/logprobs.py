"""The target's log-probabilities of committed tokens, and the likeliest alternatives.

These are raw logprobs: ``log_softmax`` of the target's fp32 logits at each position, the
model's own distribution before temperature, top-k and top-p (vLLM's default). The verifier
holds the target's logits at every position it verifies, and the logits at a committed position
do not depend on what was drafted after it, so these equal what target-only decoding (k = 0)
gives for the same tokens.

Only computed for sequences that ask (``SequenceState.logprobs``): nothing costs anything
otherwise.
Non-goals: logprobs of prompt tokens (``echo``), logprobs of the warped (sampling) distribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from specdec.core.limits import MAX_TOP_LOGPROBS


@dataclass(frozen=True)
class TokenLogprob:
    """One committed token's logprob and the ``top`` likeliest (token_id, logprob) there."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # most likely first


def token_logprobs(logits: Tensor, token_ids: Sequence[int], num_top: int) -> list[TokenLogprob]:
    """logits [N, V] (any float dtype; row i decides token_ids[i]) → one record per token.

    ``num_top`` alternatives per token (0 to ``MAX_TOP_LOGPROBS``), most likely first.
    """
    n = len(token_ids)
    if logits.dim() != 2 or logits.shape[0] != n:
        raise ValueError(f"logits must be [{n}, V], got {tuple(logits.shape)}")
    if not 0 <= num_top <= MAX_TOP_LOGPROBS:
        raise ValueError(f"num_top must be in [0, {MAX_TOP_LOGPROBS}], got {num_top}")
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # [N, V] fp32
    index = torch.tensor(list(token_ids), device=logits.device).unsqueeze(1)  # [N, 1]
    chosen = logprobs.gather(1, index).squeeze(1).tolist()  # [N]
    top_ids: list[list[int]] = [[] for _ in range(n)]
    top_values: list[list[float]] = [[] for _ in range(n)]
    if num_top:
        values, ids = torch.topk(logprobs, num_top, dim=-1, sorted=True)  # [N, num_top] each
        top_values, top_ids = values.tolist(), ids.tolist()
    return [
        TokenLogprob(int(t), lp, tuple(zip(ids_, values_, strict=True)))
        for t, lp, ids_, values_ in zip(token_ids, chosen, top_ids, top_values, strict=True)
    ]
