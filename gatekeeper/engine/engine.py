"""The pure knock engine: packet facts and a clock in, a verdict and events out.

It never touches a socket, netfilter, metrics or logging, so it runs the same in the
NFQUEUE worker, in an offline replay and in a unit test with a fake clock.

Compiled with mypyc at install time (setup.py; ``gatekeeper.native`` says whether it is):
keep it mypy-strict, never patch its classes or functions at run time (compiled callers
would not see it), give class-level constants ``Final``; see "Compiled modules" in README.md.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final, NamedTuple

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
    SCANNER = 10  # completed a sequence while locked out as a scanner: no grant


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

    def __hash__(self) -> int:  # the generated one's value; written out, mypyc compiles it
        return hash((self.door, self.outcome))


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


class _Plan(NamedTuple):
    """What _knock needs of one track (it unpacks a plain tuple copy by position)."""

    bit: int  # 1 << n
    n: int  # the track's number
    keys: tuple[int, ...]
    length: int
    timeout: float
    track: _Track
    knocked: tuple[Knocked, ...]  # its Knocked event of each outcome, made once, shared
    shift: int  # where its progress sits in the packed progress


def _address(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


_OUTCOMES = (Outcome.ADVANCED, Outcome.RESET, Outcome.TIMEOUT, Outcome.COMPLETED, Outcome.DUPLICATE)
_ADVANCED, _RESET, _TIMEOUT, _COMPLETED, _DUPLICATE = range(len(_OUTCOMES))
_R_UNAUTHORISED, _R_WRONG, _R_IGNORED = Reason.UNAUTHORISED, Reason.WRONG, Reason.IGNORED
_R_KNOCK, _R_DUPLICATE = Reason.KNOCK, Reason.DUPLICATE
_R_COMPLETED, _R_CLOSED, _R_SCANNER = Reason.COMPLETED, Reason.CLOSED, Reason.SCANNER
_DROP = Verdict.DROP

_First = tuple[Decision | None, int, tuple[int, ...]]

State = tuple[Any, ...]
"""A tracked source: ``(restarted_at, active, progress, started_0, ..., started_T-1)``.

