"""The pure knock engine: packet facts and a clock in, a verdict and events out.

It never touches a socket, netfilter, metrics or logging, so it runs the same in the
NFQUEUE worker, in an offline replay and in a unit test with a fake clock.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from cachetools import TTLCache

from gatekeeper.config import ICMP, TCP, Config, Door, TcpFlags


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


class Outcome:
    """Per-door knock outcomes."""

    ADVANCED = "advanced"
    RESET = "reset"
    TIMEOUT = "timeout"
    COMPLETED = "completed"
    DUPLICATE = "duplicate"
    NOTHING_TO_CLOSE = "nothing-to-close"


@dataclass(frozen=True, slots=True)
class Granted:
    door: Door
    address: str
    expires: float
    renewed: bool


@dataclass(frozen=True, slots=True)
class Revoked:
    door: Door
    address: str
    cause: str  # "expired" or "closed"


@dataclass(frozen=True, slots=True)
class Knocked:
    door: str
    outcome: str


Event = Granted | Revoked | Knocked
Decision = tuple[Verdict, Reason, tuple[Event, ...]]

_ACCEPT_GRANTED: Decision = (Verdict.ACCEPT, Reason.GRANTED, ())
_DROP_UNAUTHORISED: Decision = (Verdict.DROP, Reason.UNAUTHORISED, ())
_DROP_WRONG: Decision = (Verdict.DROP, Reason.WRONG, ())


@dataclass(frozen=True, slots=True)
class _Track:
    """One sequence to follow: a door's open sequence or its close sequence."""

    door_index: int
    door: Door
    keys: tuple[int, ...]
    closes: bool
    timeout: float
    flags: TcpFlags


