"""``tools/eval_demo.py``: which continuations count as loops, which files give prompts, and the
sampled acceptance it computes without drawing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from eval_demo import CONTINUATION, inner_prompts, loops, prompts_from, sampled_overlap

from specdec.engine.checkpoint import load_model
from specdec.engine.proposer_draft import DraftModelProposer
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.engine.sequence import SequenceState, VerifyItem, verify_batch

pytestmark = pytest.mark.unit


def test_a_tail_repeating_with_a_short_period_loops() -> None:
    head = list(range(100, 132))
    assert loops(head + [1, 2, 3] * 11, "x")  # period 3 over the whole second half
    assert loops(head + [7] * 32, "x")  # period 1


def test_a_period_longer_than_16_or_a_broken_repeat_does_not_loop() -> None:
    head = list(range(100, 132))
    assert not loops(head + list(range(17)) * 2, "x")  # period 17
    tail = [1, 2, 3] * 10 + [4, 5]  # the last two tokens break the period
    assert not loops(head + tail, "x")
    assert not loops(list(range(64)), "a = 1\nb = 2\n")


def test_a_non_blank_line_written_three_times_loops_and_blank_lines_do_not() -> None:
    ids = list(range(64))
    assert loops(ids, "x = f()\n    x = f()\ny = 2\nx = f()\n")  # compared stripped
    assert not loops(ids, "x = f()\n\n\n\ny = 2\nx = f()\n")


def test_prompts_are_the_first_lines_of_files_long_enough_in_order() -> None:
    long_file = "".join(
        f"line_{i} = {i}  # some words to pass the length check\n" for i in range(30)
    )
    texts = [
        ("short.py", "a = 1\n" * 5),
        ("a.py", long_file),
        ("b.py", long_file),
        ("c.py", long_file),
    ]
    got = prompts_from(texts, n=2, lines=12)
    assert [rel for rel, _ in got] == ["a.py", "b.py"]
    assert got[0][1] == "".join(long_file.splitlines(keepends=True)[:12])


def test_inner_prompts_stay_inside_one_file_with_room_to_continue():
    files = [list(range(1000, 1300)), list(range(10)), list(range(2000, 2200))]
    prompts = inner_prompts(files, 20, 100)
    assert len(prompts) == 20 and all(len(p) == 100 for p in prompts)
    for p in prompts:
        file = next(f for f in files if p[0] in f)  # the short file never has room
        start = file.index(p[0])
        assert file[start : start + 100] == p and start + 100 + CONTINUATION <= len(file)
    # spread over both files, in order, and no more than there are places
    assert prompts[0][0] == 1000 and any(p[0] >= 2000 for p in prompts)
    assert prompts == sorted(prompts)
    assert len(inner_prompts(files, 10_000, 100)) == (300 - 164 + 1) + (200 - 164 + 1)


PROMPT = [5, 17, 33, 2, 99, 100, 7]


def test_sampled_overlap_of_a_model_with_itself_loses_only_the_cut_mass(model_dir):
    target = load_model(model_dir / "target")
    seqs = [PROMPT + [9, 40, 41, 3], [1, 2, 3, 4, 5]]
    overlap = sampled_overlap(target, target, seqs, [len(PROMPT), 2], SamplingParams(0.5))
    # at T = 0.5 the top 256 of 320 tokens hold over 99 %, so the draft ships 99 % of its mass
    # (sparse_top) and its rows are within 0.01 of the target's in total variation
    assert 0.99 <= overlap <= 1.0 + 1e-6


@pytest.mark.parametrize("draft_name", ["draft_close", "draft_other"])
def test_sampled_overlap_is_the_acceptance_speculative_sampling_draws(model_dir, draft_name):
    # At one context (the prompt's end) the overlap is exactly the chance that the engine
    # accepts its first draft token; count acceptances over many seeds and compare.
    target, draft = load_model(model_dir / "target"), load_model(model_dir / draft_name)
    overlap = sampled_overlap(target, draft, [PROMPT + [0]], [len(PROMPT)], SamplingParams(1.0))
    target_runner, draft_runner = ModelRunner(target, num_slots=1), ModelRunner(draft, num_slots=1)
    draws = 600
    accepted = 0
    for seed in range(draws):
        params = SamplingParams(temperature=1.0, seed=seed)
        proposer = DraftModelProposer(draft_runner)
        drafts = proposer.propose(PROMPT, 1, params, seed)  # one draft, at the prompt's end
        seq = SequenceState(target_runner.cache.allocate(), list(PROMPT), params, seed)
        accepted += verify_batch(target_runner, [VerifyItem(seq, drafts)])[0].num_accepted
        target_runner.cache.free(seq.slot)
        proposer.close()
    assert abs(accepted / draws - overlap) < 0.08  # 4 standard deviations of the count at most
