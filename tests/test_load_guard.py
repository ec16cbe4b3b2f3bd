"""Load guard: idle below two requests, buckets by load, picks the measured faster arm, keeps
replaying the other, and starts a heavier load from what a lighter one learnt. Driven by a fake
clock and a simulated closed loop of clients."""

from __future__ import annotations

import random
from itertools import pairwise

import pytest

from specdec.router.load_guard import EXPLORE_CLOSE, EXPLORE_FAR, LoadGuard, load_bucket

pytestmark = pytest.mark.unit

MS = 1_000_000  # ns


class Clock:
    def __init__(self) -> None:
        self.ns = 0

    def __call__(self) -> int:
        return self.ns


def simulate(
    guard: LoadGuard,
    clock: Clock,
    clients: int,
    spec: tuple[int, float],
    plain: tuple[int, float],
    seconds: float,
) -> list[bool]:
    """``clients`` requests always in flight, each running rounds back to back; a round commits
    (tokens, ms) of its arm, ±20 % on the time. Events run in time order. Returns, per round,
    whether the guard asked for plain decoding."""
    rng = random.Random(0)
    for _ in range(clients):
        guard.enter(adaptive=True)
    ends = [clock.ns] * clients  # when each client's current round ends; start them all now
    pending: list[tuple[int, int] | None] = [None] * clients
    played = []
    stop = clock.ns + int(seconds * 1e9)
    while clock.ns < stop:
        c = min(range(clients), key=lambda i: ends[i])
        clock.ns = ends[c]
        if pending[c] is not None:
            guard.record(*pending[c])  # type: ignore[misc]
        is_plain = guard.plain()
        tokens, ms = plain if is_plain else spec
        ns = int(ms * MS * rng.uniform(0.8, 1.2))
        pending[c], ends[c] = (tokens, ns), clock.ns + ns
        played.append(is_plain)
    for _ in range(clients):
        guard.leave(adaptive=True)
    return played


def share_plain(played: list[bool]) -> float:
    late = played[len(played) // 3 :]
    return sum(late) / len(late)


def test_load_buckets() -> None:
    assert [load_bucket(n) for n in (0, 1, 2, 3, 4, 7, 8, 15, 16, 33)] == [
        0, 0, 1, 1, 2, 2, 3, 3, 4, 5,
    ]  # fmt: skip


def test_idle_below_two_requests_in_flight() -> None:
    clock = Clock()
    played = simulate(LoadGuard(clock), clock, 1, spec=(1, 30), plain=(1, 5), seconds=20)
    assert not any(played)  # a lone request is its policy's business


def test_turns_speculation_off_when_plain_decoding_is_faster() -> None:
    clock = Clock()
    # speculation: 3 tokens per 36 ms (0.083 tokens/ms); plain: 1 per 10 ms (0.1)
    played = simulate(LoadGuard(clock), clock, 4, spec=(3, 36), plain=(1, 10), seconds=60)
    share = share_plain(played)
    assert 0.75 < share < 1.0, share  # speculation is still replayed now and then


def test_keeps_speculating_when_it_pays() -> None:
    clock = Clock()
    # speculation: 3 tokens per 20 ms (0.15 tokens/ms); plain: 1 per 10 ms (0.1)
    played = simulate(LoadGuard(clock), clock, 4, spec=(3, 20), plain=(1, 10), seconds=60)
    share = share_plain(played)
    # Plain replayed once per EXPLORE_FAR + 1 epochs (~8 % of the time; its rounds are twice
    # as short, so ~15 % of the rounds).
    assert 0 < share < 0.2, share


def test_a_draw_goes_to_plain_decoding() -> None:
    clock = Clock()
    played = simulate(LoadGuard(clock), clock, 4, spec=(3, 30), plain=(1, 10), seconds=60)
    assert share_plain(played) > 0.6


def test_replays_the_trailing_arm_more_often_when_the_arms_are_close() -> None:
    def plain_epochs_per_s(spec: tuple[int, float]) -> float:
        clock = Clock()
        played = simulate(LoadGuard(clock), clock, 4, spec=spec, plain=(1, 10), seconds=60)
        return sum(1 for a, b in pairwise(played) if b and not a) / 60

    # Speculation 2x faster than plain decoding vs 1.15x faster.
    far, close = plain_epochs_per_s((3, 15)), plain_epochs_per_s((3, 26))
    assert close > 2 * far
    assert EXPLORE_FAR > EXPLORE_CLOSE


def test_an_unmeasured_load_starts_plain_unless_a_heavier_one_speculates() -> None:
    clock = Clock()
    guard = LoadGuard(clock)
    played = simulate(guard, clock, 4, spec=(3, 20), plain=(1, 10), seconds=30)
    assert played[0]  # nothing measured anywhere: the safe side first
    assert share_plain(played) < 0.2  # speculation wins at 4
    clock.ns += 10**10
    played = simulate(guard, clock, 16, spec=(3, 20), plain=(1, 10), seconds=1)
    assert played[0]  # a heavier load learns nothing from a lighter one's speculation
    simulate(guard, clock, 16, spec=(3, 20), plain=(1, 10), seconds=30)
    clock.ns += 10**10
    played = simulate(guard, clock, 8, spec=(3, 20), plain=(1, 10), seconds=1)
    assert not played[0]  # speculation pays at 16, so 8 starts there
