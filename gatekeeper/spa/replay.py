"""A bounded replay cache with an injected clock, shared by SPA and encrypted sequences.

Only authenticated, fresh messages are ever offered to it (the codecs consult it after
the MAC and the timestamp check), so a flood of forged packets cannot fill it. A message
is remembered for ``ttl`` seconds, which the codecs set to twice their freshness window:
a message with timestamp ``t`` is fresh while ``|now - t| <= window``, so from the first
time it is seen it stays acceptable for at most ``2 * window`` seconds.

When the cache is full of live entries it refuses new ones (fail closed: the codec then
reports a replay) rather than evicting an entry that could still be replayed; the
refusals are counted in :attr:`ReplayCache.overflows`.

The cache never calls out: it says what it saw. A new entry comes back to the codec as
a :class:`Recorded` (its key, expiry and time to live), which the codec's result
carries; the caller turns it into effects (the worker appends it to the door's journal,
and with ``[cluster]`` asks the shared store whether another gateway saw it first).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from cachetools import TLRUCache

DEFAULT_MAX_ENTRIES = 16384


class Admission(IntEnum):
    NEW = 0  # not seen before: recorded
    REPLAY = 1  # seen before and not yet expired
    FULL = 2  # not seen, but the cache is full of live entries: refused


@dataclass(frozen=True, slots=True)
class Recorded:
    """A message new to the cache, now recorded: ``expires`` is ``now + ttl`` by the
    caller's clock."""

    key: bytes
    expires: float
    ttl: float


class ReplayCache:
    """Message digests and their expiry times; pure, the caller passes ``now``.

    A ``cachetools.TLRUCache`` whose time-to-use is each entry's own expiry and whose
    timer is the caller's ``now``. Its own eviction is never reached: a full cache
    refuses rather than forgetting a message that could still be replayed. Memory is a
    few hundred bytes an entry; size it for the busiest legitimate rate:
    ``max_entries >= messages per second * 2 * window``.
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.overflows = 0
        self.restored = False  # whether entries kept before a restart were taken back
        self._now = 0.0
        self._cache: TLRUCache[bytes, float] = TLRUCache(
            max_entries, ttu=lambda _key, expires, _now: expires, timer=self._clock
        )

    def _clock(self) -> float:
        return self._now

    def __len__(self) -> int:
        self._cache.expire()
        return len(self._cache)

    def __contains__(self, key: object) -> bool:
        return key in self._cache

    def purge(self, now: float) -> int:
        """Forget every entry that expired at or before ``now``; returns how many."""
        self._now = now
        return len(self._cache.expire())

    def admit(self, key: bytes, now: float, ttl: float) -> Admission:
        """Record ``key`` until ``now + ttl`` unless it is already live (a replay)."""
        self._now = now
        if key in self._cache:
            return Admission.REPLAY
        self._cache.expire()
        if len(self._cache) >= self.max_entries:
            self.overflows += 1
            return Admission.FULL
        self._cache[key] = now + ttl
        return Admission.NEW

    def record(self, key: bytes, now: float, ttl: float) -> Recorded | Admission:
        """:meth:`admit`, saying what it recorded: a :class:`Recorded` for a new entry,
        else the :class:`Admission` that refused it."""
        admission = self.admit(key, now, ttl)
        if admission is Admission.NEW:
            return Recorded(key, now + ttl, ttl)
        return admission

    def restore(self, entries: Iterable[tuple[bytes, float]], now: float) -> int:
        """Take back entries recorded before a restart; those still live count."""
        self._now = now
        self.restored = True
        restored = 0
        for key, expires in entries:
            if expires > now and len(self._cache) < self.max_entries:
                self._cache[key] = expires
                restored += 1
        return restored
