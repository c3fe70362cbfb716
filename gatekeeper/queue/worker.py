"""The NFQUEUE worker: every queued packet gets exactly one verdict, inline.

read a batch -> for each packet: decode -> engine.decide -> (grant into the kernel set)
-> the batch's verdicts, in one system call. A grant is written to the kernel set
before the completing knock is verdicted, so the client's first SYN is accepted by the
kernel (and a SYN already queued behind the knock, in the same batch, is accepted by
the engine). Everything slower (logging, commands, expiry bookkeeping) belongs to the
supervisor, which hears of grants over a pipe and outlives workers.

NetfilterQueue binds and configures the queue; :mod:`gatekeeper.queue._nfq` then reads
up to ``[gatekeeper] batch`` packets a ``recvmmsg`` and sends their verdicts in one ``send``
(see "Speed work" in README.md). A packet left without a verdict is dropped, never accepted.

Compiled with mypyc (see "Compiled modules" in README.md for what that asks of this file).
"""

from __future__ import annotations

import ipaddress
import logging
import select
import time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from gatekeeper import messages as msg
from gatekeeper.daemon.onetime import mark_used
from gatekeeper.engine import Engine, Event, Granted, Knocked, Reason, Revoked, Verdict
from gatekeeper.engine import special_events as fx
from gatekeeper.engine.special import SpecialDoors, has_special
from gatekeeper.errors import GatekeeperError
from gatekeeper.metrics import BUCKETS_NS
from gatekeeper.metrics import KNOCK_OUTCOMES as OUTCOMES
from gatekeeper.model import DEFAULT_BATCH, Config, Door, Port
from gatekeeper.queue import gpg
from gatekeeper.queue.decode import decode, spa_payload
from gatekeeper.queue.refusals import RefusalLimit

log = logging.getLogger(__name__)

TICK_SECONDS = 0.5
# The socket must hold every packet the kernel queue may hold, or the kernel drops what
# does not fit (queue_user_dropped). Netlink charges a small queued packet 800-1000 bytes
# of receive buffer; the kernel doubles what is asked for, so 1 KiB a packet leaves room.
# NetfilterQueue's own default (for 1024 packets of up to 4 KiB) is the floor.
SOCK_BYTES_PER_PACKET = 1024
SOCK_MIN = 1024 * (4096 - 80 + 760 + 20) // 2
SOCK_MAX = 1 << 29


def socket_buffer(maxlen: int) -> int:
    """The receive buffer to ask for (root gets it, SO_RCVBUFFORCE) for a queue of ``maxlen``."""
    return min(SOCK_MAX, max(SOCK_MIN, maxlen * SOCK_BYTES_PER_PACKET))


# Packets a read takes at most, by default ([gatekeeper] batch). A packet's verdict
# waits for the rest of its batch, kernel work included (~4 us a packet), so this
# bounds latency under a backlog; with no backlog a read takes what is there.
BATCH = DEFAULT_BATCH
# Batches one wake-up drains before the worker looks at its other fds again (control,
# signals): a flood cannot keep a reload or a SIGTERM waiting (~1,000 packets, ~4 ms).
DRAIN_BATCHES = 256

# Opt-in timing for ``gatekeeper bench``: with this variable naming a directory, each
# worker writes every packet's read-to-verdict time (ns) to latency-<pid>.bin there
# when it stops. Unset (always, outside the bench): nothing is kept.
TIMING_ENV = "GATEKEEPER_BENCH_TIMING"
MAX_SAMPLES = 1 << 23

_ACCEPT = Verdict.ACCEPT
_MALFORMED, _ERROR = int(Reason.MALFORMED), int(Reason.ERROR)
# Grants and revocations come only with these reasons (see Engine.decide); other
# decisions carry Knocked events at most, which the worker has nothing to do for.
_COMPLETED, _CLOSED = Reason.COMPLETED, Reason.CLOSED


