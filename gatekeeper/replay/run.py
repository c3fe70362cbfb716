"""A capture through the worker's own decision step, offline, on the capture's clock.

Each IP packet of a :class:`~gatekeeper.replay.capture.Capture` is first judged as the
guarded gateway's rules would (``netfilter/render.py``): packets the kernel never queues
are counted and go no further. Those are

* **outbound**: the frame says it was sent by the host (Linux cooked captures), or its
  source is one of the gateway's addresses. Those are ``--gateway`` addresses, the doors'
  ``host`` addresses, and, without ``--gateway``, every address a packet to a knock port
  (any door's step, SPA port, encrypted range, one-time port) was sent to, learnt from
  that packet on (an outbound packet before the first knock is then taken as inbound);
* **established**: a TCP or UDP packet of a flow (addresses, ports, protocol) that the
  gateway opened, that was accepted, or that went to a public port (conntrack's
  ESTABLISHED); the flows kept are bounded (:data:`MAX_FLOWS`, the oldest forgotten);
* **public**: the first packet to one of ``[gatekeeper] public``;
* **neighbour discovery**: ICMPv6 types the rules return (133-137, 130-132, 143).

Everything else is queued: decoded by ``queue/decode.py`` and decided by
:meth:`Worker.decide <gatekeeper.queue.worker.Worker.decide>`, the very step the worker
takes (special doors, then the engine), with the capture's timestamp as both clocks. Its
effects are not applied: no kernel set, no command, no journal (replay caches start empty
and stay in memory), no one-time file marked. The engine's tick runs every 0.5 s of capture
time, as the worker's does, and reports grants that expired.
"""

from __future__ import annotations

import gc
import ipaddress
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from gatekeeper.engine import Granted, Guard, Knocked, Reason, Revoked, Verdict
from gatekeeper.engine.special import CommandAsked, NatGranted, SequenceUsed
from gatekeeper.model import ICMP, PROTO_NAMES, TCP, UDP, Config, Door, Port
from gatekeeper.queue.decode import decode
from gatekeeper.queue.worker import TICK_SECONDS, Worker
from gatekeeper.replay.capture import Capture

MAX_FLOWS = 1 << 20
MAX_NOTES = 10  # lines of one kind of bad input; the rest are counted
_ND = frozenset((133, 134, 135, 136, 137, 130, 131, 132, 143))
_ICMPV6 = 58
_ACCEPT = Verdict.ACCEPT
_LOCKOUTS = (Guard.LOCKOUT_SCAN, Guard.LOCKOUT_SOURCE, Guard.LOCKOUT_PREFIX)
_REFUSALS = (Guard.REFUSED_QUOTA, Guard.REFUSED_FULL)
NOT_QUEUED = ("outbound", "established", "public", "neighbour discovery")


class Moment(NamedTuple):
    """One line of a source's timeline: ``what`` is knock, grant, revoke, lockout,
    refused, spa, one-time or open (a grant still running when the capture ends)."""

    time: float
    source: str
    door: str
    what: str
    fields: dict[str, Any]


@dataclass
class Result:
    """What a replay found: timelines by source (first seen first) and the counts."""

    first: float = 0.0
    last: float = 0.0
    frames: int = 0
    not_ip: int = 0
    packets: int = 0  # IP packets replayed (inside --since/--until)
    outside: int = 0  # IP packets outside --since/--until
    not_queued: dict[str, int] = field(default_factory=lambda: dict.fromkeys(NOT_QUEUED, 0))
    malformed: int = 0
    errors: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    sources: int = 0  # addresses that sent queued packets
    grants: dict[str, int] = field(default_factory=dict)  # by door
    lockouts: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    spa: dict[str, dict[str, int]] = field(default_factory=dict)
    timelines: dict[str, list[Moment]] = field(default_factory=dict)
    gateway: list[str] = field(default_factory=list)
    learnt: bool = False
    truncated: str = ""
    seconds: float = 0.0  # wall time of the replay loop


