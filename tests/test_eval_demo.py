"""``tools/eval_demo.py``: which continuations count as loops, and which files give prompts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from eval_demo import loops, prompts_from

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
