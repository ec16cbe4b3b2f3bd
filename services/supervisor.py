"""``specdec up``'s supervisor: a child that dies is started again, on the same address.

Each watched child is a name, a way to read its exit status and a way to start it again. The
caller's loop calls ``check()`` a few times a second (from the thread that started the children:
their parent-death signal is tied to it). When a child has exited, one line on the console says
so and when it starts again ("specdec: the draft exited (signal 9); restarting in 0.5 s (restart
1)"), another when it serves again ("specdec: the draft is back, 3.2 s after it died"). The delay
doubles with every death that follows a restart too closely (``stable_s``) and starts over once
the child has stayed up that long. A child that dies again after ``max_rapid``
rapid restarts makes ``check()`` raise ``GiveUp``: it needs a person, not more restarts.

Not here: starting the children the first time (``up.py``), what the router does while one is
gone (``router/replicas.py``: a dead draft means k = 0, a dead verifier UNAVAILABLE with a retry
hint).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

FIRST_DELAY_S = 0.5  # the first restart's delay; doubled for each rapid death after it
MAX_DELAY_S = 8.0
STABLE_S = 30.0  # up this long after a restart: the next death counts as the first again
MAX_RAPID = 6  # rapid restarts in a row; the next rapid death gives up


class GiveUp(Exception):
    """A child keeps dying right after each restart."""


@dataclass
class Watched:
    """One supervised child."""

    name: str
    poll: Callable[[], int | None]  # its exit status (negative: the signal), None while it runs
    start: Callable[[], None]  # start it again at the same address
    ready: Callable[[], bool]  # it serves (asked after a restart until it says so)
    restarts: int = 0
    rapid: int = 0  # deaths in a row, each within STABLE_S of the previous start
    started_at: float = 0.0
    restart_at: float | None = None  # set while it is dead and waiting for its restart
    died_at: float | None = None  # set from its death until it serves again


def describe_exit(status: int) -> str:
    return f"exited (signal {-status})" if status < 0 else f"exited (code {status})"


class Supervisor:
    def __init__(
        self,
        say: Callable[[str], None],
        first_delay_s: float = FIRST_DELAY_S,
        max_delay_s: float = MAX_DELAY_S,
        stable_s: float = STABLE_S,
        max_rapid: int = MAX_RAPID,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.say, self.clock = say, clock
        self.first_delay_s, self.max_delay_s = first_delay_s, max_delay_s
        self.stable_s, self.max_rapid = stable_s, max_rapid
        self.children: list[Watched] = []

    def watch(
        self,
        name: str,
        poll: Callable[[], int | None],
        start: Callable[[], None],
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.children.append(Watched(name, poll, start, ready, started_at=self.clock()))

    def check(self) -> None:
        """Notice deaths, restart what is due; ``GiveUp`` when a child keeps dying."""
        now = self.clock()
        for child in self.children:
            if child.restart_at is None:
                status = child.poll()
                if status is not None:
                    self._died(child, describe_exit(status), now)
                elif child.died_at is not None and child.ready():
                    self._back(child, now - child.died_at)
            elif now >= child.restart_at:
                self._restart(child, now)

    def _died(self, child: Watched, how: str, now: float) -> None:
        if now - child.started_at >= self.stable_s:
            child.rapid = 0
        child.rapid += 1
        if child.rapid > self.max_rapid:
            raise GiveUp(
                f"the {child.name} {how} {child.rapid} times in a row, each within "
                f"{self.stable_s:g} s of its start; giving up (its log above says why)"
            )
        delay = min(self.first_delay_s * 2 ** (child.rapid - 1), self.max_delay_s)
        child.restart_at = now + delay
        if child.died_at is None:
            child.died_at = now
        self.say(
            f"specdec: the {child.name} {how}; restarting in {delay:g} s "
            f"(restart {child.restarts + 1})"
        )

    def _back(self, child: Watched, down_s: float) -> None:
        self.say(f"specdec: the {child.name} is back, {down_s:.1f} s after it died")
        child.died_at = None

    def _restart(self, child: Watched, now: float) -> None:
        child.restarts += 1
        child.restart_at = None
        child.started_at = now
        try:
            child.start()
        except Exception as exc:  # e.g. Redis did not answer in time: a death like any other
            self._died(child, f"did not start ({exc})", now)
