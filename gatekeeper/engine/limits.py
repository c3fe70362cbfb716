"""One windowed counter behind the engine's lockouts (the scanner's and the failure limits).

A :class:`WindowCounter` counts hits of a key (a source address, or its /24 or /64)
within a window that opens at the first hit; a hit past ``limit`` in the window locks the
key out for ``lockout`` seconds. A lockout outlives its window (a new window keeps it).
The table stays oldest window first and holds at most ``capacity`` keys: a full table
forgets its oldest that lock nothing out (else its oldest), ``evict`` at a time.

Compiled with mypyc with the engine (``gatekeeper.native``): see "Compiled modules" in
README.md.
"""

from __future__ import annotations

# key -> (window start, hits, locked out until, what the last hit was)
Entry = tuple[float, int, float, int]


class WindowCounter:
    """Hits by key within a window, and the lockouts they earned (pure: ``now`` in)."""

    def __init__(self, window: float, limit: int, lockout: float, capacity: int, evict: int) -> None:
        self.window = window
        self.limit = limit
        self.lockout = lockout
        self.capacity = capacity
        self.evict = evict
        self.table: dict[bytes, Entry] = {}

    def hit(self, key: bytes, now: float, what: int = -1) -> bool:
        """Count one hit of ``key``; True when it starts a lockout. A ``what`` of 0 or more
        names the hit (the port a scanner probed): the same again in a row counts once."""
        table = self.table
        entry = table.get(key)
        if entry is None or now - entry[0] > self.window:
            locked = entry[2] if entry is not None else 0.0
            if entry is not None:
                del table[key]  # re-inserted at the end: the table stays oldest first
            elif len(table) >= self.capacity:
                self._trim(now)
            table[key] = (now, 1, locked, what)
            return False
        if what >= 0 and what == entry[3]:
            return False
        count = entry[1] + 1
        locked = entry[2]
        started = count > self.limit and locked <= now
        if started:
            locked = now + self.lockout
        table[key] = (entry[0], count, locked, what)
        return started

    def locked(self, key: bytes, now: float) -> bool:
        """Whether ``key`` is locked out at ``now``."""
        entry = self.table.get(key)
        return entry is not None and entry[2] > now

    def expire(self, now: float) -> None:
        """Forget keys whose window has passed and that lock nothing out."""
        table = self.table
        window = self.window
        for key in [k for k, e in table.items() if now - e[0] > window and e[2] <= now]:
            del table[key]

    def _trim(self, now: float) -> None:
        """Full: forget the oldest entries that lock nothing out, else just the oldest."""
        table = self.table
        drop = [k for k, e in table.items() if e[2] <= now][: self.evict]
        for key in drop or list(table)[: self.evict]:
            del table[key]

    def __len__(self) -> int:
        return len(self.table)
