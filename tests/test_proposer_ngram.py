"""Prompt-lookup drafting."""

from __future__ import annotations

import pytest

from specdec.engine.proposer_ngram import NgramProposer, lookup
from specdec.engine.sampling import SamplingParams

pytestmark = pytest.mark.unit


def test_lookup_copies_what_followed_the_latest_match():
    tokens = [1, 2, 3, 9, 9, 1, 2, 3, 4, 5, 1, 2, 3]
    assert lookup(tokens, 2) == [4, 5]  # the latest "1 2 3" match is followed by 4 5
    assert lookup(tokens, 10) == [4, 5, 1, 2, 3]


def test_lookup_prefers_longer_ngrams():
    tokens = [7, 3, 8, 6, 3, 5, 6, 3]
    # "6 3" matched at index 3 → 5; a bare "3" would match later (index 4 → 5 as well),
    # so check with a case where they differ:
    tokens = [6, 3, 1, 4, 3, 2, 6, 3]
    assert lookup(tokens, 1, max_ngram=2) == [1]
    assert lookup(tokens, 1, max_ngram=1) == [2]


def test_lookup_without_match_or_history():
    assert lookup([1, 2, 3], 4) == []
    assert lookup([1], 4) == []
    assert lookup([], 4) == []


def test_proposer_sampling_sends_point_masses():
    proposal = NgramProposer().propose([1, 2, 1], 3, SamplingParams(temperature=1.0), seed=0)
    assert proposal.draft_token_ids == [2, 1]
    assert proposal.draft_sparse_ids.tolist() == [[2], [1]]
    assert proposal.draft_sparse_probs.tolist() == [[1.0], [1.0]]
    assert NgramProposer().propose([1, 2, 1], 0, SamplingParams(), seed=0).draft_token_ids == []


def test_proposer_rejects_bad_ngram_bounds():
    with pytest.raises(ValueError):
        NgramProposer(max_ngram=1, min_ngram=2)
