"""The pure knock engine: packet facts and a clock in, a verdict and events out.

It never touches a socket, a file, netfilter, metrics, logging or a store, not even
through a callback, so it runs the same in the NFQUEUE worker, in an offline replay and in
a unit test with a fake clock: what is to be done comes back as events (a grant to write
into the kernel set, the ports a close leaves open). Its seams: ``events.py`` (what it
says), ``limits.py`` (the lockouts' windowed counter), ``grants.py`` (the grant table).

Compiled with mypyc (``gatekeeper.native``), as are the three above: mypy-strict, never
patched at run time, class constants ``Final`` (README.md, "Compiled modules").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from gatekeeper.engine.events import (
    Decision,
    Event,
    Granted,
    Guard,
    Knocked,
    Outcome,
    Reason,
    Revoked,
    Verdict,
)
from gatekeeper.engine.grants import SLOT as _SLOT
from gatekeeper.engine.grants import GrantTable
from gatekeeper.engine.limits import WindowCounter
from gatekeeper.model import ICMP, TCP, Config, Door, Port, TcpFlags

_ACCEPT_GRANTED: Decision = (Verdict.ACCEPT, Reason.GRANTED, ())
_DROP_UNAUTHORISED: Decision = (Verdict.DROP, Reason.UNAUTHORISED, ())
_DROP_WRONG: Decision = (Verdict.DROP, Reason.WRONG, ())
_DROP_REFUSED: Decision = (Verdict.DROP, Reason.REFUSED, ())


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
        self.table = GrantTable(config)
        self._grants = self.table.by_source  # read directly by decide()
        # Scan detection: distinct probes by source (a probe is a packet to a port that is no
        # knock of any door); failed sequences (a reset or a timeout of one in progress), by
        # source and by prefix. See limits.py.
        settings = config.settings
        longest = max((len(t.keys) for t in tracks), default=1)
        self._scans = WindowCounter(max((t.timeout for t in tracks), default=5.0),
                                    settings.scan_limit or longest + 3, float(settings.scan_lockout),
                                    self._max_sources, self._evict)
        fail = float(settings.failure_lockout)
        self._failures = WindowCounter(fail, settings.failure_limit, fail, self._max_sources, self._evict)
        self._prefix_failures = WindowCounter(fail, settings.prefix_failure_limit, fail,
                                              self._max_sources, self._evict)
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
        if key not in self._knock_keys and self._scans.hit(src, now, key):
            self.guards[Guard.LOCKOUT_SCAN] += 1  # more distinct ports than any door needs
        state = self._state.get(src)
        if state is None or now >= state[0] + self._ttl:  # (expired: as good as gone)
            decision = self._stateless.get(key, _DROP_WRONG)
            if decision is not None:
                return decision
            state = None
        return self._knock(src, key, proto, flags, now, state)

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
        return self._scans.locked(src, now)

    def _failure_locked(self, src: bytes, now: float) -> bool:
        return self._failures.locked(src, now) or self._prefix_failures.locked(prefix(src), now)

    def count_failure(self, src: bytes, now: float) -> None:
        """Count a failed sequence of ``src`` (one a packet, however many tracks it broke)
        against the source's and its prefix's limits."""
        if self._failures.limit and self._failures.hit(src, now):
            self.guards[Guard.LOCKOUT_SOURCE] += 1
        if self._prefix_failures.limit and self._prefix_failures.hit(prefix(src), now):
            self.guards[Guard.LOCKOUT_PREFIX] += 1

    def _knock(self, src: bytes, key: int, proto: int, flags: int, now: float,
               state: State | None) -> Decision:
        mismatch = self._mismatch[flags & 0xFF] if proto == TCP else 0
        # A track whose tcp_flags refuse the packet skips it; if any does, a packet that is no
        # knock for the other tracks is IGNORED rather than WRONG.
        reason = _R_UNAUTHORISED if key in self._protected else _R_IGNORED if mismatch else _R_WRONG
        # Only tracks in progress and tracks this step starts can move; in track order.
        starts = self._starts.get(key, 0)
        todo = (starts if state is None else state[1] | starts) & ~mismatch
        if not todo:
            return (_DROP, reason, ())  # nothing moves: the state stays as it is
        if state is None:
            decision, progress, slots = self._firsts.get(todo) or self._first_steps(todo)
            if decision is not None:  # a new source's first step: it starts these tracks
                return decision if self._insert(src, now, todo, progress, slots) else _DROP_REFUSED
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
            cur[1], cur[2] = active, packed
            if fresh or restarted:
                cur[0] = stamp  # (re)starts the entry's time to live: to the table's end
                if table.pop(src, None) is None and not self._admit(src, now):  # refused; a grant stands
                    return _DROP_REFUSED if reason is _R_KNOCK else (_DROP, reason, tuple(events))
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
            steps = self.table.revoke(src, track.door_index)
            if steps:
                return self.table.closed(src, door, steps)
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
        return self.table.grant(src, door_index, now, steps, open_for, self.locked_out(src, now))

    def revoke(self, src: bytes, door_index: int) -> tuple[Port, ...]:
        """Forget every port of door ``door_index`` granted to ``src`` (a close sequence,
        here or on another gateway); returns the ports that were granted (none: nothing
        to close)."""
        return self.table.revoke(src, door_index)

    def closed(self, src: bytes, door: Door, steps: tuple[Port, ...]) -> Revoked:
        """The Revoked event of a close of ``steps`` of ``door`` (already revoked): with
        the ports of them that other doors still grant ``src``."""
        return self.table.closed(src, door, steps)

    # -- time and state -----------------------------------------------------------------

    def tick(self, now: float) -> list[Revoked]:
        """Expire grants whose time is up; call about once a second."""
        self._now = now
        self._purge(now)
        self._scans.expire(now)
        self._failures.expire(now)
        self._prefix_failures.expire(now)
        return self.table.expire(now)

    def restore_grant(self, address: str, door_name: str, expires: float,
                      steps: Iterable[Port] | None = None) -> bool:
        """Adopt a grant found in the kernel set (after a restart) or kept over a reload:
        ports ``steps`` of the door (None: all of its ``opens``; ports the door no longer
        opens are left out). False if there is no such door or it opens none of them."""
        return self.table.restore(address, door_name, expires, steps)

    def grants(self) -> Iterator[tuple[str, str, Port, float]]:
        """Active grants, a port at a time: (address, door name, port, expiry)."""
        return self.table.entries()

    @property
    def tracked_sources(self) -> int:
        """Sources part-way through a sequence (as of the last packet or tick)."""
        self._purge(self._now)
        return len(self._state)


__all__ = [
    "ICMP", "Decision", "Engine", "Event", "Granted", "Guard", "Knocked", "Outcome", "Reason", "Revoked",
    "Verdict",
]
