"""Knocks whose progress lives in a shared store (``[cluster]``), sans I/O.

With several gateways, the knocks of one sequence may cross different boxes, so their
progress cannot live in one process. This module decides, without touching the store,
what a knock asks of it (:meth:`SharedKnocks.step`) and turns the store's answer into
the same decision and events the local :class:`~gatekeeper.engine.Engine` would give
(:meth:`SharedKnocks.result`). ``gatekeeper.cluster`` runs the step on Redis.

The rules are the engine's, with two differences that follow from sharing: only a
packet to a knock port moves shared progress (any other packet is verdicted locally and
touches no shared state, as with ``wrong_knock = "ignore"`` for non-knock ports), and a
sequence times out ``sequence_timeout`` after its first knock by the store's clock.
Scanner lockout and TCP-flags filtering stay local to each gateway.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

from gatekeeper.engine.engine import (
    _ADVANCED,
    _COMPLETED,
    _DUPLICATE,
    _RESET,
    Decision,
    Engine,
    Event,
    Granted,
    Knocked,
    Outcome,
    Reason,
    Verdict,
)
from gatekeeper.model import TCP, Port

# What the store answers for each track (see gatekeeper/cluster/knock.lua).
NONE, ADVANCED, RESET, COMPLETED, DUPLICATE, CLOSED, NOTHING, LOCKED = range(8)


@dataclass(frozen=True, slots=True)
class SharedTrack:
    """One sequence as the store sees it: its id (the same on every gateway that runs the
    same door) and the arguments the knock script takes for it."""

    n: int  # the engine's track number
    door_index: int
    ident: str  # "<door>.open.<digest>" or "<door>.close.<digest>"
    # steps, timeout ms, ignore, open_for ms (0: closes), door, its opens ("22:tcp,80:tcp")
    args: tuple[str, str, str, str, str, str]
    fallback_local: bool
    opens: tuple[str, ...]  # the door's ports, one grant key each ("22:tcp")


@dataclass(frozen=True, slots=True)
class Step:
    """What one knock asks of the store: run the knock script over these tracks."""

    src: bytes
    address: str
    key: int
    tracks: tuple[SharedTrack, ...]
    locked: bool  # the source is locked out here as a scanner: a completion grants nothing
    fallback_local: bool  # with the store down, every door of these tracks knocks locally


def track_ident(door_name: str, closes: bool, keys: tuple[int, ...]) -> str:
    digest = hashlib.sha256(",".join(map(str, keys)).encode()).hexdigest()[:8]
    return f"{door_name}.{'close' if closes else 'open'}.{digest}"


class SharedKnocks:
    """The engine's knock rules over progress held elsewhere (pure)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        tracks = []
        for plan in engine._plan:
            t = plan.track
            opens = tuple(str(s) for s in t.door.opens)
            tracks.append(SharedTrack(
                plan.n, t.door_index, track_ident(t.door.name, t.closes, t.keys),
                (",".join(map(str, t.keys)), str(max(1, round(t.timeout * 1000))),
                 "1" if t.door.ignore_wrong else "0",
                 "0" if t.closes else str(t.door.open_for * 1000), t.door.name, ",".join(opens)),
                t.door.cluster_fallback == "local", opens))
        self.tracks = tuple(tracks)
        self.knock_keys = engine._knock_keys
        self._mismatch = engine._mismatch
        self._ignored: Decision = (Verdict.DROP, Reason.IGNORED, ())
        # by knock key: the tracks that contain it (for the fallback choice)
        self._fallback = {
            key: all(tr.fallback_local for tr in self.tracks if key in engine._plan[tr.n].keys)
            for key in self.knock_keys
        }

    def step(self, src: bytes, key: int, proto: int, flags: int, now: float) -> Step | Decision:
        """The shared step for a packet to a knock port (``key in knock_keys``), or the
        decision when no track takes it (TCP flags that do not count as a knock)."""
        mismatch = self._mismatch[flags & 0xFF] if proto == TCP else 0
        tracks = tuple(tr for tr in self.tracks if not mismatch >> tr.n & 1)
        if not tracks:
            return self._ignored
        address = str(ipaddress.ip_address(src))
        return Step(src, address, key, tracks, self.engine.locked_out(src, now), self._fallback[key])

    def result(self, step: Step, outcomes: list[int], now: float) -> Decision:
        """The decision for the store's answer, one outcome a track of ``step``."""
        engine = self.engine
        plans = engine._plan
        reason = Reason.IGNORED if len(step.tracks) < len(self.tracks) else Reason.WRONG
        events: list[Event] = []
        failed = False
        for track, outcome in zip(step.tracks, outcomes, strict=True):
            knocked = plans[track.n].knocked
            door = plans[track.n].track.door
            if outcome == ADVANCED:
                events.append(knocked[_ADVANCED])
                if reason is not Reason.COMPLETED and reason is not Reason.CLOSED:
                    reason = Reason.KNOCK
            elif outcome == DUPLICATE:
                events.append(knocked[_DUPLICATE])
                if reason is Reason.WRONG or reason is Reason.IGNORED:
                    reason = Reason.DUPLICATE
            elif outcome == RESET:
                events.append(knocked[_RESET])
                failed = True
            elif outcome == COMPLETED:
                events.append(knocked[_COMPLETED])
                done = engine.grant(step.src, track.door_index, now)
                events.append(done)
                reason = (Reason.COMPLETED if done.__class__ is Granted
                          else engine.lock_reason(step.src, now))
            elif outcome == LOCKED:
                events.append(knocked[_COMPLETED])
                events.append(Knocked(door.name, Outcome.LOCKED))
                reason = engine.lock_reason(step.src, now)
            elif outcome in (CLOSED, NOTHING):
                events.append(knocked[_COMPLETED])
                engine.revoke(step.src, track.door_index)
                # the store held every port of the door, wherever granted: close them all
                # (this engine may hold only some, e.g. one adopted from the store)
                events.append(engine.closed(step.src, door, door.opens)
                              if outcome == CLOSED else Knocked(door.name, Outcome.NOTHING_TO_CLOSE))
                reason = Reason.CLOSED
        if failed:  # failure limits count on this gateway, like the scanner lockout
            engine.count_failure(step.src, now)
        return (Verdict.DROP, reason, tuple(events))

    @staticmethod
    def step_address(src: bytes) -> str:
        return str(ipaddress.ip_address(src))

    @staticmethod
    def port(key: int) -> Port:
        """The port a packet's ``proto << 16 | port`` key is to (as a door's ``opens``)."""
        return Port(key >> 16, key & 0xFFFF)

    def lookup(self, key: int, dst: bytes) -> tuple[int, ...]:
        """The doors (indexes) whose grant would admit a packet to ``key`` at ``dst``."""
        return self.engine.doors_opening(key, dst)

    def found(self, src: bytes, door_index: int, seconds: float, now: float,
              ports: tuple[Port, ...]) -> Granted:
        """A grant of ``ports`` of a door that the store holds (made on another gateway):
        adopt those ports here, and only those."""
        door = self.engine.config.doors[door_index]
        address = str(ipaddress.ip_address(src))
        self.engine.restore_grant(address, door.name, now + seconds, ports)
        return Granted(door, address, now + seconds, False, ports)
