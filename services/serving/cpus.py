"""Which CPUs a service runs on: parse and apply ``--cpus``, and split a machine between roles.

On one machine the draft and the verifier should not fight for the same cores: the draft works
while the verifier computes (draft-ahead), and a forward whose threads share a core with another
busy process slows down several-fold (OpenMP threads wait for each other). ``split`` gives the
draft a core of its own and the verifier the rest; the router gets a core of its own when there
are four or more, and otherwise runs beside a one-thread verifier: its work comes in short
bursts between a verdict and the next step, exactly when the verifier waits. (Measured on two
cores with the demo pair: beside the verifier, draft-ahead ran 1.15x the speed of drafting on
demand; beside the draft, whose core it then took, 0.97-1.09x.) ``specdec up`` applies it with
each service's ``--cpus``.
Non-goals: NUMA placement, GPUs (a service on a GPU still runs its loop on these CPUs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def parse_cpus(text: str) -> set[int]:
    """``"0-3,6"`` → {0, 1, 2, 3, 6}; raises ValueError naming the bad part."""
    cpus: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, sep, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"--cpus: {part!r} is not a CPU number or range like 0-3") from None
        if first < 0 or last < first:
            raise ValueError(f"--cpus: {part!r} is not a range of CPU numbers")
        cpus.update(range(first, last + 1))
    if not cpus:
        raise ValueError("--cpus: no CPU given")
    return cpus


def format_cpus(cpus: set[int]) -> str:
    """{0, 1, 2, 3, 6} → ``"0-3,6"``."""
    parts, ordered = [], sorted(cpus)
    start = prev = ordered[0]
    for cpu in [*ordered[1:], None]:
        if cpu is not None and cpu == prev + 1:
            prev = cpu
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if cpu is not None:
            start = prev = cpu
    return ",".join(parts)


def usable() -> set[int]:
    """The CPUs this process may run on."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere every core counts
    return set(affinity(0)) if affinity else set(range(os.cpu_count() or 1))


def pin(cpus: set[int]) -> None:
    """Run this process (and the threads it starts later) on ``cpus`` only."""
    setter = getattr(os, "sched_setaffinity", None)
    if setter is None:
        raise ValueError("--cpus needs Linux (sched_setaffinity)")
    missing = cpus - usable()
    if missing:
        raise ValueError(f"--cpus: CPU {format_cpus(missing)} is not available to this process")
    setter(0, cpus)


@dataclass(frozen=True)
class Layout:
    """CPUs per role; None: the roles share every CPU (one CPU only)."""

    verifier: set[int] | None
    draft: set[int] | None
    router: set[int] | None

    def describe(self) -> str:
        if self.verifier is None or self.draft is None or self.router is None:
            return "CPUs shared (one CPU)"
        return (
            f"CPUs: verifier {format_cpus(self.verifier)}, draft {format_cpus(self.draft)}, "
            f"router {format_cpus(self.router)}"
        )


def split(cpus: set[int]) -> Layout:
    """The draft gets an eighth of the CPUs (at least one), the router one of its own from four
    CPUs on (else it shares the verifier's), the verifier the rest."""
    ordered = sorted(cpus)
    if len(ordered) < 2:
        return Layout(None, None, None)
    n_draft = max(1, len(ordered) // 8)
    draft = set(ordered[-n_draft:])
    rest = ordered[:-n_draft]
    if len(rest) >= 3:
        return Layout(set(rest[:-1]), draft, {rest[-1]})
    if len(rest) == 2:
        return Layout({rest[0]}, draft, {rest[1]})
    return Layout(set(rest), draft, set(rest))
