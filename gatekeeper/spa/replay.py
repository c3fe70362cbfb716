"""A bounded replay cache with an injected clock, shared by SPA and encrypted sequences.

Only authenticated, fresh messages are ever offered to it (the codecs consult it after
the MAC and the timestamp check), so a flood of forged packets cannot fill it. A message
is remembered for ``ttl`` seconds, which the codecs set to twice their freshness window:
a message with timestamp ``t`` is fresh while ``|now - t| <= window``, so from the first
time it is seen it stays acceptable for at most ``2 * window`` seconds.

When the cache is full of live entries it refuses new ones (fail closed: the codec then
reports a replay) rather than evicting an entry that could still be replayed; the
refusals are counted in :attr:`ReplayCache.overflows`.
"""

from __future__ import annotations

import heapq
from enum import IntEnum

DEFAULT_MAX_ENTRIES = 16384


class Admission(IntEnum):
    NEW = 0  # not seen before: recorded
    REPLAY = 1  # seen before and not yet expired
    FULL = 2  # not seen, but the cache is full of live entries: refused


class ReplayCache:
    """Message digests and their expiry times; pure, the caller passes ``now``.

    Memory is about 200 bytes per entry (a 32-byte key, a dict slot and a heap slot), so
    the default 16384 entries stay under 4 MB. Size it for the busiest legitimate rate:
    ``max_entries >= messages per second * 2 * window``.
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.overflows = 0
        self._expires: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes]] = []

    def __len__(self) -> int:
        return len(self._expires)

    def __contains__(self, key: object) -> bool:
        return key in self._expires

    def purge(self, now: float) -> int:
        """Forget every entry that expired at or before ``now``; returns how many."""
        removed = 0
        heap = self._heap
        while heap and heap[0][0] <= now:
            expires, key = heapq.heappop(heap)
            if self._expires.get(key) == expires:
                del self._expires[key]
                removed += 1
        return removed

    def admit(self, key: bytes, now: float, ttl: float) -> Admission:
        """Record ``key`` until ``now + ttl`` unless it is already live (a replay)."""
        expires = self._expires.get(key)
        if expires is not None and expires > now:
            return Admission.REPLAY
        self.purge(now)
        if len(self._expires) >= self.max_entries:
            self.overflows += 1
            return Admission.FULL
        until = now + ttl
        self._expires[key] = until
        heapq.heappush(self._heap, (until, key))
        return Admission.NEW
