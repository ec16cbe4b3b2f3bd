"""The speculation cache: proposals drafted ahead, each for one exact state of a sequence.

While the verifier checks a round, the draft sends proposals for the round's likeliest
outcomes. Each is keyed by the state it continues: the sequence's first ``position`` committed
tokens followed by ``context`` (the drafts the outcome accepts and the verifier's token after
them). When the verdict arrives, ``take`` looks the new committed sequence up. A proposal is used
only for exactly the state it was drafted for, so its draft probabilities are the ones its
tokens were drawn from and sampling stays exact; a stale entry can never be used wrongly, only
not at all.
Non-goals: anything but exact matches (no prefix reuse of a longer cached proposal).
"""

from __future__ import annotations

from collections.abc import Sequence

from specdec.core.rounds import Proposal

MAX_ENTRIES = 256  # a request's cache never holds more (oldest forgotten first)


class SpeculationCache:
    """Proposals by the exact state they continue; one cache per request."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._max_entries = max_entries
        # state length -> [(position, context, proposal)]
        self._entries: dict[int, list[tuple[int, tuple[int, ...], Proposal]]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def put(self, position: int, context: Sequence[int], proposal: Proposal) -> None:
        """Keep ``proposal`` for the state ``committed[:position] + context``."""
        if self._size >= self._max_entries:
            self._forget(min(self._entries))
        self._entries.setdefault(position + len(context), []).append(
            (position, tuple(context), proposal)
        )
        self._size += 1

    def take(self, committed: Sequence[int]) -> Proposal | None:
        """The proposal drafted for exactly ``committed``, if any. Entries for states no longer
        than ``committed`` are forgotten: the sequence only grows, they cannot match again."""
        length = len(committed)
        found = None
        for position, context, proposal in self._entries.get(length, ()):
            if tuple(committed[position:]) == context:
                found = proposal
                break
        for key in [key for key in self._entries if key <= length]:
            self._forget(key)
        return found

    def _forget(self, key: int) -> None:
        self._size -= len(self._entries.pop(key))
