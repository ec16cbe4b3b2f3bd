"""One sequence's state on a replica, and the batched verify step over many of them.

A ``SequenceState`` is a KV-cache slot plus the committed tokens it stands for. ``verify_batch``
runs one target forward for many sequences (each feeding its unfed committed tokens plus its
drafts), applies the acceptance rule per sequence and rolls each back by position. (Drafting is
``drafting.py``.) The in-process generator and the services both call these, so there is one
implementation.
Non-goals: scheduling and admission (the services decide which sequences go together).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from specdec.core.errors import InvalidRequest
from specdec.engine.batch import Chunk
from specdec.engine.logprobs import token_logprobs
from specdec.engine.proposer import Proposal
from specdec.engine.rejection import VerifyResult, verify_greedy, verify_sampling
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import STREAM_TARGET, SamplingParams, position_generator, target_probs


@dataclass
class SequenceState:
    """A slot and what it holds: ``cached`` tokens have keys/values in the slot; ``committed``
    is the agreed sequence (prompt + output), which ends with a token not yet fed."""

    slot: int
    committed: list[int]
    params: SamplingParams
    seed: int
    cached: list[int] = field(default_factory=list)
    logprobs: int | None = None  # alternatives per committed token's logprob; None: no logprobs
    features: bool = False  # each verification returns the hidden states it cached

    def sync_cache(self, runner: ModelRunner, valid: int | None = None) -> list[int]:
        """Roll the slot back to the longest cached prefix of ``committed`` that leaves at least
        one token to feed (and keeps at most ``valid`` entries: a feature draft's later ones
        read features since replaced); return the tokens to feed."""
        keep = 0
        limit = min(len(self.cached), len(self.committed) - 1)
        if valid is not None:
            limit = min(limit, valid)
        while keep < limit and self.cached[keep] == self.committed[keep]:
            keep += 1
        runner.cache.rollback_to(self.slot, keep)
        del self.cached[keep:]
        return self.committed[keep:]


@dataclass(frozen=True)
class VerifyItem:
    seq: SequenceState
    proposal: Proposal


def verify_batch(
    runner: ModelRunner, items: Sequence[VerifyItem]
) -> list[VerifyResult | Exception]:
    """One target forward for all items; commits each item's accepted drafts and next token.

    An item whose drafts the acceptance rule refuses (malformed draft probabilities:
    ``InvalidRequest``) or whose acceptance raises anything else gets the exception in its place
    and is left as it was: it fails alone, its batch-mates go on. If the forward itself raises,
    nothing was committed, so the caller may run the same items again (apart).
    """
    chunks = []
    for item in items:
        feed = item.seq.sync_cache(runner)
        drafts = item.proposal.draft_token_ids
        chunks.append(Chunk(item.seq.slot, feed + drafts, len(item.seq.cached), len(drafts) + 1))
    if any(item.seq.features for item in items):
        all_logits, all_hidden = runner.step_hidden(chunks)  # per item [K+1, V], [n, C]
    else:
        all_logits, all_hidden = runner.step(chunks), [None] * len(chunks)
    results: list[VerifyResult | Exception] = []
    for item, chunk, logits, hidden in zip(items, chunks, all_logits, all_hidden, strict=True):
        seq, proposal = item.seq, item.proposal
        n = len(seq.committed)
        kept = n - len(seq.cached)  # fed tokens kept: all but drafts the target refuses
        try:
            result = _accept(proposal, logits, seq.params, seq.seed, n)
            if seq.logprobs is not None:  # rows 0..num_accepted decided the committed tokens
                tokens = result.token_ids(proposal.draft_token_ids)
                found = token_logprobs(logits[: len(tokens)], tokens, seq.logprobs)
                result = replace(result, logprobs=tuple(found))
            if hidden is not None and seq.features:
                result = replace(result, features=hidden[: kept + result.num_accepted])
        except Exception as exc:
            runner.cache.rollback_to(seq.slot, len(seq.cached))
            results.append(exc)
            continue
        # Keep the committed tokens and the accepted drafts; the next token is fed next time.
        seq.cached.extend(chunk.token_ids[: kept + result.num_accepted])
        runner.cache.rollback_to(seq.slot, len(seq.cached))
        seq.committed.extend(proposal.draft_token_ids[: result.num_accepted])
        seq.committed.append(result.next_token_id)
        results.append(result)
    return results


def _accept(
    proposal: Proposal, logits: torch.Tensor, params: SamplingParams, seed: int, position: int
) -> VerifyResult:
    """Greedy or lossless speculative acceptance of ``proposal`` at ``position``."""
    if params.is_greedy:
        return verify_greedy(proposal.draft_token_ids, logits)
    k = len(proposal)
    generators = [position_generator(seed, position + j, STREAM_TARGET) for j in range(k + 1)]
    sparse_ids, sparse_probs = proposal.draft_sparse_ids, proposal.draft_sparse_probs
    if sparse_ids is None or sparse_probs is None:
        if k:
            raise InvalidRequest("draft_probs", "sampling needs the draft distribution")
        sparse_ids, sparse_probs = torch.empty(0, 1, dtype=torch.int64), torch.empty(0, 1)
    probs = target_probs(logits, params)  # [K+1, V]
    return verify_sampling(proposal.draft_token_ids, sparse_ids, sparse_probs, probs, generators)
