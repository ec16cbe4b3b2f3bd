"""CPU lists and the split of one machine between verifier, draft and router."""

from __future__ import annotations

import pytest

from specdec.serving.cpus import format_cpus, parse_cpus, pin, split, usable

pytestmark = pytest.mark.unit


def test_cpu_lists_round_trip():
    assert parse_cpus("0-3,6") == {0, 1, 2, 3, 6}
    assert parse_cpus(" 2 , 0 ") == {0, 2}
    assert format_cpus({0, 1, 2, 3, 6}) == "0-3,6"
    assert format_cpus({5}) == "5"
    assert parse_cpus(format_cpus({1, 3, 4, 5, 9})) == {1, 3, 4, 5, 9}


@pytest.mark.parametrize("bad", ["", "a", "3-1", "-2", "1-x"])
def test_bad_cpu_lists_are_refused_naming_the_flag(bad: str):
    with pytest.raises(ValueError, match="--cpus"):
        parse_cpus(bad)


def test_split_gives_the_draft_its_own_cpus_and_the_verifier_most():
    assert split({0}).verifier is None  # one CPU: nothing to split
    two = split({0, 1})  # the router's bursts fit between the verifier's forwards
    assert (two.verifier, two.draft, two.router) == ({0}, {1}, {0})
    three = split({0, 1, 2})
    assert (three.verifier, three.draft, three.router) == ({0}, {2}, {1})
    sixteen = split(set(range(16)))
    assert sixteen.verifier == set(range(13)) and sixteen.router == {13}
    assert sixteen.draft == {14, 15}
    assert "verifier 0-12, draft 14-15, router 13" in sixteen.describe()


def test_pin_refuses_cpus_this_process_cannot_use():
    with pytest.raises(ValueError, match="not available"):
        pin({max(usable()) + 1000})
