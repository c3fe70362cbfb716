"""The worker's side of ``[cluster]``: knocks run on the shared store, inline.

Only two kinds of packet consult the store: a packet to a knock port (the knock script,
one round trip, which also makes and publishes the grant when the sequence completes)
and a first packet to a protected port from a source with no grant here (did another
gateway grant it? its mirror may not have landed yet). Everything else is verdicted by
the local engine as on a single gateway. A call that fails or takes longer than
``timeout_ms`` opens a circuit breaker: for :data:`BREAKER_SECONDS` no packet waits on
the store, knocks take their door's ``cluster_fallback`` and protected ports stay shut
to anyone without a grant in the kernel set.

A worker is warm before it takes a knock (:meth:`ClusterGate.warm`: connected, scripts
loaded, so a knock is one ``EVALSHA`` on an open connection and reaches the store in the
order it was sent): before it reports ready, and after the store was lost, before knocks
go to the store again; its tick asks every :data:`CHECK_SECONDS` whether the store still
holds the scripts, so an idle worker finds a restarted store by itself. A call that
finds its connection dead is retried once at once, on a new one, before it counts as a
failure. What the store answers is parsed strictly (``store.ascii_int``), and a grant
found there lasts at most its door's ``open_for``.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from redis.exceptions import ConnectionError as DeadConnection

from gatekeeper.cluster.store import Keys, ascii_int, connect, grant_seconds, script
from gatekeeper.engine import Decision, Engine, Event, Granted, Reason, Verdict
from gatekeeper.engine.shared import SharedKnocks, Step
from gatekeeper.metrics import BUCKETS_NS
from gatekeeper.model import Config, Door

log = logging.getLogger("gatekeeper")

BREAKER_SECONDS = 1.0  # after a failed call, no call for this long
CHECK_SECONDS = 1.0  # a worker's tick asks the store this often whether it holds the scripts
NEGATIVE_SECONDS = 0.25  # a source the store had no grant for is not asked again for this long
NEGATIVE_MAX = 65536
LOOKUPS_PER_SECOND = 2000.0  # a SYN flood from spoofed sources asks the store at most this often
_ACCEPT_GRANTED: Decision = (Verdict.ACCEPT, Reason.GRANTED, ())
_DROP_DOWN: Decision = (Verdict.DROP, Reason.ERROR, ())  # a knock the store could not take
_UNAUTHORISED = Reason.UNAUTHORISED


class BadAnswer(ValueError):
    """The store answered what none of the scripts returns."""


def node_name(supervisor_pid: int) -> str:
    """This gateway in published messages (its own are not mirrored back to it)."""
    return f"{socket.gethostname()}:{supervisor_pid}"


class ClusterGate:
    def __init__(self, config: Config, engine: Engine, node: str,
                 apply: Callable[[tuple[Event, ...], float], None], client: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        assert config.cluster is not None
        self.cluster = config.cluster
        self.keys = Keys(self.cluster.prefix)
        self.client = client if client is not None else connect(
            self.cluster, self.cluster.timeout_ms / 1000, name="gatekeeper-worker")
        self._scripts = [self.client.register_script(script(name))
                         for name in ("knock.lua", "publish.lua", "replay.lua")]
        self._knock, self._publish, self._replay = self._scripts
        self.shas: list[str] = [s.sha for s in self._scripts]
        self.node = node
        self.apply = apply
        self.clock = clock
        self.rebind(config, engine)
        self.open_until = 0.0  # circuit breaker: open (no calls) until then
        self.up = True
        self.errors = 0
        self.retries = 0  # calls retried at once on a new connection
        self.bad = 0  # answers that did not parse (a grant key with no expiry, a wrong type)
        self._next_check = 0.0
        self.fallbacks = {"closed": 0, "local": 0}
        self.lookups = 0
        self.hist = [0] * (len(BUCKETS_NS) + 1)
        self.hist_sum_ns = 0
        self._negative: dict[bytes, float] = {}
        self._found: Granted | None = None  # the last grant found in the store (not re-shared)
        self._tokens = LOOKUPS_PER_SECOND
        self._refilled = 0.0

    def rebind(self, config: Config, engine: Engine) -> None:
        """A reload: the new engine and doors (the connection stays)."""
        self.config = config
        self.engine = engine
        self.shared = SharedKnocks(engine)
        self.knock_keys = self.shared.knock_keys

    # -- the hot path -------------------------------------------------------------------

    def decide(self, src: bytes, dst: bytes, proto: int, port: int, flags: int,
               now: float) -> Decision:
        key = proto << 16 | port
        if port >= 0 and key in self.knock_keys:
            step = self.shared.step(src, key, proto, flags, now)
            if step.__class__ is not Step:
                return step  # type: ignore[return-value]
            assert isinstance(step, Step)
            if not self._usable(now):
                return self._fallback(step, src, dst, proto, port, flags, now)
            try:
                outcomes = self._run(step)
            except Exception as exc:
                self._failed(exc, now)
                return self._fallback(step, src, dst, proto, port, flags, now)
            return self.shared.result(step, outcomes, now)
        decision = self.engine.decide(src, dst, proto, port, flags, now)
        if decision[1] is _UNAUTHORISED and now >= self.open_until:
            return self._lookup(src, dst, key, now) or decision
        return decision

    def _run(self, step: Step) -> list[int]:
        keys = self.keys
        address = step.address
        names: list[str] = []
        args: list[str] = [str(step.key), "1" if step.locked else "0", keys.channel,
                           f"{self.node}|{address}"]
        for track in step.tracks:
            names.append(keys.progress(address, track.ident))
            door = track.args[4]
            names.extend(keys.grant(address, door, port) for port in track.opens)
            args.extend(track.args)
        start = time.perf_counter_ns()
        answer = self._call(self._knock, keys=names, args=args)
        self._timed(start)
        outcomes = [ascii_int(o) for o in answer] if isinstance(answer, list) else []
        if len(outcomes) != len(step.tracks) or None in outcomes:
            raise BadAnswer(f"the knock script answered {str(answer)[:100]!r}")
        return outcomes  # type: ignore[return-value]

    def _timed(self, start: int) -> None:
        elapsed = time.perf_counter_ns() - start
        self.hist[bisect_left(BUCKETS_NS, elapsed)] += 1
        self.hist_sum_ns += elapsed
        self._answered()

    def _answered(self) -> None:
        if not self.up:
            self.up = True
            log.warning("cluster: the store %s answers again; knocks are shared again",
                        self.cluster.where())

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn`` on the store. A dead connection (the store restarted or failed over, a
        middlebox forgot it) is retried once at once, on a new one, before it counts as a
        failure; a timeout is not (it cost timeout_ms already, and the call may have run)."""
        try:
            return fn(*args, **kwargs)
        except DeadConnection:
            self.retries += 1
            return fn(*args, **kwargs)

    # -- warm: connected, scripts loaded ------------------------------------------------

    def warm(self, now: float) -> bool:
        """Connect and load the scripts: before the worker reports ready, and again after
        the store was lost, before a knock goes to it. Bounded by timeout_ms a call (the
        connection, then one pipelined round trip); False if the store did not answer:
        the breaker opens (logged) and knocks take their door's cluster_fallback."""
        self._next_check = now + CHECK_SECONDS
        try:
            self._call(self._load)
        except Exception as exc:
            self._failed(exc, now)
            return False
        self._answered()
        return True

    def _load(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        for s in self._scripts:
            pipe.script_load(s.script)
        if pipe.execute() != self.shas:
            raise BadAnswer("the store loaded the scripts under other digests")

    def _usable(self, now: float) -> bool:
        """May a packet wait on the store now? Not while the breaker is open; after it,
        only once warm again."""
        return now >= self.open_until and (self.up or self.warm(now))

    def tick(self, now: float) -> None:
        """The worker's tick: every CHECK_SECONDS, does the store hold the scripts (one
        round trip)? An idle worker finds a dead connection or a restarted store here,
        not on a knock, and loads them again; after an outage it warms up here as soon
        as the breaker's pause is over."""
        if now < self._next_check or now < self.open_until:
            return
        self._next_check = now + CHECK_SECONDS
        if not self.up:
            self.warm(now)
            return
        try:
            if self._call(self.client.script_exists, *self.shas) != [True] * len(self.shas):
                self._load()
        except Exception as exc:
            self._failed(exc, now)

    def _fallback(self, step: Step, src: bytes, dst: bytes, proto: int, port: int, flags: int,
                  now: float) -> Decision:
        if step.fallback_local:
            self.fallbacks["local"] += 1
            return self.engine.decide(src, dst, proto, port, flags, now)
        self.fallbacks["closed"] += 1
        return _DROP_DOWN

    def _failed(self, exc: Exception, now: float) -> None:
        self.errors += 1
        if isinstance(exc, BadAnswer):
            self.bad += 1
        self.open_until = now + BREAKER_SECONDS
        if self.up:
            self.up = False
            log.error("cluster: the store %s failed (%s: %s); grants already made keep working, "
                      "protected ports stay shut to everyone else, knocks take their door's "
                      "cluster_fallback until it answers again", self.cluster.where(),
                      type(exc).__name__, self.cluster.redact(str(exc)))

    def _lookup(self, src: bytes, dst: bytes, key: int, now: float) -> Decision | None:
        """A first packet to a protected port: did another gateway grant it?"""
        doors = self.shared.lookup(key, dst)
        if not doors:
            return None
        negative = self._negative
        until = negative.get(src)
        if until is not None and until > now:
            return None
        self._tokens = min(LOOKUPS_PER_SECOND,
                           self._tokens + (now - self._refilled) * LOOKUPS_PER_SECOND)
        self._refilled = now
        if self._tokens < 1.0:
            return None
        self._tokens -= 1.0
        if not (self.up or self.warm(now)):
            return None
        self.lookups += 1
        address = self.shared.step_address(src)
        port = self.shared.port(key)
        name = str(port)
        door_list = self.config.doors
        start = time.perf_counter_ns()
        # only this packet's port: another of the door may not be granted
        keys = [self.keys.grant(address, door_list[i].name, name) for i in doors]
        try:
            ttls = self._call(self._pttls, keys)
        except Exception as exc:
            self._failed(exc, now)
            return None
        self._timed(start)
        for door_index, ttl in zip(doors, ttls, strict=True):
            ms = ascii_int(ttl)
            if ms is None or ms == -1:  # (-1: a grant key without expiry: none we set)
                self.bad += 1
                continue
            time_left = grant_seconds(door_list[door_index], ms)  # at most the door's open_for
            if time_left is not None:
                found = self._found = self.shared.found(src, door_index, time_left, now, (port,))
                self.apply((found,), now)
                return _ACCEPT_GRANTED
        if len(negative) >= NEGATIVE_MAX:
            negative.clear()
        negative[src] = now + NEGATIVE_SECONDS
        return None

    def _pttls(self, keys: list[str]) -> list[Any]:
        if len(keys) == 1:
            return [self.client.pttl(keys[0])]
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.pttl(key)
        return list(pipe.execute())

    # -- grants made here by other doors, shared replay checks ---------------------------

    def share(self, event: Granted, now: float) -> None:
        """Publish a grant that an SPA, encrypted or one-time door made here, of the ports
        it granted (a plain knock's grant was made and published by the knock script
        itself)."""
        if event.door.kind == "sequence" or event is self._found or not self._usable(now):
            return
        ms = max(1, round((event.expires - now) * 1000))
        door = event.door.name
        ports = [str(s) for s in event.steps]  # the ports granted now, not the whole door
        start = time.perf_counter_ns()
        try:
            self._call(self._publish, keys=[self.keys.grant(event.address, door, p) for p in ports],
                       args=[self.keys.channel, f"{self.node}|{event.address}", door, str(ms),
                             ",".join(ports)])
        except Exception as exc:
            self._failed(exc, self.clock())
            return
        self._timed(start)

    def first_use(self, door: Door, digest: str, seconds: float) -> bool | None:
        """Shared replay check: True if no gateway saw ``digest`` before (now it is
        remembered for ``seconds``), False if one did, None if the store did not answer."""
        now = self.clock()
        if not self._usable(now):
            return None
        start = time.perf_counter_ns()
        try:
            fresh = ascii_int(self._call(self._replay, keys=[self.keys.replay(door.name, digest)],
                                         args=[str(max(1, round(seconds * 1000)))]))
            if fresh not in (0, 1):
                raise BadAnswer(f"the replay script answered {fresh!r}")
        except Exception as exc:
            self._failed(exc, now)
            return None
        self._timed(start)
        return fresh == 1

    def replay_fresh(self, door: Door, key: bytes, ttl: float) -> bool | None:
        """Shared replay check of a message new here (a ReplayQuery of the special doors):
        True if no gateway saw it before, False if one did, None if the store did not answer."""
        return self.first_use(door, hashlib.sha256(key).hexdigest()[:40], ttl)

    def snapshot(self) -> dict[str, Any]:
        return {"hist": self.hist, "hist_sum_ns": self.hist_sum_ns, "errors": self.errors,
                "fallbacks": self.fallbacks, "lookups": self.lookups, "up": self.up,
                "bad": self.bad}