class _NoKernel:
    """The worker's grant sets in a replay: nothing is written anywhere."""

    def add(self, address: str, door: Door, seconds: float,
            steps: tuple[Port, ...] | None = None) -> int:
        return 0

    def remove(self, address: str, door: Door, steps: tuple[Port, ...] | None = None) -> None:
        return None

    def add_nat(self, address: str, door: Door, seconds: float, step: Port, host: str,
                port: int) -> None:
        return None


def _ignore(message: Any) -> None:
    return None


def clock(ts: float) -> str:
    """A capture time, UTC, to the millisecond."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _address(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


class Replay:
    """One replay of one config; :meth:`run` once."""

    def __init__(self, config: Config, gateway: Iterable[str] = (),
                 sources: Iterable[str] = (), door: str = "",
                 since: float | None = None, until: float | None = None,
                 note: Callable[[str], None] = _ignore) -> None:
        self.config = config
        self.now = 0.0
        self.worker = Worker(config, _NoKernel(), _ignore, clock=self._clock, wall=self._clock)
        self.gateway = {ipaddress.ip_address(a).packed for a in gateway}
        self.learn = not self.gateway
        self.gateway |= {d.host.packed for d in config.doors if d.host is not None}
        self.sources = [ipaddress.ip_network(s, strict=False) for s in sources]
        self.door = door
        self.since = since
        self.until = until
        self.note = note
        self.public = frozenset(p.key for p in config.settings.public)
        specials = self.worker.specials
        self.special_keys = specials.keys if specials is not None else frozenset()
        self.knock_keys = frozenset(s.key for d in config.doors
                                    for s in (*d.sequence, *d.close_sequence)) | self.special_keys
        self.result = Result()
        self._names: dict[bytes, str] = {}
        self._shown: dict[str, list[Moment] | None] = {}  # source -> timeline; None: not shown
        self._seen: set[bytes] = set()

    def _clock(self) -> float:
        return self.now

    # -- the loop -----------------------------------------------------------------------

    def run(self, capture: Capture) -> Result:
        """Replay ``capture`` (once): the result, also kept in :attr:`result`."""
        collecting = gc.isenabled()
        gc.disable()  # the loop makes no cycles; its moments would only make the collector crawl
        try:
            return self._run(capture)
        finally:
            if collecting:
                gc.enable()

    def _run(self, capture: Capture) -> Result:
        res = self.result
        worker = self.worker
        decide = worker.decide
        counts = [0] * len(Reason)
        not_queued = [0] * len(NOT_QUEUED)
        gateway, learn, knock_keys, public = self.gateway, self.learn, self.knock_keys, self.public
        special_keys = self.special_keys
        flows = Flows()
        guards = worker.engine.guards
        last_guards = list(guards)
        since = -1e300 if self.since is None else self.since
        until = 1e300 if self.until is None else self.until
        next_tick = 0.0
        first = None
        now = 0.0
        n = 0
        started = time.perf_counter()
        for now, ip, outgoing in capture.packets():
            n += 1
            if first is None:
                first = now
            if now < since or now > until:
                res.outside += 1
                continue
            if now >= next_tick:
                next_tick = now + TICK_SECONDS
                self._tick(now)
            facts = decode(ip)
            if facts is None:
                self._malformed(n + capture.not_ip, len(ip), now)
                continue
            src, dst, proto, port, flags = facts
            key = proto << 16 | port
            if proto in (TCP, UDP):
                if outgoing or src in gateway:
                    not_queued[0] += 1
                    flows.add((dst, port, src, _sport(ip), proto))  # its reply: established
                    continue
                if src in flows.sources and (src, _sport(ip), dst, port, proto) in flows:
                    not_queued[1] += 1
                    continue
                if key in public:
                    not_queued[2] += 1
                    flows.add((src, _sport(ip), dst, port, proto))
                    continue
            elif outgoing or src in gateway:
                not_queued[0] += 1
                continue
            elif port < 0 and proto == ICMP and len(src) == 16 and ip[6] == _ICMPV6 and ip[40] in _ND:
                not_queued[3] += 1
                continue
            if learn and key in knock_keys and dst not in gateway:
                gateway.add(dst)
            try:
                spa_before = None
                if key in special_keys:  # the SPA and sequence checks read the wall clock
                    self.now = now
                    spa_before = dict(worker.spa_counts)
                verdict, reason, events = decide(ip, src, dst, proto, port, flags, now)
            except Exception as exc:
                self._failed(n + capture.not_ip, now, exc)
                continue
            counts[reason] += 1
            self._seen.add(src)
            if verdict is _ACCEPT and proto in (TCP, UDP):
                flows.add((src, _sport(ip), dst, port, proto))
            if spa_before is not None and spa_before != worker.spa_counts:
                self._stages(now, src, spa_before, worker.spa_counts)
            if events:
                self._events(now, src, proto, port, reason, events)
            if guards != last_guards:
                self._guards(now, src, last_guards, guards)
                last_guards = list(guards)
        res.seconds = time.perf_counter() - started
        self._finish(capture, counts, not_queued, first, now)
        return res

    def _malformed(self, number: int, size: int, now: float) -> None:
        self.result.malformed += 1
        if self.result.malformed <= MAX_NOTES:
            self.note(f"packet {number} ({size} bytes at {clock(now)}): the decoder refused it "
                      "(no whole IPv4/IPv6 header and transport header)")

    def _failed(self, number: int, now: float, exc: Exception) -> None:
        self.result.errors += 1
        if self.result.errors <= MAX_NOTES:
            self.note(f"packet {number} at {clock(now)}: the decision failed "
                      f"({exc.__class__.__name__}: {exc}); the worker would drop it")

    def _tick(self, now: float) -> None:
        for revoked in self.worker.engine.tick(now):
            self._moment(now, revoked.address, revoked.door.name, "revoke",
                         ports=[str(s) for s in revoked.steps], cause=revoked.cause)
        if self.worker.specials is not None:
            self.worker.specials.tick(now)

    def _finish(self, capture: Capture, counts: list[int], not_queued: list[int],
                first: float | None, last: float) -> None:
        res = self.result
        self._tick(last)
        for address, door, step, expires in sorted(self.worker.engine.grants()):
            self._moment(last, address, door, "open", ports=[str(step)], until=expires)
        res.first, res.last = first or 0.0, last
        res.timelines = {source: moments for source, moments in self._shown.items() if moments}
        res.frames, res.not_ip, res.truncated = capture.frames, capture.not_ip, capture.truncated
        res.packets = res.frames - res.not_ip - res.outside
        res.not_queued = dict(zip(NOT_QUEUED, not_queued, strict=True))
        res.reasons = {r.name.lower(): counts[r] for r in Reason if counts[r]}
        res.sources = len(self._seen)
        res.spa = {}
        for (door, stage), count in sorted(self.worker.spa_counts.items()):
            res.spa.setdefault(door, {})[stage] = count
        res.gateway = sorted(map(_address, self.gateway))
        res.learnt = self.learn
        if capture.truncated:
            self.note(f"{capture.path}: {capture.truncated}; the result below stands for what was read")
        for kind, count in (("malformed", res.malformed), ("failed", res.errors)):
            if count > MAX_NOTES:
                self.note(f"{capture.path}: {count - MAX_NOTES} more {kind} packets (counted below)")

    # -- what mattered ------------------------------------------------------------------

    def _name(self, packed: bytes) -> str:
        name = self._names.get(packed)
        if name is None:
            name = self._names[packed] = _address(packed)
        return name

    def _timeline(self, source: str) -> list[Moment] | None:
        """The timeline ``source``'s moments go to; None when --source leaves it out."""
        shown = self._shown
        if source in shown:
            return shown[source]
        timeline: list[Moment] | None = [] if not self.sources or any(
            ipaddress.ip_address(source) in net for net in self.sources
            if net.version == (6 if ":" in source else 4)) else None
        shown[source] = timeline
        return timeline

    def _moment(self, now: float, source: str, door: str, what: str, **fields: Any) -> None:
        if what == "grant":
            self.result.grants[door] = self.result.grants.get(door, 0) + 1
        timeline = self._timeline(source)
        if timeline is not None and (not self.door or not door or door == self.door):
            timeline.append(Moment(now, source, door, what, fields))

    def _events(self, now: float, src: bytes, proto: int, port: int, reason: int,
                events: tuple[Any, ...]) -> None:
        source = self._names.get(src) or self._name(src)
        step = f"{port}:{PROTO_NAMES.get(proto, proto)}"
        for event in events:
            kind = event.__class__
            if kind is Knocked:  # most moments: the short way
                outcome = event.outcome
                if outcome == "locked":
                    self._moment(now, source, event.door, "knock", port=step, outcome=outcome,
                                 locked=Reason(reason).name.lower())
                    continue
                shown = self._shown
                timeline = shown[source] if source in shown else self._timeline(source)
                if timeline is not None and (not self.door or event.door == self.door):
                    timeline.append(Moment(now, source, event.door, "knock",
                                           {"port": step, "outcome": outcome}))
            elif kind is Granted:
                self._moment(now, source, event.door.name, "grant", address=event.address,
                             ports=[str(s) for s in event.steps], seconds=event.expires - now,
                             renewed=event.renewed)
            elif kind is Revoked:
                self._moment(now, source, event.door.name, "revoke", address=event.address,
                             ports=[str(s) for s in event.steps], cause=event.cause)
            elif kind is SequenceUsed:
                self._moment(now, source, event.door, "one-time", line=event.line, path=event.path,
                             sequence=event.steps)
            elif kind is CommandAsked:
                self._moment(now, source, event.door, "command", address=event.address,
                             command=event.command)
            elif kind is NatGranted:  # fwknop -N: the port DNATed to the target
                granted = event.granted
                self._moment(now, source, granted.door.name, "grant", address=granted.address,
                             ports=[str(s) for s in granted.steps], seconds=granted.expires - now,
                             renewed=False, nat=f"{event.host}:{event.port}")

    def _guards(self, now: float, src: bytes, before: list[int], after: list[int]) -> None:
        res = self.result
        settings = self.config.settings
        for guard in _LOCKOUTS:
            if after[guard] > before[guard]:
                cause = guard.name.lower().removeprefix("lockout_")
                res.lockouts[cause] = res.lockouts.get(cause, 0) + 1
                seconds = settings.scan_lockout if guard is Guard.LOCKOUT_SCAN else settings.failure_lockout
                self._moment(now, self._name(src), "", "lockout", cause=cause, seconds=seconds)
        for guard in _REFUSALS:
            if after[guard] > before[guard]:
                cause = guard.name.lower().removeprefix("refused_")
                res.refused[cause] = res.refused.get(cause, 0) + 1
                self._moment(now, self._name(src), "", "refused", cause=cause)
        evicted = after[Guard.EVICTED] - before[Guard.EVICTED]
        if evicted:
            res.refused["evicted"] = res.refused.get("evicted", 0) + evicted

    def _stages(self, now: float, src: bytes, before: dict[tuple[str, str], int],
                after: dict[tuple[str, str], int]) -> None:
        for (door, stage), count in after.items():
            if count != before.get((door, stage), 0):
                self._moment(now, self._name(src), door, "spa", stage=stage)


def _sport(ip: bytes) -> int:
    """A TCP or UDP packet's source port (IPv4 options skipped; IPv6: after the fixed header)."""
    off = (ip[0] & 15) << 2 if ip[0] >> 4 == 4 else 40
    return ip[off] << 8 | ip[off + 1] if len(ip) > off + 1 else -1


Flow = tuple[bytes, int, bytes, int, int]  # (client, its port, gateway or host, port, proto)


class Flows(dict[Flow, None]):
    """Flows conntrack would call ESTABLISHED, at most :data:`MAX_FLOWS` (the oldest go),
    and the sources that have any (most queued packets come from none: one set lookup)."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: dict[bytes, int] = {}

    def add(self, flow: Flow) -> None:
        if flow in self:
            return
        if len(self) >= MAX_FLOWS:
            old = next(iter(self))
            del self[old]
            left = self.sources[old[0]] - 1
            if left:
                self.sources[old[0]] = left
            else:
                del self.sources[old[0]]
        self[flow] = None
        self.sources[flow[0]] = self.sources.get(flow[0], 0) + 1
