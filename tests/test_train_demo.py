"""``tools/train_demo.py``: the teacher-written rows and the losses the demo pair trains on."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fixtures import micro_config

from specdec.engine.checkpoint import save_model
from specdec.engine.model import DecoderModel
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.engine.speculative import generate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from train_demo import (
    POOL_FILE,
    SEQ_LEN,
    argmax_ce,
    draft_kl,
    earlier_pools,
    finished_target,
    grow_into,
    joined,
    load_data,
    repeated_ngrams,
    sparse_kl,
    sparse_tv,
    teacher_continuations,
    unlikelihood,
    written_rows,
)

pytestmark = pytest.mark.unit

CFG = micro_config(num_hidden_layers=1, max_position_embeddings=512, eos_token_ids=(0,))


def test_rows_are_training_text_then_the_teachers_own_continuation() -> None:
    torch.manual_seed(0)
    teacher = DecoderModel(CFG).eval().requires_grad_(False)
    data = torch.randint(1, CFG.vocab_size, (5000,), generator=torch.Generator().manual_seed(1))
    data[::300] = 0  # files end with EOS
    rows = teacher_continuations(teacher, data, n=8, batch=4, seed=0)
    assert rows.shape == (8, SEQ_LEN + 1) and rows.dtype == torch.int16
    runner = ModelRunner(teacher, num_slots=1, max_seq_len=SEQ_LEN + 1)
    for greedy_window_row in (2, 6):  # rows 4j+2: a 128-token window, continued greedily
        ids = rows[greedy_window_row].tolist()
        prompt = ids[: SEQ_LEN // 2]
        assert any(data[s : s + len(prompt)].tolist() == prompt for s in range(len(data)))
        again = generate(runner, prompt, SamplingParams(), len(ids) - len(prompt), None, 0)
        assert again.token_ids == ids[len(prompt) :]


def test_sparse_kl_is_the_full_kl_when_the_top_k_hold_everything() -> None:
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 3, 8, generator=gen), torch.randn(2, 3, 8, generator=gen)
    top = torch.log_softmax(teacher, -1).topk(8, dim=-1)
    full = F.kl_div(
        torch.log_softmax(student, -1).flatten(0, 1),
        torch.log_softmax(teacher, -1).flatten(0, 1),
        log_target=True,
        reduction="batchmean",
    )
    torch.testing.assert_close(sparse_kl(student, top.indices, top.values), full)


def test_sparse_kl_buckets_the_tail() -> None:
    """Top-2 of 4 tokens: the KL of (p1, p2, rest) against (q1, q2, rest)."""
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    q = torch.tensor([0.25, 0.25, 0.25, 0.25])
    coarse_p, coarse_q = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.25, 0.25, 0.5])
    want = (coarse_p * (coarse_p / coarse_q).log()).sum()
    got = sparse_kl(q.log()[None, None], torch.tensor([[[0, 1]]]), p[:2].log()[None, None])
    torch.testing.assert_close(got, want)
    assert (
        float(sparse_kl(p.log()[None, None], torch.tensor([[[0, 1]]]), p[:2].log()[None, None]))
        < 1e-6
    )


def test_sparse_tv_is_one_minus_the_overlap_when_the_top_k_hold_everything() -> None:
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 3, 8, generator=gen), torch.randn(2, 3, 8, generator=gen)
    top = torch.log_softmax(teacher, -1).topk(8, dim=-1)
    overlap = torch.minimum(student.softmax(-1), teacher.softmax(-1)).sum(-1)  # [2, 3]
    torch.testing.assert_close(sparse_tv(student, top.indices, top.values), 1 - overlap.mean())


def test_sparse_tv_buckets_the_tail() -> None:
    """Top-2 of 4 tokens: half the L1 distance of (p1, p2, rest) and (q1, q2, rest)."""
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    q = torch.tensor([0.25, 0.25, 0.25, 0.25])
    want = torch.tensor(0.5 * (0.25 + 0.05 + 0.3))
    got = sparse_tv(q.log()[None, None], torch.tensor([[[0, 1]]]), p[:2].log()[None, None])
    torch.testing.assert_close(got, want)


def test_argmax_ce_is_the_cross_entropy_of_the_teachers_top_token() -> None:
    student = torch.log(torch.tensor([[[0.1, 0.6, 0.3], [0.2, 0.2, 0.6]]]))  # [1, 2, 3]
    teacher = torch.tensor([[[0.2, 0.3, 0.5], [0.7, 0.2, 0.1]]]).log().topk(2, dim=-1)
    want = -(torch.tensor(0.3).log() + torch.tensor(0.2).log()) / 2  # teacher's tops: 2, 0
    torch.testing.assert_close(argmax_ce(student, teacher.indices), want)


def test_repeated_ngrams_marks_only_self_repetition_after_the_prompt() -> None:
    prompt = [7, 8, 9, 7, 8, 9]  # repeats, but it is the prompt's, not the model's
    row = prompt + [1, 2, 3, 4, 1, 2, 3, 4, 5]
    mask = repeated_ngrams([row, [1, 2]], [len(prompt), 0], n=3)
    assert mask.shape == (2, len(row))
    marked = [t - len(prompt) for t in mask[0].nonzero()[:, 0].tolist()]
    assert marked == [6, 7]  # (1, 2, 3) and (2, 3, 4) come round again; (3, 4, 5) is new
    assert not mask[1].any()


def test_unlikelihood_penalises_only_marked_tokens() -> None:
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]))  # [1, 2, 2]
    targets = torch.tensor([[0, 0]])
    both = unlikelihood(logits, targets, torch.tensor([[True, True]]))
    assert float(both) == pytest.approx(-(math.log(0.5) + math.log(0.1)) / 2)
    first = unlikelihood(logits, targets, torch.tensor([[True, False]]))
    assert float(first) == pytest.approx(-math.log(0.5) / 2)


def test_a_committed_target_is_the_teacher_in_the_asked_dtype_keyed_by_its_weights(tmp_path):
    torch.manual_seed(0)
    folder = save_model(DecoderModel(CFG), tmp_path / "demo-target")
    args = argparse.Namespace(target_from=folder, teacher_dtype="bfloat16", device="cpu")
    teacher, key = finished_target(DecoderModel(CFG), "target", args)
    assert teacher.lm_head.weight.dtype == torch.bfloat16
    assert key.startswith("demo-target:") and key.endswith(":bfloat16")
    torch.manual_seed(1)
    save_model(DecoderModel(CFG), folder)  # other weights, same folder: another pool
    assert finished_target(DecoderModel(CFG), "target", args)[1] != key


def test_a_work_dir_holding_another_tokenizer_is_refused(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "tokenizer.json").write_text('{"other": true}')
    given = tmp_path / "tokenizer.json"
    given.write_text('{"model": "committed"}')
    with pytest.raises(SystemExit, match="another tokenizer"):
        load_data(work, tmp_path / "no-stdlib-needed", given)


def test_earlier_pools_of_the_same_target_join_and_others_are_refused(tmp_path):
    def pool(n: int, fill: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = torch.full((n, 5), fill, dtype=torch.int16)  # [n, T + 1]
        return rows, torch.full((n, 4, 2), fill, dtype=torch.int16), torch.zeros(n, 4, 2)

    earlier = tmp_path / "seed1"
    earlier.mkdir()
    rows, ids, logps = pool(2, 7)
    torch.save({"target": "t:abc", "rows": rows, "ids": ids, "logps": logps}, earlier / POOL_FILE)
    both = joined([pool(3, 1), *earlier_pools("t:abc", [earlier])])
    assert [len(t) for t in both] == [5, 5, 5]
    assert both[0][:, 0].tolist() == [1, 1, 1, 7, 7]
    assert both[1][:, 0, 0].tolist() == [1, 1, 1, 7, 7]
    assert joined([pool(3, 1), *earlier_pools("t:abc", [])])[0].shape == (3, 5)
    with pytest.raises(SystemExit, match="labelled by t:abc, not by t:new"):
        earlier_pools("t:new", [earlier])
    with pytest.raises(SystemExit, match=r"no distillation_pool\.pt there"):
        earlier_pools("t:abc", [tmp_path / "empty"])


def test_written_rows_are_the_rows_the_target_wrote_in_each_pool(tmp_path):
    for name, fill, sizes in (("seed1", 1, [2, 3]), ("seed2", 2, [1, 1])):
        (tmp_path / name).mkdir()
        rows = torch.full((sum(sizes), 5), fill, dtype=torch.int16)  # [written + windows, T + 1]
        rows[sizes[0] :] = -1  # the training windows, after the written rows
        torch.save({"target": "t:abc", "sizes": sizes, "rows": rows}, tmp_path / name / POOL_FILE)
    written = written_rows("t:abc", [tmp_path / "seed1", tmp_path / "seed2"])
    assert written[:, 0].tolist() == [1, 1, 2] and written.shape == (3, 5)
    with pytest.raises(SystemExit, match="not by t:new"):
        written_rows("t:new", [tmp_path / "seed1"])


def test_draft_kl_is_the_kl_from_the_model_to_the_draft_and_trains_the_model_only():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 11, generator=gen, requires_grad=True)  # [B, T, V]
    draft_logits = torch.randn(2, 3, 11, generator=gen)
    assert draft_kl(draft_logits, draft_logits).abs().item() < 1e-6
    kl = draft_kl(logits, draft_logits)
    logp, logq = F.log_softmax(logits, -1), F.log_softmax(draft_logits, -1)
    by_hand = F.kl_div(logq, logp, log_target=True, reduction="none").sum(-1).mean()
    torch.testing.assert_close(kl, by_hand)
    assert kl.item() > 0
    kl.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # Shifting every logit of a row by a constant changes nothing: only the distribution counts.
    torch.testing.assert_close(draft_kl(logits + 5.0, draft_logits - 2.0), kl)


@pytest.mark.parametrize("grown", [{"num_hidden_layers": 2}, {"intermediate_size": 96}, {}])
def test_a_grown_model_computes_what_the_smaller_one_did_and_can_learn(grown):
    torch.manual_seed(0)
    small = DecoderModel(CFG)
    big = DecoderModel(dataclasses.replace(CFG, **grown))
    grow_into(big, small.state_dict())
    ids = torch.randint(1, CFG.vocab_size, (2, 12))
    assert torch.equal(big.forward_dense(ids), small.forward_dense(ids))
    F.cross_entropy(big.forward_dense(ids).flatten(0, 1), ids.flatten()).backward()
    outputs = [
        p for n, p in big.named_parameters() if n.endswith(("o_proj.weight", "down_proj.weight"))
    ]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in outputs)  # zero, not stuck


@pytest.mark.parametrize(
    ("other", "error"),
    [
        ({"hidden_size": 48}, "does not fit"),
        ({"num_attention_heads": 2}, "does not fit"),
        ({"intermediate_size": 128}, "does not fit"),
        ({"num_hidden_layers": 2}, "does not have"),
    ],
)
def test_growing_refuses_what_would_change_the_function(other, error):
    larger_or_other = DecoderModel(dataclasses.replace(CFG, **other))
    with pytest.raises(ValueError, match=error):
        grow_into(DecoderModel(CFG), larger_or_other.state_dict())


def test_growing_refuses_a_checkpoint_with_missing_or_foreign_weights():
    state = DecoderModel(CFG).state_dict()
    del state["model.norm.weight"]
    with pytest.raises(ValueError, match=r"model\.norm\.weight is missing"):
        grow_into(DecoderModel(CFG), state)
    state = {**DecoderModel(CFG).state_dict(), "model.extra.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="does not have"):
        grow_into(DecoderModel(CFG), state)
