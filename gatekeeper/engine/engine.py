"""The pure knock engine: packet facts and a clock in, a verdict and events out.

It never touches a socket, netfilter, metrics or logging, so it runs the same in the
NFQUEUE worker, in an offline replay and in a unit test with a fake clock.

Compiled with mypyc at install time (setup.py; ``gatekeeper.native`` says whether it is):
keep it mypy-strict, never patch its classes or functions at run time (compiled callers
would not see it), give class-level constants ``Final``; see "Compiled modules" in README.md.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final, NamedTuple

from gatekeeper.model import ICMP, TCP, Config, Door, Port, TcpFlags


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
    """``steps``: the ports of the door whose grant ended (not always all of them)."""

    door: Door
    address: str
    cause: str  # "expired" or "closed"
    steps: tuple[Port, ...]


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
_DROP_REFUSED: Decision = (Verdict.DROP, Reason.REFUSED, ())


class Guard(IntEnum):
    """What the engine's defences did (counted in ``Engine.guards``, by this index)."""

    LOCKOUT_SCAN = 0  # a source probed more ports than any door needs
    LOCKOUT_SOURCE = 1  # a source failed more sequences than failure_limit
    LOCKOUT_PREFIX = 2  # a /24 or /64 failed more sequences than prefix_failure_limit
    REFUSED_QUOTA = 3  # a new source not tracked: its prefix is at prefix_quota
    REFUSED_FULL = 4  # a new source not tracked: the table is full of sources two steps in
    EVICTED = 5  # a source one step in dropped to make room for a new one


def prefix(src: bytes) -> bytes:
    """The /24 of an IPv4 address, the /64 of an IPv6 one (packed): the unit of quotas."""
    return src[:3] if len(src) == 4 else src[:8]


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


# A grant is held per door and port: the grant table's key of door ``i`` and step key
# ``k`` (``proto << 16 | port``, 24 bits at most) is ``i << _SLOT | k``.
_SLOT = 24


def _slot_step(slot: int) -> Port:
    return Port(slot >> 16 & 0xFF, slot & 0xFFFF)


