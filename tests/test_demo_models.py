"""The demo pair shipped in models/: loads, shares a tokenizer, decodes deterministically."""

from __future__ import annotations

from pathlib import Path

import pytest

from specdec.core.tokenizer import Tokenizer, check_same_tokenizer
from specdec.engine.checkpoint import load_model
from specdec.engine.draft_dtype import load_draft
from specdec.engine.proposer_draft import DraftModelProposer
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.engine.speculative import generate

pytestmark = pytest.mark.unit

MODELS = Path(__file__).resolve().parent.parent / "models"
TARGET, DRAFT = MODELS / "demo-target", MODELS / "demo-draft"
PROMPT = "import os\n\n\ndef read_config(path):\n"

if not (TARGET.is_dir() and DRAFT.is_dir()):
    pytest.skip("the demo pair is not in models/ yet (make demo-models)", allow_module_level=True)


@pytest.fixture(scope="module")
def pair() -> tuple[ModelRunner, ModelRunner, Tokenizer]:
    tokenizer = Tokenizer.from_folder(TARGET)
    check_same_tokenizer(tokenizer, Tokenizer.from_folder(DRAFT), DRAFT)
    target = ModelRunner(load_model(TARGET), num_slots=1, max_seq_len=512)
    draft = ModelRunner(load_draft(DRAFT, "cpu"), num_slots=1, max_seq_len=512)
    return target, draft, tokenizer


def test_pair_shapes_and_sizes(pair):
    target, draft, tokenizer = pair
    t_params = sum(p.numel() for p in target.model.parameters())
    d_params = sum(p.numel() for p in draft.model.parameters())
    assert 20e6 <= t_params <= 40e6
    assert t_params >= 8 * d_params
    assert target.vocab_size == draft.vocab_size == tokenizer.vocab_size
    size = sum(f.stat().st_size for f in MODELS.glob("demo-*/*.safetensors"))
    assert size <= 48 * 1024 * 1024


def test_the_real_pairs_committed_draft_fits_the_repository_budget():
    """The real pair's draft tensors are committed (its embedding comes from the fetched
    target): at most 48 MB, bf16."""
    (weights,) = (MODELS / "smollm2-draft").glob("*.safetensors")
    assert weights.stat().st_size <= 48 * 1024 * 1024


def test_greedy_is_deterministic_and_speculation_is_exact(pair):
    target, draft, tokenizer = pair
    ids = tokenizer.encode(PROMPT)
    first = generate(target, ids, SamplingParams(), 48, None, 0).token_ids
    assert generate(target, ids, SamplingParams(), 48, None, 0).token_ids == first
    spec = generate(target, ids, SamplingParams(), 48, DraftModelProposer(draft), 4)
    assert spec.token_ids == first
    assert spec.stats.accepted_tokens > 0
    assert tokenizer.decode(first).strip()