class Grants(Protocol):
    """The kernel grant sets (netfilter.grantset.GrantSets); ``steps`` None: all of the
    door's ``opens``."""

    def add(self, address: str, door: Door, seconds: float,
            steps: tuple[Port, ...] | None = None) -> int: ...
    def remove(self, address: str, door: Door, steps: tuple[Port, ...] | None = None) -> None: ...
    def add_nat(self, address: str, door: Door, seconds: float, step: Port, host: str,
                port: int) -> None: ...


Report = Callable[[msg.Message], None]


def _never_called(pkt: Any) -> None:
    """NetfilterQueue's callback: the worker reads the socket itself (_nfq.Batch)."""
    pkt.drop()


class Worker:
    def __init__(self, config: Config, grants: Grants, report: Report,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.engine = Engine(config)
        # SPA, encrypted and one-time doors; None (one attribute test a packet) without
        self.spa_counts: dict[tuple[str, str], int] = {}  # (door, stage): over reloads
        self.specials = (SpecialDoors(config, self.engine, self.spa_counts)
                         if has_special(config) else None)
        # [cluster]: gatekeeper.cluster.gate.ClusterGate (knocks and grants shared with other
        # gateways), set by worker_process; None (one attribute test a packet) without
        self.cluster: Any = None
        self._journals: dict[str, Any] = {}  # door -> replaylog.Journal (worker process only)
        self.wall = wall
        self.grants = grants
        self.report = report
        self.clock = clock
        self.counts = [0] * len(Reason)
        self._nfq: Any = None
        self._batch: Any = None  # gatekeeper.queue._nfq.Batch on the bound queue
        self._stopping = False
        self._next_tick = 0.0
        self.samples: array[int] | None = None  # set by the bench only: read-to-verdict ns
        self.metered = bool(config.metrics.listen)  # time every batch for the histogram
        self.report_stats = False  # the worker process turns it on: snapshots each tick
        self.hist = [0] * (len(BUCKETS_NS) + 1)
        self.hist_sum_ns = 0
        self.knocks: dict[Knocked, int] = {}
        self.refusals = RefusalLimit()  # which refused SPA packets get a log line

    # -- queue --------------------------------------------------------------------------

    def bind(self, queue: int, maxlen: int, batch: int = BATCH) -> None:
        from netfilterqueue import NetfilterQueue

        from gatekeeper.queue._nfq import Batch

        nfq = NetfilterQueue()
        try:
            nfq.bind(queue, _never_called, max_len=maxlen, sock_len=socket_buffer(maxlen))
        except OSError as exc:
            raise GatekeeperError(
                f"NFQUEUE {queue}: cannot bind ({exc}); another program (another gatekeeper?) "
                "may hold it: choose another [gatekeeper] queue, or stop that program"
            ) from None
        self._nfq = nfq
        self._batch = Batch(nfq.get_fd(), queue, batch)

    def unbind(self) -> None:
        if self._nfq is not None:
            self._batch = None
            self._nfq.unbind()
            self._nfq = None

    def stop(self) -> None:
        self._stopping = True

    def serve(self, extra: dict[int, Callable[[], None]] | None = None) -> None:
        """Verdict packets until :meth:`stop`; ``extra`` maps more fds to their handlers."""
        handlers = dict(extra or {})
        nfq_fd = self._nfq.get_fd()
        fds = [nfq_fd, *handlers]
        while not self._stopping:
            now = self.clock()
            if now >= self._next_tick:
                self.tick(now)
            ready, _, _ = select.select(fds, [], [], max(0.0, self._next_tick - self.clock()))
            for fd in ready:
                if fd == nfq_fd:
                    self.drain()
                else:
                    handlers[fd]()
                if self._stopping:
                    return

    def drain(self) -> None:
        """Read and verdict what is queued, up to :data:`DRAIN_BATCHES` batches."""
        batch = self._batch
        for _ in range(DRAIN_BATCHES):
            payloads: list[bytes] = batch.read()
            if not payloads:
                return
            start = time.perf_counter_ns()
            now = self.clock()
            verdicts = bytearray()  # should anything escape below: the whole batch is dropped
            try:
                verdicts = self.decide_batch(payloads, now)
            finally:
                batch.verdict(verdicts)
            if self.metered or self.samples is not None:
                self.record(len(payloads), time.perf_counter_ns() - start)
            if self._stopping:
                return
            if now >= self._next_tick:
                self.tick(now)

    def record(self, packets: int, elapsed_ns: int) -> None:
        """A batch's read-to-verdict time, which each of its ``packets`` waited."""
        if self.metered:
            self.hist[bisect_left(BUCKETS_NS, elapsed_ns)] += packets
            self.hist_sum_ns += elapsed_ns * packets
        samples = self.samples
        if samples is not None and len(samples) < MAX_SAMPLES:
            samples.extend([elapsed_ns] * packets)

    # -- the hot path -------------------------------------------------------------------

    def decide_batch(self, payloads: list[bytes], now: float) -> bytearray:
        """The verdicts of a read's packets: 1 accept, 0 drop."""
        verdicts = bytearray(len(payloads))
        for i, payload in enumerate(payloads):
            if self.on_packet(payload, now):
                verdicts[i] = 1
        return verdicts

    def on_packet(self, payload: bytes, now: float) -> bool:
        """Accept (True) or drop one packet (its IP header on): never raises."""
        try:
            facts = decode(payload)
            if facts is None:
                self.counts[_MALFORMED] += 1
                return False
            src, dst, proto, port, flags = facts
            verdict, reason, events = self.decide(payload, src, dst, proto, port, flags, now)
            if events:
                knocks = self.knocks
                for event in events:  # Knocked events are shared objects: cheap keys
                    if event.__class__ is Knocked:
                        knocks[event] = knocks.get(event, 0) + 1
                if reason is _COMPLETED or reason is _CLOSED:
                    self.apply(events, now)
            self.counts[reason] += 1
            return verdict is _ACCEPT
        except Exception:
            self.counts[_ERROR] += 1
            log.exception("worker failed on a packet; dropped it")
            return False

    def decide(self, payload: bytes, src: bytes, dst: bytes, proto: int, port: int, flags: int,
               now: float) -> tuple[Verdict, Reason, tuple[Any, ...]]:
        """The decision for one decoded packet, effects not applied: the special doors, the
        cluster or the engine. :meth:`on_packet` and the offline replay
        (``gatekeeper/replay/``) both decide through here."""
        specials = self.specials
        if specials is not None and proto << 16 | port in specials.keys:
            return self._special(specials, payload, src, dst, proto, port, flags, now)
        if self.cluster is not None:
            return self.cluster.decide(src, dst, proto, port, flags, now)  # type: ignore[no-any-return]
        return self.engine.decide(src, dst, proto, port, flags, now)

    def _special(self, specials: SpecialDoors, packet: bytes, src: bytes, dst: bytes, proto: int,
                 port: int, flags: int, now: float) -> tuple[Verdict, Reason, tuple[Any, ...]]:
        """A packet to an SPA door's key (spa/transports.py), an encrypted range or a
        one-time sequence's port; one the special doors leave (not SPA-sized on a loose
        key) is decided as any packet."""
        payload = b""
        if proto << 16 | port in specials.spa_keys:
            payload = spa_payload(packet) or b""
        decision = specials.handle(src, dst, proto, port, flags, payload, now, self.wall())
        if decision is None:
            if self.cluster is not None:
                return self.cluster.decide(src, dst, proto, port, flags, now)  # type: ignore[no-any-return]
            return self.engine.decide(src, dst, proto, port, flags, now)
        if isinstance(decision, fx.GpgQuery):  # GnuPG's work (bounded: gatekeeper/queue/gpg.py)
            spa = decision.door.spa
            assert spa is not None and spa.gpg is not None
            run, seconds = gpg.decrypt(spa.gpg, decision.sealed.message)
            decision = specials.gpg_answer(decision, run, seconds)
        if isinstance(decision, fx.ReplayQuery):  # [cluster]: did another gateway see it first?
            fresh = (None if self.cluster is None
                     else self.cluster.replay_fresh(decision.door, decision.key, decision.ttl))
            decision = specials.answer(decision, fresh)
        if specials.seen:
            self._journal(specials.seen)
        events = decision[2]
        if events and events[0].__class__ is fx.SpaRefused:
            self._refused(events[0], now)
        return decision

    def _refused(self, event: fx.SpaRefused, now: float) -> None:
        """Report a refused SPA packet for the log, within :class:`RefusalLimit`."""
        withheld = self.refusals.admit(event.source, now)
        if withheld is not None:
            address = str(ipaddress.ip_address(event.source))
            self.report(msg.Refused(event.door, address, event.stage, withheld))

    def _journal(self, seen: list[fx.ReplaySeen]) -> None:
        """Append new replay entries to their doors' journals (with a state_dir)."""
        for entry in seen:
            journal = self._journals.get(entry.door)
            if journal is not None:
                journal(entry.key, entry.expires)
        seen.clear()

    def snapshot(self) -> msg.Stats:
        """Everything counted since this worker started (the supervisor keeps the sums)."""
        knocks: dict[str, list[int]] = {}
        for event, n in self.knocks.items():
            knocks.setdefault(event.door, [0] * len(OUTCOMES))[OUTCOMES.index(event.outcome)] += n
        spa: dict[str, dict[str, int]] = {}
        for (door, stage), n in self.spa_counts.items():
            spa.setdefault(door, {})[stage] = n
        cluster = self.cluster.snapshot() if self.cluster is not None else None
        return msg.Stats(self.counts, self.hist, self.hist_sum_ns, knocks, spa,
                         self.engine.guards, self.engine.tracked_sources, cluster)

    # -- effects ------------------------------------------------------------------------

    def apply(self, events: tuple[Event, ...] | tuple[fx.SpecialEvent, ...], now: float) -> None:
        unmarked = self._mark_used(events)
        for event in events:
            if isinstance(event, Granted):
                if event.door.name not in unmarked:
                    self._grant(event, now)
            elif isinstance(event, Revoked):
                self._revoke(event, now)
            elif isinstance(event, fx.CommandAsked):
                self.report(msg.Command(event.door, event.address, event.command))
            elif isinstance(event, fx.NatGranted):
                self._nat_grant(event, now)

    def _mark_used(self, events: tuple[Event, ...] | tuple[fx.SpecialEvent, ...]) -> set[str]:
        """Mark each one-time line used in its file before its grant is given (a restart
        must never revive it); the doors whose line could not be marked, which grant
        nothing: their grant is taken back from the engine, and the supervisor says so."""
        unmarked: set[str] = set()
        for event in events:
            if not isinstance(event, fx.SequenceUsed):
                continue
            error = ""
            try:
                if not mark_used(event.path, event.line, event.steps):
                    error = "the line is no longer in the file as it was read"
            except OSError as exc:
                error = f"{exc.strerror or exc} ({exc.filename or event.path})"
            if error:
                unmarked.add(event.door)
                for granted in events:
                    if isinstance(granted, Granted) and granted.door.name == event.door:
                        index = self.engine.config.doors.index(granted.door)
                        self.engine.revoke(ipaddress.ip_address(granted.address).packed, index)
            self.report(msg.Used(event.door, event.path, event.line, event.steps, error))
        return unmarked

    def _grant(self, event: Granted, now: float) -> None:
        door = event.door
        error = None
        try:
            self.grants.add(event.address, door, event.expires - now, event.steps)
        except Exception as exc:  # the engine still admits the address from the queue
            error = str(exc)
        self.report(msg.Granted(door.name, event.address, [str(s) for s in event.steps], error,
                                seconds=event.expires - now, renewed=event.renewed))
        if self.cluster is not None:
            self.cluster.share(event, now)  # an SPA/encrypted/one-time grant: to the others

    def _nat_grant(self, event: fx.NatGranted, now: float) -> None:
        """DNAT the gateway port to the target for the address (and accept it forwarded),
        before the SPA packet's verdict; the kernel sets time it out. Not shared with a
        cluster's other gateways, whose rules may have no such target."""
        granted = event.granted
        step = granted.steps[0]
        error = None
        try:
            self.grants.add_nat(granted.address, granted.door, granted.expires - now, step,
                                event.host, event.port)
        except Exception as exc:  # nothing is admitted: the engine holds no NAT grant
            error = str(exc)
        target = f"[{event.host}]" if ":" in event.host else event.host
        self.report(msg.Granted(granted.door.name, granted.address, [f"{step}->{target}:{event.port}"],
                                error, seconds=granted.expires - now, renewed=False))

    def _revoke(self, event: Revoked, now: float) -> None:
        if event.cause != "closed":
            return  # expiry: the kernel entry times out by itself; the supervisor keeps time
        door = event.door
        error = None
        try:
            self.grants.remove(event.address, door, event.steps)
            for other, step, expires in event.kept:  # still granted by another door
                self.grants.add(event.address, other, expires - now, (step,))
        except Exception as exc:
            error = str(exc)
        self.report(msg.Revoked(door.name, event.address, [str(s) for s in event.steps], error,
                                cause=event.cause))

    def tick(self, now: float) -> None:
        self._next_tick = now + TICK_SECONDS
        self.engine.tick(now)
        if self.specials is not None:
            self.specials.tick(now)
        if self.cluster is not None:
            self.cluster.tick(now)  # is the store still there, with the scripts? (every second)
        if self.report_stats:
            self.report(self.snapshot())

    def adopt(self, entries: Iterable[tuple[str, str, int, Port | None]]) -> int:
        """Take over grants found in the kernel set, an entry a port: (address, door,
        seconds left, port; None: all of the door's ports). Returns how many entries."""
        now = self.clock()
        return sum(
            1 for address, door, seconds, step in entries
            if seconds > 0 and self.engine.restore_grant(
                address, door, now + seconds, None if step is None else (step,))
        )

    def forget(self, address: str, door_name: str) -> None:
        """A grant closed on another gateway: the engine stops admitting it from the queue
        (the supervisor's mirror took it out of the kernel set)."""
        for index, door in enumerate(self.engine.config.doors):
            if door.name == door_name:
                self.engine.revoke(ipaddress.ip_address(address).packed, index)

    def journal_replays(self, state_dir: str) -> int:
        """Give every SPA/encrypted door's replay cache a file under ``state_dir``: what
        it held before a restart is taken back, and new entries are appended. Returns
        how many entries were taken back (for caches that had no journal yet)."""
        from gatekeeper.daemon import replaylog

        if not state_dir or self.specials is None:
            return 0
        restored = 0
        for door, cache in self.specials.replay.items():
            if not cache.restored:
                restored += cache.restore(replaylog.load(state_dir, door), self.wall())
                if door not in self._journals:
                    self._journals[door] = replaylog.Journal(state_dir, door)
        return restored

    def reload(self, config: Config) -> None:
        """Swap in a new engine; running grants carry over to doors that still exist."""
        now = self.clock()
        old = self.engine
        self.engine = Engine(config)
        self.engine.guards = old.guards  # counters: they carry on across reloads
        for address, door, step, expires in old.grants():
            if expires > now:
                self.engine.restore_grant(address, door, expires, (step,))
        specials = (SpecialDoors(config, self.engine, self.spa_counts)
                    if has_special(config) else None)
        if specials is not None and self.specials is not None:
            specials.adopt(self.specials)
        self.specials = specials
        if self.cluster is not None:
            self.cluster.rebind(config, self.engine)
            self.share_replays()

    def share_replays(self) -> None:
        """[cluster] A message new to a replay cache here is asked of the shared store."""
        if self.specials is not None:
            self.specials.shared_replay = self.cluster is not None