_OUTCOMES = (Outcome.ADVANCED, Outcome.RESET, Outcome.TIMEOUT, Outcome.COMPLETED, Outcome.DUPLICATE)
_ADVANCED, _RESET, _TIMEOUT, _COMPLETED, _DUPLICATE = range(len(_OUTCOMES))
_R_UNAUTHORISED, _R_WRONG, _R_IGNORED = Reason.UNAUTHORISED, Reason.WRONG, Reason.IGNORED
_R_KNOCK, _R_DUPLICATE = Reason.KNOCK, Reason.DUPLICATE
_R_COMPLETED, _R_CLOSED, _R_SCANNER = Reason.COMPLETED, Reason.CLOSED, Reason.SCANNER
_R_LOCKED = Reason.LOCKED
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
        # step key -> (grant slot, host) of each door that opens it: see _SLOT. A door
        # without ``host`` opens the gateway itself: the only forwarded packets queued are
        # those to a door's host (render.py), so a packet to one of these addresses is
        # forwarded and no gateway door admits it.
        protected: dict[int, list[tuple[int, bytes | None]]] = {}
        for i, door in enumerate(config.doors):
            host = door.host.packed if door.host is not None else None
            for step in door.opens:
                protected.setdefault(step.key, []).append((i << _SLOT | step.key, host))
        self._protected = {k: tuple(v) for k, v in protected.items()}
        self._hosts = frozenset(d.host.packed for d in config.doors if d.host is not None)
        # A source with no state: the decision by step, None for a knock step (_knock).
        self._stateless: dict[int, Decision | None] = dict.fromkeys(protected, _DROP_UNAUTHORISED)
        self._stateless.update(dict.fromkeys(self._knock_keys))
        # What _knock needs of each track, by track number.
        bits = max(1, max(((len(t.keys) - 1).bit_length() for t in tracks), default=1))
        self._mask = (1 << bits) - 1
        # The progress bits above the lowest of every track: none set = one step at most.
        self._past_one = sum((self._mask & ~1) << n * bits for n in range(len(tracks)))
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
        # When full, this many of the oldest one-step entries go at once: one pass over the
        # table's head instead of one a new source (deleted slots make each pass longer).
        self._evict = max(1, self._max_sources // 64)
        self._state: dict[bytes, State] = {}
        # Sources in the table by /24 or /64, kept only with a quota (it costs a new source
        # a dict update, and the removal of one another).
        self._quota = config.settings.prefix_quota
        self._prefixes: dict[bytes, int] = {}
        self._no_room_until = 0.0
        self._next_purge = 0.0
        # source -> grant slot (door and port, see _SLOT) -> expiry
        self._grants: dict[bytes, dict[int, float]] = {}
        # Scan detection: source -> (window start, last probed key, distinct probes, locked
        # out until). A probe is a packet to a port that is no knock of any door.
        self._scans: dict[bytes, tuple[float, int, int, float]] = {}
        settings = config.settings
        self._scan_window = max((t.timeout for t in tracks), default=5.0)
        longest = max((len(t.keys) for t in tracks), default=1)
        self._scan_limit = settings.scan_limit if settings.scan_limit else longest + 3
        self._scan_lockout = float(settings.scan_lockout)
        # Failed sequences (a reset or a timeout of a sequence in progress), by source and by
        # prefix: key -> (window start, failures, locked out until).
        self._failures: dict[bytes, tuple[float, int, float]] = {}
        self._prefix_failures: dict[bytes, tuple[float, int, float]] = {}
        self._fail_limit = settings.failure_limit
        self._prefix_fail_limit = settings.prefix_failure_limit
        self._fail_window = float(settings.failure_lockout)
        self.guards = [0] * len(Guard)

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
            for slot, host in self._protected.get(key, ()):
                expires = grants.get(slot)
                if expires is not None and expires > now and self._admits(host, dst):
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
                self._trim(scans, now, 3)
            scans[src] = (now, key, 1, locked)
        elif key != entry[1]:
            count = entry[2] + 1
            locked = entry[3]
            if count > self._scan_limit and locked <= now:
                locked = now + self._scan_lockout
                self.guards[Guard.LOCKOUT_SCAN] += 1
            scans[src] = (entry[0], key, count, locked)

    def _trim(self, table: dict[bytes, Any], now: float, locked: int) -> None:
        """A probe or failure table is full: forget its oldest entries that lock nothing
        out (entry[locked] is when a lockout ends), else just its oldest."""
        drop = [k for k, e in table.items() if e[locked] <= now][: self._evict]
        for key in drop or list(table)[: self._evict]:
            del table[key]

    def locked_out(self, src: bytes, now: float) -> bool:
        """Whether ``src`` may not complete a sequence now: a scanner, or too many failures."""
        return self._scan_locked(src, now) or self._failure_locked(src, now)

    def doors_opening(self, key: int, dst: bytes) -> tuple[int, ...]:
        """The doors (indexes) whose grant would admit a packet to ``key`` at ``dst``."""
        return tuple(slot >> _SLOT for slot, host in self._protected.get(key, ())
                     if self._admits(host, dst))

    def _admits(self, host: bytes | None, dst: bytes) -> bool:
        """Whether a grant of a door with ``host`` (None: the gateway) admits a packet to ``dst``."""
        return dst not in self._hosts if host is None else host == dst

    def lock_reason(self, src: bytes, now: float) -> Reason:
        """Why a completed sequence of a locked-out ``src`` made no grant."""
        return _R_SCANNER if self._scan_locked(src, now) else _R_LOCKED

    def _scan_locked(self, src: bytes, now: float) -> bool:
        entry = self._scans.get(src)
        return entry is not None and entry[3] > now

    def _failure_locked(self, src: bytes, now: float) -> bool:
        entry = self._failures.get(src)
        if entry is not None and entry[2] > now:
            return True
        entry = self._prefix_failures.get(prefix(src))
        return entry is not None and entry[2] > now

    def count_failure(self, src: bytes, now: float) -> None:
        """Count a failed sequence of ``src`` (one a packet, however many tracks it broke)
        against the source's and its prefix's limits."""
        if self._fail_limit:
            self._count_failure(self._failures, src, self._fail_limit, Guard.LOCKOUT_SOURCE, now)
        if self._prefix_fail_limit:
            self._count_failure(self._prefix_failures, prefix(src), self._prefix_fail_limit,
                                Guard.LOCKOUT_PREFIX, now)

    def _count_failure(self, table: dict[bytes, tuple[float, int, float]], key: bytes, limit: int,
                       guard: Guard, now: float) -> None:
        entry = table.get(key)
        if entry is None or now - entry[0] > self._fail_window:
            locked = entry[2] if entry is not None else 0.0
            if entry is not None:
                del table[key]  # re-inserted at the end: the table stays oldest first
            elif len(table) >= self._max_sources:
                self._trim(table, now, 2)
            table[key] = (now, 1, locked)
            return
        count, locked = entry[1] + 1, entry[2]
        if count > limit and locked <= now:
            locked = now + self._fail_window
            self.guards[guard] += 1
        table[key] = (entry[0], count, locked)

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
                if self._insert(src, now, todo, progress, slots):
                    return decision
                return _DROP_REFUSED
        fresh = state is None
        stamp: Any = now  # one float object for every slot (compiled, each store would box anew)
        cur: list[Any] = list(self._fresh if state is None else state)
        active: int = cur[1]
        packed: int = cur[2]  # progress of track n: packed >> shift & mask
        mask = self._mask
        events: list[Event] = []
        restarted = failed = False
        visits = self._visits.get(todo) or self._plans(todo)
        for bit, n, keys, length, timeout, track, knocked, shift in visits:
            progress = packed >> shift & mask
            if progress and now - cur[3 + n] > timeout:
                events.append(knocked[_TIMEOUT])
                progress = 0
                failed = True
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
                              else _R_COMPLETED if done.__class__ is Granted
                              else self.lock_reason(src, now))
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
                failed = True
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
        if failed:
            self.count_failure(src, now)
        table = self._state
        if not active:
            if not fresh:
                del table[src]
                self._release(src)
        else:
            cur[1] = active
            cur[2] = packed
            if fresh or restarted:
                cur[0] = stamp  # (re)starts the entry's time to live: to the table's end
                if table.pop(src, None) is None and not self._admit(src, now):
                    if reason is _R_KNOCK:
                        return _DROP_REFUSED
                    return (_DROP, reason, tuple(events))  # a grant or revocation stands
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

    def _insert(self, src: bytes, now: float, todo: int, packed: int, slots: tuple[int, ...]) -> bool:
        """Track a new source that has just started the tracks in ``todo``; False if it
        was refused (see :meth:`_admit`)."""
        cur: list[Any] = list(self._fresh)
        stamp: Any = now  # one float object for every slot (compiled, each store would box anew)
        cur[0], cur[1], cur[2] = stamp, todo, packed
        for slot in slots:
            cur[slot] = stamp
        table = self._state
        if table.pop(src, None) is None and not self._admit(src, now):
            return False
        table[src] = tuple(cur)
        return True

    def _admit(self, src: bytes, now: float) -> bool:
        """Room for a source that is not in the table: within its prefix's quota, and a
        free slot (see :meth:`_make_room`). Counts what it refuses."""
        key = b""
        held = 0
        if self._quota:
            key = prefix(src)
            held = self._prefixes.get(key, 0)
            if held >= self._quota and now >= self._next_purge:
                # Expired entries of the prefix may still count: purge, though not for every
                # packet of a flood (a pass starts by skipping the table's deleted slots).
                self._next_purge = now + 0.1
                self._purge(now)
                held = self._prefixes.get(key, 0)
            if held >= self._quota:
                self.guards[Guard.REFUSED_QUOTA] += 1
                return False
        if len(self._state) >= self._max_sources and not self._make_room(now):
            self.guards[Guard.REFUSED_FULL] += 1
            return False
        if self._quota:
            self._prefixes[key] = held + 1
        return True

    def _release(self, src: bytes) -> None:
        """``src`` has left the table: its prefix holds one source fewer."""
        if self._quota:
            key = prefix(src)
            held = self._prefixes[key] - 1
            if held:
                self._prefixes[key] = held
            else:
                del self._prefixes[key]

    def _plans(self, todo: int) -> tuple[_Plan, ...]:
        """The plans of the tracks in ``todo``, in track order (cached for a few masks);
        as plain tuples, which CPython unpacks faster than named ones."""
        plans: tuple[Any, ...] = tuple(tuple(plan) for plan in self._plan if todo & plan.bit)
        if len(self._visits) < 4096:
            self._visits[todo] = plans
        return plans

    def _make_room(self, now: float) -> bool:
        """The table is full: drop what has expired, else the oldest (re)started entries
        that are only one step into their sequences - never one further along, which a
        flood of spoofed first knocks cannot imitate. False if there is still no room."""
        self._purge(now)
        table = self._state
        if len(table) < self._max_sources:
            return True
        if now < self._no_room_until:
            return False
        past_one = self._past_one
        victims = []
        for looked, (src, state) in enumerate(table.items()):
            if not state[2] & past_one:
                victims.append(src)
                if len(victims) >= self._evict:
                    break
            if looked >= 4 * self._evict:
                break
        if not victims:
            # The head of the table is all sources two steps in or more: refuse new ones
            # for a moment rather than search the whole table for each.
            self._no_room_until = now + 0.1
            return False
        for src in victims:
            del table[src]
            self._release(src)
        self.guards[Guard.EVICTED] += len(victims)
        return True

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
            self._release(src)

    def _complete(self, track: _Track, src: bytes, now: float) -> Event:
        door = track.door
        if track.closes:
            steps = self.revoke(src, track.door_index)
            if steps:
                return Revoked(door, _address(src), "closed", steps)
            return Knocked(door.name, Outcome.NOTHING_TO_CLOSE)
        return self.grant(src, track.door_index, now)

    def grant(self, src: bytes, door_index: int, now: float, steps: Iterable[Port] | None = None,
              open_for: float = 0) -> Granted | Knocked:
        """Grant ``src`` the ports ``steps`` of door ``door_index`` (None: all of its
        ``opens``; ports it does not open are left out, and asking for none of its ports
        is a ValueError) for the door's ``open_for``, or for ``open_for`` seconds when
        that is positive and shorter (a request may shorten a grant, never lengthen it).
        Returns Granted, or a LOCKED Knocked event when the source is locked out (a
        scanner, or too many failed sequences). A port granted again gets the new
        expiry; others of the door keep theirs.
        Called when a knock sequence completes, and for SPA packets and encrypted and
        one-time sequences: never for a packet that does not complete a grant."""
        door = self.config.doors[door_index]
        if steps is None:
            granted = door.opens
        else:
            wanted = set(steps)
            granted = tuple(s for s in door.opens if s in wanted)
            if not granted:
                raise ValueError(f"door {door.name} opens none of {sorted(map(str, wanted))}")
        if self.locked_out(src, now):
            return Knocked(door.name, Outcome.LOCKED)
        grants = self._grants.get(src)
        if grants is None:
            grants = self._grants[src] = {}
        renewed = any(slot >> _SLOT == door_index and expires > now for slot, expires in grants.items())
        seconds = min(open_for, door.open_for) if open_for > 0 else door.open_for
        expires = now + seconds
        base = door_index << _SLOT
        for step in granted:
            grants[base | step.key] = expires
        return Granted(door, _address(src), expires, renewed, granted)

    def revoke(self, src: bytes, door_index: int) -> tuple[Port, ...]:
        """Forget every port of door ``door_index`` granted to ``src`` (a close sequence,
        here or on another gateway); returns the ports that were granted (none: nothing
        to close)."""
        grants = self._grants.get(src)
        if grants is None:
            return ()
        steps = tuple(_slot_step(slot) for slot in grants if slot >> _SLOT == door_index)
        for step in steps:
            del grants[door_index << _SLOT | step.key]
        if not grants:
            del self._grants[src]
        return steps

    # -- time and state -----------------------------------------------------------------

    def tick(self, now: float) -> list[Revoked]:
        """Expire grants whose time is up; call about once a second."""
        self._now = now
        self._purge(now)
        window = self._scan_window
        for src in [s for s, e in self._scans.items() if now - e[0] > window and e[3] <= now]:
            del self._scans[src]
        window = self._fail_window
        for table in (self._failures, self._prefix_failures):
            for key in [k for k, e in table.items() if now - e[0] > window and e[2] <= now]:
                del table[key]
        expired: list[Revoked] = []
        doors = self.config.doors
        for src in [s for s, g in self._grants.items() if min(g.values()) <= now]:
            grants = self._grants[src]
            ended: dict[int, list[Port]] = {}  # door index -> its ports that expired
            for slot in [slot for slot, expires in grants.items() if expires <= now]:
                del grants[slot]
                ended.setdefault(slot >> _SLOT, []).append(_slot_step(slot))
            address = _address(src)
            for door_index, steps in ended.items():
                expired.append(Revoked(doors[door_index], address, "expired", tuple(steps)))
            if not grants:
                del self._grants[src]
        return expired

    def restore_grant(self, address: str, door_name: str, expires: float,
                      steps: Iterable[Port] | None = None) -> bool:
        """Adopt a grant found in the kernel set (after a restart) or kept over a reload:
        ports ``steps`` of the door (None: all of its ``opens``; ports the door no longer
        opens are left out). False if there is no such door or it opens none of them."""
        for i, door in enumerate(self.config.doors):
            if door.name == door_name:
                wanted = None if steps is None else set(steps)
                keys = [s.key for s in door.opens if wanted is None or s in wanted]
                if not keys:
                    return False
                src = ipaddress.ip_address(address).packed
                grants = self._grants.setdefault(src, {})
                for key in keys:
                    slot = i << _SLOT | key
                    grants[slot] = max(expires, grants.get(slot, 0.0))
                return True
        return False

    def grants(self) -> Iterator[tuple[str, str, Port, float]]:
        """Active grants, a port at a time: (address, door name, port, expiry)."""
        doors = self.config.doors
        for src, grants in self._grants.items():
            address = _address(src)
            for slot, expires in grants.items():
                yield address, doors[slot >> _SLOT].name, _slot_step(slot), expires

    @property
    def tracked_sources(self) -> int:
        """Sources part-way through a sequence (as of the last packet or tick)."""
        self._purge(self._now)
        return len(self._state)


__all__ = [
    "ICMP", "Decision", "Engine", "Event", "Granted", "Guard", "Knocked", "Outcome", "Reason", "Revoked",
    "Verdict",
]
