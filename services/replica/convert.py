"""Protobuf ↔ engine types for the draft and verifier services (imports torch).

Validation of what crosses the wire lives here too: token ids in the vocabulary, sparse
distributions well-formed (finite, non-negative probabilities summing to 1, distinct ids, each
draft token among its row's ids with a positive probability), sizes bounded. Errors name the
field. Everything a step carries is checked here, at the stream's edge, before the step joins
a batch: a bad step fails its own stream, never its batch-mates'.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from itertools import compress, islice, repeat

import torch

from specdec.core.errors import InvalidRequest
from specdec.core.limits import MAX_SPARSE_WIDTH, MAX_SPEC_DEPTH
from specdec.engine.proposer import Proposal
from specdec.engine.rejection import DRAFT_PROBS_SUM_TOL
from specdec.engine.sampling import SamplingParams
from specdec.v1 import common_pb2


def sampling_from_proto(msg: common_pb2.SamplingParams) -> SamplingParams:
    params = SamplingParams(
        temperature=msg.temperature,
        top_k=msg.top_k,
        top_p=msg.top_p if msg.HasField("top_p") else 1.0,
        seed=msg.seed if msg.HasField("seed") else None,
    )
    params.validate()
    return params


def check_token_ids(token_ids: Sequence[int], vocab_size: int, field: str) -> list[int]:
    ids = list(token_ids)
    for t in ids:
        if t >= vocab_size:
            raise InvalidRequest(field, f"token id {t} is outside the vocabulary [0, {vocab_size})")
    return ids


def sparse_to_proto(ids: torch.Tensor, probs: torch.Tensor) -> list[common_pb2.SparseDistribution]:
    """[K, M] ids and probs → K messages (zero-probability entries dropped)."""
    out = []
    for row_ids, row_probs in zip(ids.tolist(), probs.tolist(), strict=True):
        keep = [p > 0.0 for p in row_probs]
        out.append(
            common_pb2.SparseDistribution(
                token_ids=compress(row_ids, keep), probs=compress(row_probs, keep)
            )
        )
    return out


def proposal_from_proto(
    draft_token_ids: Sequence[int],
    draft_probs: Sequence[common_pb2.SparseDistribution],
    params: SamplingParams,
    vocab_size: int,
) -> Proposal:
    """Validate drafts (and their distributions when sampling) and build a ``Proposal``."""
    drafts = check_token_ids(draft_token_ids, vocab_size, "draft_token_ids")
    if len(drafts) > MAX_SPEC_DEPTH:
        raise InvalidRequest("draft_token_ids", f"at most {MAX_SPEC_DEPTH} drafts per step")
    if params.is_greedy or not drafts:
        return Proposal(drafts)
    if len(draft_probs) != len(drafts):
        raise InvalidRequest(
            "draft_probs",
            f"need one distribution per draft token ({len(drafts)}), got {len(draft_probs)}",
        )
    widths = [len(d.token_ids) for d in draft_probs]
    width = max(widths)
    if min(widths) == 0 or width > MAX_SPARSE_WIDTH:
        raise InvalidRequest("draft_probs", f"each distribution needs 1-{MAX_SPARSE_WIDTH} ids")
    if width > vocab_size:  # (so every shorter row finds enough absent ids to pad with)
        raise InvalidRequest(
            "draft_probs",
            f"{width} ids in one distribution, but only {vocab_size} in the vocabulary",
        )
    # Rows are built as flat Python arrays and become tensors once: per-row tensor calls cost
    # more than the whole conversion at a few hundred ids per row.
    flat_ids, flat_probs = array("q"), array("f")
    for i, (draft, dist) in enumerate(zip(drafts, draft_probs, strict=True)):
        row_ids = list(dist.token_ids)
        n = len(row_ids)
        if n != len(dist.probs):
            raise InvalidRequest("draft_probs", f"row {i}: token_ids and probs differ in length")
        check_token_ids([max(row_ids)], vocab_size, "draft_probs")  # n >= 1: checked above
        _check_row(i, draft, row_ids, dist.probs)
        if n < width:  # pad with p = 0 and ids absent from the row: no real id may repeat
            taken = set(row_ids)
            free = (i for i in range(min(vocab_size, 2 * width + 1)) if i not in taken)
            row_ids += islice(free, width - n)
        flat_ids.extend(row_ids)
        flat_probs.extend(dist.probs)
        flat_probs.extend(repeat(0.0, width - n))
    ids = torch.frombuffer(flat_ids, dtype=torch.int64).view(len(drafts), width)  # [K, M]
    probs = torch.frombuffer(flat_probs, dtype=torch.float32).view(len(drafts), width)  # [K, M]
    return Proposal(drafts, ids, probs)


def _check_row(i: int, draft: int, row_ids: list[int], row_probs: Sequence[float]) -> None:
    """Row ``i`` of a step's draft distributions is one the acceptance rule can use."""
    if len(set(row_ids)) != len(row_ids):
        raise InvalidRequest("draft_probs", f"row {i}: token ids must be distinct")
    total = sum(row_probs)  # inf or NaN anywhere fails the sum check
    if not abs(total - 1.0) <= DRAFT_PROBS_SUM_TOL or min(row_probs) < 0.0:
        raise InvalidRequest(
            "draft_probs",
            f"row {i}: probabilities must be finite, >= 0 and sum to 1 (sum {total:.6g})",
        )
    if not any(t == draft and p > 0.0 for t, p in zip(row_ids, row_probs, strict=True)):
        raise InvalidRequest(
            "draft_probs",
            f"row {i}: draft token {draft} needs a positive probability among the row's ids",
        )


def hidden_to_proto(hidden: torch.Tensor, end: int) -> common_pb2.HiddenStates:
    """The target's hidden states of positions [end - n, end) as bf16 bytes.  # hidden [n, C]"""
    rows = hidden.detach().to("cpu", torch.bfloat16).contiguous()
    return common_pb2.HiddenStates(
        start=end - rows.shape[0],
        count=rows.shape[0],
        width=rows.shape[1],
        data=rows.view(torch.int16).numpy().tobytes(),
    )


def hidden_from_proto(
    msg: common_pb2.HiddenStates, width: int, max_seq_len: int
) -> tuple[torch.Tensor, int]:
    """Validate hidden states from the wire; the rows and the position after the last.
    # → [count, width] bf16, end"""
    if msg.width != width:
        raise InvalidRequest("hidden_states.width", f"must be the model's {width}, not {msg.width}")
    if msg.start + msg.count > max_seq_len:
        raise InvalidRequest(
            "hidden_states", f"positions up to {msg.start + msg.count} exceed {max_seq_len}"
        )
    if len(msg.data) != msg.count * width * 2:
        raise InvalidRequest(
            "hidden_states.data",
            f"{msg.count} rows of {width} bf16 need {msg.count * width * 2} bytes",
        )
    if not msg.count:
        return torch.empty(0, width, dtype=torch.bfloat16), msg.start
    rows = torch.frombuffer(bytearray(msg.data), dtype=torch.bfloat16).view(msg.count, width)
    if not bool(torch.isfinite(rows).all()):
        raise InvalidRequest("hidden_states.data", "holds values that are not finite")
    return rows, msg.start + msg.count
