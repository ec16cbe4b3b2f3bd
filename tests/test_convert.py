"""Unit tests of ``specdec.replica.convert``'s sparse draft distributions on the wire, and of
the draft's defaults for what it ships."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from specdec.core.errors import InvalidRequest
from specdec.core.limits import MAX_SPARSE_WIDTH
from specdec.engine.checkpoint import load_model
from specdec.engine.proposer_draft import DEFAULT_TOP_M, DEFAULT_TOP_MASS, DraftModelProposer
from specdec.engine.rejection import draft_dense_probs
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams, sparse_top, target_probs
from specdec.replica.convert import proposal_from_proto, sparse_to_proto
from specdec.v1 import common_pb2

pytestmark = pytest.mark.unit

VOCAB = 300
SAMPLED = SamplingParams(temperature=1.0)


def test_rows_cut_to_different_widths_survive_the_wire() -> None:
    gen = torch.Generator().manual_seed(0)
    flatness = torch.tensor([[0.3], [1.0], [3.0]])  # sharp, medium, flat rows
    probs = torch.softmax(torch.randn(3, VOCAB, generator=gen) * flatness, dim=-1)  # [3, V]
    ids, sparse = sparse_top(probs, 256, 0.9)  # [3, 256], each row zero past its own cut
    widths = (sparse > 0).sum(dim=-1).tolist()
    assert widths[0] > widths[1] > widths[2]
    messages = sparse_to_proto(ids, sparse)
    assert [len(m.token_ids) for m in messages] == widths  # zeros stay off the wire
    drafts = ids[:, 0].tolist()
    proposal = proposal_from_proto(drafts, messages, SAMPLED, VOCAB)
    assert proposal.draft_token_ids == drafts
    shape = (3, max(widths))
    assert proposal.draft_sparse_ids.shape == proposal.draft_sparse_probs.shape == shape
    assert proposal.draft_sparse_ids.dtype == torch.int64
    torch.testing.assert_close(
        draft_dense_probs(proposal.draft_sparse_ids, proposal.draft_sparse_probs, VOCAB),
        draft_dense_probs(ids, sparse, VOCAB),
    )
    for row in proposal.draft_sparse_ids.tolist():  # padding never repeats an id
        assert len(set(row)) == len(row)


def test_bad_rows_are_refused_with_the_field_named() -> None:
    ok = common_pb2.SparseDistribution(token_ids=[4, 9], probs=[0.5, 0.5])
    cases = [
        (common_pb2.SparseDistribution(token_ids=[4, 9], probs=[1.0]), "differ in length"),
        (common_pb2.SparseDistribution(token_ids=[4, VOCAB], probs=[0.5, 0.5]), "vocabulary"),
        (common_pb2.SparseDistribution(), "needs 1-"),
        (
            common_pb2.SparseDistribution(
                token_ids=list(range(MAX_SPARSE_WIDTH + 1)),
                probs=[1 / (MAX_SPARSE_WIDTH + 1)] * (MAX_SPARSE_WIDTH + 1),
            ),
            "needs 1-",
        ),
    ]
    for bad, message in cases:
        with pytest.raises(InvalidRequest, match=message) as err:
            proposal_from_proto([4, 9], [ok, bad], SAMPLED, VOCAB)
        assert err.value.field == "draft_probs"
    # More ids than the vocabulary holds: some repeat, and shorter rows could not be padded.
    repeated = common_pb2.SparseDistribution(token_ids=[0, 1, 0], probs=[0.25, 0.5, 0.25])
    with pytest.raises(InvalidRequest, match="only 2 in the vocabulary"):
        proposal_from_proto(
            [0, 0],
            [repeated, common_pb2.SparseDistribution(token_ids=[0], probs=[1.0])],
            SAMPLED,
            2,
        )


def test_the_draft_ships_wide_rows_by_default(model_dir: Path) -> None:
    """Each shipped row holds DEFAULT_TOP_MASS of the draft's full row or is DEFAULT_TOP_M wide
    (the top 32 of this flat 320-token row would hold about a fifth), and fits the wire."""
    assert DEFAULT_TOP_M <= MAX_SPARSE_WIDTH
    model = load_model(model_dir / "draft_other")
    runner = ModelRunner(model, num_slots=1)
    proposer = DraftModelProposer(runner)
    prompt, params = list(range(5, 20)), SamplingParams(temperature=3.0)
    proposal = proposer.propose(prompt, 3, params, seed=1)
    proposer.close()
    fed = torch.tensor([prompt + proposal.draft_token_ids[:-1]])  # [1, T]
    full = target_probs(model.forward_dense(fed)[0, -3:].float(), params)  # [3, V]
    held = full.gather(1, proposal.draft_sparse_ids).where(proposal.draft_sparse_probs > 0, 0.0)
    widths = (proposal.draft_sparse_probs > 0).sum(dim=-1)  # [3]
    assert ((held.sum(dim=-1) >= DEFAULT_TOP_MASS - 1e-5) | (widths == DEFAULT_TOP_M)).all()
    assert (widths > 32).all()
    torch.testing.assert_close(proposal.draft_sparse_probs.sum(dim=-1), torch.ones(3))