def _address(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


class Engine:
    """Per-source knock state and grants for one set of doors.

    ``src`` and ``dst`` are packed addresses (4 or 16 bytes), ``port`` is the TCP/UDP
    destination port or the ICMP echo payload length, or ``-1`` when the packet has
    neither (it is then dropped without touching any state).
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._now = 0.0
        tracks: list[_Track] = []
        for i, door in enumerate(config.doors):
            for closes, seq in ((False, door.sequence), (True, door.close_sequence)):
                if seq:
                    tracks.append(
                        _Track(i, door, tuple(s.key for s in seq), closes,
                               door.sequence_timeout, door.tcp_flags)
                    )
        self._tracks = tuple(tracks)
        self._knock_keys = frozenset(k for t in tracks for k in t.keys)
        protected: dict[int, list[tuple[int, bytes | None]]] = {}
        for i, door in enumerate(config.doors):
            host = door.host.packed if door.host is not None else None
            for step in door.opens:
                protected.setdefault(step.key, []).append((i, host))
        self._protected = {k: tuple(v) for k, v in protected.items()}
        # The engine's own timeout check is authoritative; the cache only collects the
        # garbage, a second later, so a late knock is still seen (and counted) as late.
        ttl = max((t.timeout for t in tracks), default=1.0) + 1.0
        self._state: TTLCache[bytes, list[float]] = TTLCache(
            config.settings.max_sources, ttl, timer=self._clock
        )
        self._grants: dict[bytes, dict[int, float]] = {}

    def _clock(self) -> float:
        return self._now

    # -- the hot path -------------------------------------------------------------------

    def decide(self, src: bytes, dst: bytes, proto: int, port: int, flags: int, now: float) -> Decision:
        """Verdict for one inbound packet that the kernel did not already decide."""
        if port < 0:
            return _DROP_WRONG
        self._now = now
        key = proto << 16 | port
        grants = self._grants.get(src)
        if grants is not None:
            for door_index, host in self._protected.get(key, ()):
                expires = grants.get(door_index)
                if expires is not None and expires > now and (host is None or host == dst):
                    return _ACCEPT_GRANTED
        state = self._state.get(src)
        if state is None and key not in self._knock_keys:
            return _DROP_UNAUTHORISED if key in self._protected else _DROP_WRONG
        return self._knock(src, key, proto, flags, now, state)

    def _knock(
        self, src: bytes, key: int, proto: int, flags: int, now: float, state: list[float] | None
    ) -> Decision:
        fresh = state is None
        if state is None:
            state = [0.0] * (2 * len(self._tracks))
        events: list[Event] = []
        reason = Reason.UNAUTHORISED if key in self._protected else Reason.WRONG
        restarted = False
        for n, track in enumerate(self._tracks):
            if proto == TCP and not track.flags.matches(flags):
                if reason == Reason.WRONG:
                    reason = Reason.IGNORED
                continue
            name = track.door.name
            keys = track.keys
            progress = int(state[2 * n])
            if progress and now - state[2 * n + 1] > track.timeout:
                events.append(Knocked(name, Outcome.TIMEOUT))
                progress = 0
            if key == keys[progress]:
                progress += 1
                if progress == 1:
                    state[2 * n + 1] = now
                    restarted = True
                if progress == len(keys):
                    progress = 0
                    events.append(Knocked(name, Outcome.COMPLETED))
                    events.append(self._complete(track, src, now))
                    reason = Reason.CLOSED if track.closes else Reason.COMPLETED
                else:
                    events.append(Knocked(name, Outcome.ADVANCED))
                    if reason not in (Reason.COMPLETED, Reason.CLOSED):
                        reason = Reason.KNOCK
            elif progress and key == keys[progress - 1]:
                events.append(Knocked(name, Outcome.DUPLICATE))
                if reason in (Reason.WRONG, Reason.IGNORED):
                    reason = Reason.DUPLICATE
            elif progress:
                events.append(Knocked(name, Outcome.RESET))
                progress = 0
                if key == keys[0]:
                    progress = 1
                    state[2 * n + 1] = now
                    restarted = True
            state[2 * n] = progress
        if not any(state[0::2]):
            if not fresh:
                self._state.pop(src, None)
        elif fresh or restarted:
            self._state[src] = state  # (re)starts the entry's time to live
        return (Verdict.DROP, reason, tuple(events))

    def _complete(self, track: _Track, src: bytes, now: float) -> Event:
        door = track.door
        grants = self._grants.get(src)
        if track.closes:
            if grants is not None and grants.pop(track.door_index, None) is not None:
                if not grants:
                    del self._grants[src]
                return Revoked(door, _address(src), "closed")
            return Knocked(door.name, Outcome.NOTHING_TO_CLOSE)
        if grants is None:
            grants = self._grants[src] = {}
        renewed = track.door_index in grants and grants[track.door_index] > now
        expires = now + door.open_for
        grants[track.door_index] = expires
        return Granted(door, _address(src), expires, renewed)

    # -- time and state -----------------------------------------------------------------

    def tick(self, now: float) -> list[Revoked]:
        """Expire grants whose time is up; call about once a second."""
        self._now = now
        self._state.expire()
        expired: list[Revoked] = []
        for src in [s for s, g in self._grants.items() if min(g.values()) <= now]:
            grants = self._grants[src]
            for door_index, expires in list(grants.items()):
                if expires <= now:
                    del grants[door_index]
                    expired.append(Revoked(self.config.doors[door_index], _address(src), "expired"))
            if not grants:
                del self._grants[src]
        return expired

    def restore_grant(self, address: str, door_name: str, expires: float) -> bool:
        """Adopt a grant found in the kernel set (after a restart); False if no such door."""
        for i, door in enumerate(self.config.doors):
            if door.name == door_name:
                src = ipaddress.ip_address(address).packed
                grants = self._grants.setdefault(src, {})
                grants[i] = max(expires, grants.get(i, 0.0))
                return True
        return False

    def grants(self) -> Iterator[tuple[str, str, float]]:
        """Active grants as (address, door name, expiry)."""
        for src, grants in self._grants.items():
            for door_index, expires in grants.items():
                yield _address(src), self.config.doors[door_index].name, expires

    @property
    def tracked_sources(self) -> int:
        return len(self._state)

    def stats(self) -> dict[str, Any]:
        return {"tracked_sources": len(self._state), "grants": sum(len(g) for g in self._grants.values())}


__all__ = [
    "ICMP", "Decision", "Engine", "Event", "Granted", "Knocked", "Outcome", "Reason", "Revoked",
    "Verdict",
]
