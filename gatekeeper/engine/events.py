"""What the engine says: verdicts, their reasons, and the events of a decision.

Compiled with mypyc with the engine (``gatekeeper.native``): see "Compiled modules" in
README.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from gatekeeper.model import Door, Port


class Verdict(IntEnum):
    DROP = 0
    ACCEPT = 1


class Reason(IntEnum):
    """Why a packet got its verdict (a metrics label, never shown on the wire)."""

    GRANTED = 0  # protected port, the source holds a grant: accepted
    UNAUTHORISED = 1  # protected port, no grant
    KNOCK = 2  # advanced or restarted a sequence
    COMPLETED = 3  # completed an open sequence: grant made
    CLOSED = 4  # completed a close sequence
    WRONG = 5  # neither a knock nor protected (it resets a sequence in progress)
    DUPLICATE = 6  # the same step again: a retransmit, progress kept
    IGNORED = 7  # tcp flags that do not count as a knock
    MALFORMED = 8  # the decoder could not read it (set by the caller)
    ERROR = 9  # the worker failed on it (set by the caller)
    SCANNER = 10  # completed a sequence while locked out as a scanner: no grant
    REFUSED = 11  # a new source's knock, not tracked: its /24 or /64 is at quota, or the table is full
    LOCKED = 12  # completed a sequence while locked out for failed sequences: no grant


class Outcome:
    """Per-door knock outcomes."""

    ADVANCED: Final = "advanced"
    RESET: Final = "reset"
    TIMEOUT: Final = "timeout"
    COMPLETED: Final = "completed"
    DUPLICATE: Final = "duplicate"
    NOTHING_TO_CLOSE: Final = "nothing-to-close"
    LOCKED: Final = "locked"  # completed, but the source is locked out as a scanner


@dataclass(frozen=True, slots=True)
class Granted:
    """``steps`` are the ports granted now, always spelled out: all of the door's
    ``opens`` for a knock sequence, those the request asked for for SPA and encrypted
    sequences. ``renewed``: the source already held a running grant of this door."""

    door: Door
    address: str
    expires: float
    renewed: bool
    steps: tuple[Port, ...]


@dataclass(frozen=True, slots=True)
class Revoked:
    """``steps``: the ports of the door whose grant ended (not always all of them).
    ``kept``, for a close: those of them that another door still grants the address, with
    that door and its expiry (the kernel set holds one entry a port: the worker removes
    ``steps`` and writes these back)."""

    door: Door
    address: str
    cause: str  # "expired" or "closed"
    steps: tuple[Port, ...]
    kept: tuple[tuple[Door, Port, float], ...] = ()


@dataclass(frozen=True, slots=True)
class Knocked:
    door: str
    outcome: str

    def __hash__(self) -> int:  # the generated one's value; written out, mypyc compiles it
        return hash((self.door, self.outcome))


Event = Granted | Revoked | Knocked
Decision = tuple[Verdict, Reason, tuple[Event, ...]]


class Guard(IntEnum):
    """What the engine's defences did (counted in ``Engine.guards``, by this index)."""

    LOCKOUT_SCAN = 0  # a source probed more ports than any door needs
    LOCKOUT_SOURCE = 1  # a source failed more sequences than failure_limit
    LOCKOUT_PREFIX = 2  # a /24 or /64 failed more sequences than prefix_failure_limit
    REFUSED_QUOTA = 3  # a new source not tracked: its prefix is at prefix_quota
    REFUSED_FULL = 4  # a new source not tracked: the table is full of sources two steps in
    EVICTED = 5  # a source one step in dropped to make room for a new one


__all__ = ["Decision", "Event", "Granted", "Guard", "Knocked", "Outcome", "Reason", "Revoked", "Verdict"]
