"""``tools/distill_draft.py``: the real pair's draft distillation — its loss, its data sources
and the teacher's annotations cached by shard."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from fixtures import micro_config
from tokenizers import Tokenizer

from specdec.engine.model import DecoderModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from distill_draft import annotated, code_corpus, distil_loss, new_draft
from train_demo import TOP_K, continue_prompts

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
# Tied as SmolLM2's: the draft's head rows start as embedding rows.
CFG = micro_config(eos_token_ids=(0,), tie_word_embeddings=True)


def _teacher() -> DecoderModel:
    torch.manual_seed(0)
    return DecoderModel(CFG).eval().requires_grad_(False)


def test_distil_loss_is_least_when_the_draft_is_the_teacher() -> None:
    teacher = _teacher()
    head_ids = torch.arange(CFG.vocab_size)  # a full head: the draft can match exactly
    draft = new_draft(teacher, [0, 1], head_ids)  # every layer: the teacher itself
    head_index = torch.arange(CFG.vocab_size)
    ids = torch.randint(1, CFG.vocab_size, (3, 17), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 16, dtype=torch.bool)
    logp = torch.log_softmax(teacher.forward_dense(ids[:, :-1]).float(), -1)
    top = logp.topk(TOP_K, dim=-1)
    same = distil_loss(draft, ids, mask, top.indices, top.values, head_index)
    # KL is 0; what remains is the cross-entropy of the teacher's own argmax.
    assert same.item() == pytest.approx(-top.values[..., 0].mean().item(), rel=1e-4)
    with torch.no_grad():
        draft.model.layers[1].mlp.down_proj.weight.add_(0.5)
    assert distil_loss(draft, ids, mask, top.indices, top.values, head_index) > same
    mask[:, 8:] = False  # masked positions do not count
    half = distil_loss(draft, ids, mask, top.indices, top.values, head_index)
    assert torch.isfinite(half)


def test_a_reduced_head_keeps_its_token_ids_and_the_frozen_embedding() -> None:
    teacher = _teacher()
    head_ids = torch.tensor([5, 1, 9, 3])
    draft = new_draft(teacher, [1], head_ids)
    assert draft.config.num_hidden_layers == 1
    assert torch.equal(draft.head_token_ids, head_ids)
    assert torch.equal(draft.lm_head.weight, teacher.model.embed_tokens.weight[head_ids])
    assert not draft.model.embed_tokens.weight.requires_grad
    logits = draft.forward_dense(torch.tensor([[1, 2, 3]]))
    outside = torch.ones(CFG.vocab_size, dtype=torch.bool)
    outside[head_ids] = False
    assert torch.isinf(logits[..., outside]).all()  # zero probability outside the head


def test_code_corpus_is_windows_of_training_files() -> None:
    tok = Tokenizer.from_file(str(ROOT / "models/demo-target/tokenizer.json"))
    rows = code_corpus(tok, tokens=4000, seq_len=63, seed=0)
    assert len(rows) == 4000 // 64
    assert all(len(row) == 64 for row in rows)
    assert rows == code_corpus(tok, tokens=4000, seq_len=63, seed=0)  # seeded
    assert rows != code_corpus(tok, tokens=4000, seq_len=63, seed=1)


def test_teacher_annotations_are_cached_by_shard(tmp_path: Path) -> None:
    teacher = _teacher()
    gen = torch.Generator().manual_seed(2)
    rows = [torch.randint(1, 64, (n,), generator=gen).tolist() for n in (9, 17, 5, 12, 17)]
    first = annotated(teacher, rows, 16, tmp_path / "part", shard=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"part-00{i}.pt" for i in range(3)]
    assert first["top_ids"].shape == (5, 16, TOP_K)
    assert first["mask"].sum(1).tolist() == [8, 16, 4, 11, 16]
    (tmp_path / "part-001.pt").unlink()  # a run stopped in that shard: only it is redone
    again = annotated(teacher, rows, 16, tmp_path / "part", shard=2)
    for key, value in first.items():
        assert torch.equal(value, again[key])


def test_continuations_greedy_on_the_rows_asked() -> None:
    teacher = _teacher()
    teacher.model.norm.weight.mul_(0.01)  # near-flat next-token distributions: samples differ
    prompts = [[1, 2, 3], [4, 5, 6]]
    greedy = continue_prompts(teacher, prompts, [12, 12], torch.Generator(), "all")
    even = continue_prompts(teacher, prompts, [12, 12], torch.Generator().manual_seed(3), "even")
    assert even[0] == greedy[0]
    sampled = [
        continue_prompts(teacher, prompts, [12, 12], torch.Generator().manual_seed(s), "none")
        for s in range(4)
    ]
    assert len({tuple(rows[0]) for rows in sampled}) > 1  # row 0 sampled too
    with pytest.raises(ValueError, match="greedy"):
        continue_prompts(teacher, prompts, [12, 12], torch.Generator(), "odd")