One flat tuple a source, T being the number of tracks: when a sequence of it last
(re)started (its time to live counts from there); a bit per track in progress; how
many steps each track has made, packed in a few bits a track (a small int, which Python
shares rather than allocates); and when each track in progress started (0.0 for one
that is not, so no float object is kept alive for it). ``gatekeeper bench`` weighs a
tracked source: about 210-250 bytes with its address and its slot in the table."""


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
        self._knock_keys = frozenset(k for t in tracks for k in t.keys)
        protected: dict[int, list[tuple[int, bytes | None]]] = {}
        for i, door in enumerate(config.doors):
            host = door.host.packed if door.host is not None else None
            for step in door.opens:
                protected.setdefault(step.key, []).append((i, host))
        self._protected = {k: tuple(v) for k, v in protected.items()}
        # A source with no state: the decision by step, None for a knock step (_knock).
        self._stateless: dict[int, Decision | None] = dict.fromkeys(protected, _DROP_UNAUTHORISED)
        self._stateless.update(dict.fromkeys(self._knock_keys))
        # What _knock needs of each track, by track number.
        bits = max(1, max(((len(t.keys) - 1).bit_length() for t in tracks), default=1))
        self._mask = (1 << bits) - 1
        self._plan = tuple(
            _Plan(1 << n, n, t.keys, len(t.keys), t.timeout, t,
                  tuple(Knocked(t.door.name, o) for o in _OUTCOMES), n * bits)
            for n, t in enumerate(tracks)
        )
        self._visits: dict[int, tuple[_Plan, ...]] = {}  # track mask -> its plans, cached
        self._firsts: dict[int, _First] = {}  # track mask -> see _first_steps
        # A bit per track: the tracks a step starts, and, for each TCP flags byte, those
        # whose tcp_flags refuse it (required and forbidden flags are all in the low byte).
        starts: dict[int, int] = {}
        for n, t in enumerate(tracks):
            starts[t.keys[0]] = starts.get(t.keys[0], 0) | 1 << n
        self._starts = starts
        self._mismatch = tuple(
            sum(1 << n for n, t in enumerate(tracks) if not t.flags.matches(f)) for f in range(256)
        )
        self._fresh: State = (0.0, 0, 0, *([0.0] * len(tracks)))
        # The state table: source -> State, oldest (re)start first (a dict keeps the order
        # of insertion; a restart re-inserts). The engine's own timeout check is
        # authoritative; the table only collects the garbage, a second later, so a late
        # knock is still seen (and counted) as late.
        self._ttl = max((t.timeout for t in tracks), default=1.0) + 1.0
        self._max_sources = config.settings.max_sources
        # When full, this many of the oldest go at once: one pass over the table's head
        # instead of one a new source (deleted slots at the head make each pass longer).
        self._evict = max(1, self._max_sources // 64)
        self._state: dict[bytes, State] = {}
        self._grants: dict[bytes, dict[int, float]] = {}
        # Scan detection: source -> (window start, last probed key, distinct probes, locked
        # out until). A probe is a packet to a port that is no knock of any door.
        self._scans: dict[bytes, tuple[float, int, int, float]] = {}
        settings = config.settings
        self._scan_window = max((t.timeout for t in tracks), default=5.0)
        longest = max((len(t.keys) for t in tracks), default=1)
        self._scan_limit = settings.scan_limit if settings.scan_limit else longest + 3
        self._scan_lockout = float(settings.scan_lockout)

    # -- the hot path -------------------------------------------------------------------

    def decide(self, src: bytes, dst: bytes, proto: int, port: int, flags: int, now: float) -> Decision:
        """Verdict for one inbound packet that the kernel did not already decide.

        A decision carries a Granted or Revoked event only when its reason is COMPLETED
        or CLOSED (the worker relies on it); otherwise Knocked events at most.
        """
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
        if key not in self._knock_keys:
            self._probe(src, key, now)
        state = self._state.get(src)
        if state is None or now >= state[0] + self._ttl:  # (expired: as good as gone)
            decision = self._stateless.get(key, _DROP_WRONG)
            if decision is not None:
                return decision
            state = None
        return self._knock(src, key, proto, flags, now, state)

    def _probe(self, src: bytes, key: int, now: float) -> None:
        """Count a packet to a port that is no knock: more distinct ports than any door
        needs within the window locks the source out of completing a sequence."""
        scans = self._scans
        entry = scans.get(src)
        if entry is None or now - entry[0] > self._scan_window:
            locked = entry[3] if entry is not None else 0.0
            if entry is not None:
                del scans[src]  # re-inserted at the end: the table stays oldest first
            elif len(scans) >= self._max_sources:
                self._trim_scans(now)
            scans[src] = (now, key, 1, locked)
        elif key != entry[1]:
            count = entry[2] + 1
            locked = entry[3]
            if count > self._scan_limit and locked <= now:
                locked = now + self._scan_lockout
            scans[src] = (entry[0], key, count, locked)

    def _trim_scans(self, now: float) -> None:
        """The probe table is full: forget the oldest entries that lock nothing out."""
        scans = self._scans
        drop = [s for s, e in scans.items() if e[3] <= now][: self._evict]
        for src in drop or list(scans)[: self._evict]:
            del scans[src]

    def locked_out(self, src: bytes, now: float) -> bool:
        entry = self._scans.get(src)
        return entry is not None and entry[3] > now

    def _knock(
        self, src: bytes, key: int, proto: int, flags: int, now: float, state: State | None
    ) -> Decision:
        mismatch = self._mismatch[flags & 0xFF] if proto == TCP else 0
        # A track whose tcp_flags refuse the packet skips it; if any does, a packet that
        # is no knock for the other tracks is IGNORED rather than WRONG.
        reason = _R_UNAUTHORISED if key in self._protected else _R_IGNORED if mismatch else _R_WRONG
        # Only tracks in progress and tracks this step starts can move; in track order.
        todo = self._starts.get(key, 0) if state is None else state[1] | self._starts.get(key, 0)
        todo &= ~mismatch
        if not todo:
            return (_DROP, reason, ())  # nothing moves: the state stays as it is
        if state is None:
            decision, progress, slots = self._firsts.get(todo) or self._first_steps(todo)
            if decision is not None:  # a new source's first step: it starts these tracks
                self._insert(src, now, todo, progress, slots)
                return decision
        fresh = state is None
        stamp: Any = now  # one float object for every slot (compiled, each store would box anew)
        cur: list[Any] = list(self._fresh if state is None else state)
        active: int = cur[1]
        packed: int = cur[2]  # progress of track n: packed >> shift & mask
        mask = self._mask
        events: list[Event] = []
        restarted = False
        visits = self._visits.get(todo) or self._plans(todo)
        for bit, n, keys, length, timeout, track, knocked, shift in visits:
            progress = packed >> shift & mask
            if progress and now - cur[3 + n] > timeout:
                events.append(knocked[_TIMEOUT])
                progress = 0
            if key == keys[progress]:
                progress += 1
                if progress == 1:
                    cur[3 + n] = stamp
                    restarted = True
                if progress == length:
                    progress = 0
                    events.append(knocked[_COMPLETED])
                    done = self._complete(track, src, now)
                    events.append(done)
                    reason = (_R_CLOSED if track.closes
                              else _R_COMPLETED if done.__class__ is Granted else _R_SCANNER)
                else:
                    events.append(knocked[_ADVANCED])
                    if reason is not _R_COMPLETED and reason is not _R_CLOSED:
                        reason = _R_KNOCK
            elif progress and key == keys[progress - 1]:
                events.append(knocked[_DUPLICATE])
                if reason is _R_WRONG or reason is _R_IGNORED:
                    reason = _R_DUPLICATE
            elif progress and not track.door.ignore_wrong:
                events.append(knocked[_RESET])
                progress = 0
                if key == keys[0]:
                    progress = 1
                    cur[3 + n] = stamp
                    restarted = True
            packed = packed & ~(mask << shift) | progress << shift
            if progress:
                active |= bit
            else:
                active &= ~bit
                cur[3 + n] = 0.0  # keep no float alive for a track not in progress
        table = self._state
        if not active:
            if not fresh:
                del table[src]
        else:
            cur[1] = active
            cur[2] = packed
            if fresh or restarted:
                cur[0] = stamp  # (re)starts the entry's time to live: to the table's end
                if table.pop(src, None) is None and len(table) >= self._max_sources:
                    self._make_room(now)
            table[src] = tuple(cur)  # else in the same place: its time to live runs on
        return (_DROP, reason, tuple(events))

    def _first_steps(self, todo: int) -> _First:
        """For a new source whose step starts the tracks in ``todo``: the decision (each
        track ADVANCED, a KNOCK), their packed progress and the slots of their start
        times. The decision is None when one of them is a one-step sequence, which
        completes at once: _knock then takes the general way."""
        plans = tuple(plan for plan in self._plan if todo & plan.bit)
        first: _First = (None, 0, ())
        if all(plan.length > 1 for plan in plans):
            decision: Decision = (_DROP, _R_KNOCK, tuple(plan.knocked[_ADVANCED] for plan in plans))
            first = (decision, sum(1 << plan.shift for plan in plans), tuple(3 + plan.n for plan in plans))
        if len(self._firsts) < 4096:
            self._firsts[todo] = first
        return first

    def _insert(self, src: bytes, now: float, todo: int, packed: int, slots: tuple[int, ...]) -> None:
        """Track a new source that has just started the tracks in ``todo``."""
        cur: list[Any] = list(self._fresh)
        stamp: Any = now  # one float object for every slot (compiled, each store would box anew)
        cur[0], cur[1], cur[2] = stamp, todo, packed
        for slot in slots:
            cur[slot] = stamp
        table = self._state
        if table.pop(src, None) is None and len(table) >= self._max_sources:
            self._make_room(now)
        table[src] = tuple(cur)

    def _plans(self, todo: int) -> tuple[_Plan, ...]:
        """The plans of the tracks in ``todo``, in track order (cached for a few masks);
        as plain tuples, which CPython unpacks faster than named ones."""
        plans: tuple[Any, ...] = tuple(tuple(plan) for plan in self._plan if todo & plan.bit)
        if len(self._visits) < 4096:
            self._visits[todo] = plans
        return plans

    def _make_room(self, now: float) -> None:
        """The table is full: drop what has expired, else the oldest (re)started."""
        self._purge(now)
        table = self._state
        if len(table) >= self._max_sources:
            oldest = []
            for src in table:
                oldest.append(src)
                if len(oldest) >= self._evict:
                    break
            for src in oldest:
                del table[src]

    def _purge(self, now: float) -> None:
        """Remove every entry whose time to live has run out (they are at the head)."""
        table = self._state
        ttl = self._ttl
        expired = []
        for src, state in table.items():
            if now < state[0] + ttl:
                break
            expired.append(src)
        for src in expired:
            del table[src]

    def _complete(self, track: _Track, src: bytes, now: float) -> Event:
        door = track.door
        grants = self._grants.get(src)
        if track.closes:
            if grants is not None and grants.pop(track.door_index, None) is not None:
                if not grants:
                    del self._grants[src]
                return Revoked(door, _address(src), "closed")
            return Knocked(door.name, Outcome.NOTHING_TO_CLOSE)
        return self.grant(src, track.door_index, now)

    def grant(self, src: bytes, door_index: int, now: float) -> Granted | Knocked:
        """Grant door ``door_index`` to ``src`` for its ``open_for`` (an SPA packet or an
        encrypted or one-time sequence was accepted): Granted, or a LOCKED Knocked event
        when the source is locked out as a scanner. Not on the plain-knock hot path."""
        door = self.config.doors[door_index]
        if self.locked_out(src, now):
            return Knocked(door.name, Outcome.LOCKED)
        grants = self._grants.get(src)
        if grants is None:
            grants = self._grants[src] = {}
        renewed = door_index in grants and grants[door_index] > now
        expires = now + door.open_for
        grants[door_index] = expires
        return Granted(door, _address(src), expires, renewed)

    # -- time and state -----------------------------------------------------------------

    def tick(self, now: float) -> list[Revoked]:
        """Expire grants whose time is up; call about once a second."""
        self._now = now
        self._purge(now)
        window = self._scan_window
        for src in [s for s, e in self._scans.items() if now - e[0] > window and e[3] <= now]:
            del self._scans[src]
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
        """Sources part-way through a sequence (as of the last packet or tick)."""
        self._purge(self._now)
        return len(self._state)


__all__ = [
    "ICMP", "Decision", "Engine", "Event", "Granted", "Knocked", "Outcome", "Reason", "Revoked",
    "Verdict",
]
