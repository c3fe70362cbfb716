"""Prometheus metrics, served by the supervisor, aggregated over every worker.

Workers never touch prometheus-client on the hot path: they count into plain lists and
send a snapshot to the supervisor every half second. The supervisor keeps the last
snapshot of each live worker and folds a dead worker's last snapshot into a retired
total, so every counter stays monotonic across restarts. Queue depth and kernel drops
are read from /proc/net/netfilter/nfnetlink_queue at scrape time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gatekeeper import __version__
from gatekeeper.daemon.commands import COMMANDS
from gatekeeper.engine import Guard, Outcome, Reason
from gatekeeper.model import CLUSTER_FALLBACKS
from gatekeeper.netfilter import procfs
from gatekeeper.netfilter.procfs import PROC_QUEUES

# Verdict latency buckets (seconds): microseconds, with a boundary exactly at 100 µs.
BUCKETS = (0.000005, 0.00001, 0.000025, 0.00005, 0.000075, 0.0001, 0.00025, 0.0005, 0.001,
           0.005, 0.025, 0.1)
BUCKETS_NS = tuple(int(b * 1e9) for b in BUCKETS)
KNOCK_OUTCOMES = (Outcome.ADVANCED, Outcome.RESET, Outcome.TIMEOUT, Outcome.COMPLETED,
                  Outcome.DUPLICATE, Outcome.NOTHING_TO_CLOSE, Outcome.LOCKED)
LOCKOUT_CAUSES = {Guard.LOCKOUT_SCAN: "scan", Guard.LOCKOUT_SOURCE: "source_failures",
                  Guard.LOCKOUT_PREFIX: "prefix_failures"}
REFUSED_CAUSES = {Guard.REFUSED_QUOTA: "prefix_quota", Guard.REFUSED_FULL: "table_full"}
CLUSTER_STATES = ("off", "up", "down")
REASON_LABELS = [(("accept" if r is Reason.GRANTED else "drop"), r.name.lower()) for r in Reason]


@dataclass
class Snapshot:
    """What one worker has counted since it started."""

    counts: list[int] = field(default_factory=lambda: [0] * len(Reason))
    hist: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    hist_sum_ns: int = 0
    knocks: dict[tuple[str, str], int] = field(default_factory=dict)
    spa: dict[tuple[str, str], int] = field(default_factory=dict)  # (door, stage)
    guards: list[int] = field(default_factory=lambda: [0] * len(Guard))  # engine defences
    tracked: int = 0  # sources part-way through a sequence (a level, not a count)
    # [cluster]: the store's round trips on the hot path, failed calls, fallbacks by mode
    cluster_hist: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    cluster_sum_ns: int = 0
    cluster_errors: int = 0
    cluster_fallbacks: dict[str, int] = field(default_factory=dict)
    cluster_workers_up: int = 0  # live workers whose last call to the store succeeded
    cluster_bad: int = 0  # answers of the store that did not parse

    def add(self, other: Snapshot) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.hist = [a + b for a, b in zip(self.hist, other.hist, strict=True)]
        self.hist_sum_ns += other.hist_sum_ns
        for key, n in other.knocks.items():
            self.knocks[key] = self.knocks.get(key, 0) + n
        for key, n in other.spa.items():
            self.spa[key] = self.spa.get(key, 0) + n
        self.guards = [a + b for a, b in zip(self.guards, other.guards, strict=True)]
        self.cluster_hist = [a + b for a, b in zip(self.cluster_hist, other.cluster_hist, strict=True)]
        self.cluster_sum_ns += other.cluster_sum_ns
        self.cluster_errors += other.cluster_errors
        for mode, n in other.cluster_fallbacks.items():
            self.cluster_fallbacks[mode] = self.cluster_fallbacks.get(mode, 0) + n
        self.cluster_workers_up += other.cluster_workers_up
        self.cluster_bad += other.cluster_bad

    @classmethod
    def from_message(cls, msg: dict[str, Any]) -> Snapshot:
        knocks = {(door, outcome): n for door, counts in msg["knocks"].items()
                  for outcome, n in zip(KNOCK_OUTCOMES, counts, strict=True) if n}
        spa = {(door, stage): int(n) for door, stages in msg.get("spa", {}).items()
               for stage, n in stages.items()}
        guards = [int(n) for n in msg.get("guards", ())] or [0] * len(Guard)
        snap = cls(list(msg["counts"]), list(msg["hist"]), int(msg["hist_sum_ns"]), knocks, spa,
                   guards, int(msg.get("tracked", 0)))
        cluster = msg.get("cluster")
        if cluster:
            snap.cluster_hist = list(cluster["hist"])
            snap.cluster_sum_ns = int(cluster["hist_sum_ns"])
            snap.cluster_errors = int(cluster["errors"])
            snap.cluster_fallbacks = {str(k): int(v) for k, v in cluster["fallbacks"].items()}
            snap.cluster_workers_up = 1 if cluster["up"] else 0
            snap.cluster_bad = int(cluster.get("bad", 0))
        return snap


def read_queues(path: str = PROC_QUEUES) -> dict[int, dict[str, int]]:
    """Per queue: the peer's portid, packets waiting, and the kernel's drop counters (by
    the causes of gatekeeper_queue_dropped_total), from :mod:`gatekeeper.netfilter.procfs`."""
    return {q: {"portid": s.portid, "waiting": s.waiting, "queue_full": s.queue_dropped,
                "socket_full": s.user_dropped} for q, s in procfs.read_queues(path).items()}


class Stats:
    """The supervisor's aggregate; thread-safe because the HTTP server runs in a thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.live: dict[int, Snapshot] = {}  # by worker pid
        self.retired = Snapshot()
        self.restarts = 0
        self.bad_reports = 0  # worker reports that were no message (logged, skipped)
        self.reloads = {"ok": 0, "refused": 0}
        self.grants_total: dict[str, int] = {}
        self.cluster_mirrored = 0  # grants of other gateways written into the kernel sets
        self.cluster_bad_messages = 0  # the mirror's: messages and grant keys that did not parse
        # kernel queue counters: current instance (by portid) and what earlier ones counted
        self._queue_seen: dict[int, dict[str, int]] = {}
        self._queue_base: dict[tuple[int, str], int] = {}

    def worker_snapshot(self, pid: int, msg: dict[str, Any]) -> None:
        with self._lock:
            snap = Snapshot.from_message(msg)
            old = self.live.get(pid)
            if old is not None and not snap.spa and old.spa:
                snap.spa = old.spa  # a snapshot too big for the pipe went without them
            self.live[pid] = snap

    def worker_gone(self, pid: int, queue: int) -> None:
        with self._lock:
            snap = self.live.pop(pid, None)
            if snap is not None:
                self.retired.add(snap)
            seen = self._queue_seen.pop(queue, None)
            if seen is not None:
                for cause in ("queue_full", "socket_full"):
                    key = (queue, cause)
                    self._queue_base[key] = self._queue_base.get(key, 0) + seen[cause]
                # what was waiting in the queue when its reader died was dropped by the kernel
                key = (queue, "worker_down")
                self._queue_base[key] = self._queue_base.get(key, 0) + seen["waiting"]

    def dropped_while_down(self, queue: int, packets: int) -> None:
        """Packets the queue's rules sent while no worker was bound to it."""
        with self._lock:
            key = (queue, "worker_down")
            self._queue_base[key] = self._queue_base.get(key, 0) + max(0, packets)

    def sample_queues(self) -> dict[int, dict[str, int]]:
        """Read the kernel's queue counters; call often (twice a second) so a worker's
        last figures are known when it dies."""
        queues = read_queues()
        with self._lock:
            for q, v in queues.items():
                seen = self._queue_seen.get(q)
                if seen is not None and seen["portid"] != v["portid"]:
                    for cause in ("queue_full", "socket_full"):
                        key = (q, cause)
                        self._queue_base[key] = self._queue_base.get(key, 0) + seen[cause]
                self._queue_seen[q] = v
        return queues

    def granted(self, door: str) -> None:
        with self._lock:
            self.grants_total[door] = self.grants_total.get(door, 0) + 1

    def total(self) -> Snapshot:
        with self._lock:
            total = Snapshot()
            total.add(self.retired)
            for snap in self.live.values():
                total.add(snap)
            return total

    def tracked(self, pid: int | None = None) -> int:
        """Sources part-way through a sequence: in the workers running now, or in ``pid``."""
        with self._lock:
            if pid is not None:
                snap = self.live.get(pid)
                return snap.tracked if snap is not None else 0
            return sum(snap.tracked for snap in self.live.values())

    def queue_dropped(self) -> dict[tuple[int, str], int]:
        with self._lock:
            out = dict(self._queue_base)
            for q, v in self._queue_seen.items():
                for cause in ("queue_full", "socket_full"):
                    out[(q, cause)] = out.get((q, cause), 0) + v[cause]
                out.setdefault((q, "worker_down"), 0)
            return out


def _histogram(name: str, doc: str, counts: list[int], sum_ns: int) -> HistogramMetricFamily:
    """A histogram family from per-bucket counts (BUCKETS, then +Inf) and a sum in ns."""
    hist = HistogramMetricFamily(name, doc)
    cumulative, buckets = 0, []
    for bound, n in zip((*map(str, BUCKETS), "+Inf"), counts, strict=True):
        cumulative += n
        buckets.append((bound, cumulative))
    hist.add_metric([], buckets, sum_ns / 1e9)
    return hist


class GatekeeperCollector(Collector):
    def __init__(self, stats: Stats, grants_active: Callable[[], dict[str, int]],
                 workers: Callable[[], int], doors: Callable[[], list[str]],
                 spa_doors: Callable[[], dict[str, tuple[str, ...]]] = dict,
                 cluster_state: Callable[[], str] = lambda: "off",
                 interfaces: Callable[[], list[tuple[str, bool, bool, dict[str, int]]]] = list,
                 commands_dropped: Callable[[], dict[str, int]] = dict,
                 ruleset: Callable[[], dict[int, tuple[bool, int]]] = dict,
                 prefilter: Callable[[], dict[tuple[int, str], int]] = dict) -> None:
        self.stats = stats
        self.grants_active = grants_active
        self.workers = workers
        self.doors = doors
        self.spa_doors = spa_doors  # SPA and encrypted-sequence doors -> their stage labels
        self.cluster_state = cluster_state  # "off", "up" or "down"
        self.interfaces = interfaces  # (name, hotplug, present, changes) of each named one
        self.commands_dropped = commands_dropped  # CommandRunner.dropped
        self.ruleset = ruleset  # by family: (intact, repairs made), from the ruleset watch
        self.prefilter = prefilter  # (family, cause) -> packets the kernel prefilter dropped

    def collect(self) -> Iterator[Metric]:
        total = self.stats.total()
        yield _histogram("gatekeeper_verdict_seconds",
                         "Time from reading a queued packet to its verdict", total.hist, total.hist_sum_ns)

        packets = CounterMetricFamily("gatekeeper_packets", "Queued packets by verdict and reason",
                                      labels=["verdict", "reason"])
        for (verdict, reason), n in zip(REASON_LABELS, total.counts, strict=True):
            packets.add_metric([verdict, reason], n)
        yield packets

        doors = self.doors()
        knocks = CounterMetricFamily("gatekeeper_knocks", "Knock outcomes by door",
                                     labels=["door", "outcome"])
        # every series exists from the start at 0, or rate() misses its first increase
        series = {(d, o): 0 for d in doors for o in KNOCK_OUTCOMES} | total.knocks
        for (door, outcome), n in sorted(series.items()):
            knocks.add_metric([door, outcome], n)
        yield knocks

        spa = CounterMetricFamily("gatekeeper_spa", "SPA packets and encrypted sequences by door "
                                  "and the check that decided them (ok, or the first that failed)",
                                  labels=["door", "stage"])
        series = {(d, s): 0 for d, stages in self.spa_doors().items() for s in stages} | total.spa
        for (door, stage), n in sorted(series.items()):
            spa.add_metric([door, stage], n)
        yield spa
        yield from self._sources(total)
        yield from self._grants(doors)
        yield from self._queues()
        yield from self._daemon()
        yield from self._cluster(total)
        yield from self._interfaces()
        yield from self._ruleset()
        yield from self._prefilter()
        info = GaugeMetricFamily("gatekeeper_build_info", "Build information", labels=["version"])
        info.add_metric([__version__], 1)
        yield info

    def _sources(self, total: Snapshot) -> Iterator[Metric]:
        yield GaugeMetricFamily("gatekeeper_tracked_sources",
                                "Sources part-way through a sequence (all workers)",
                                value=self.stats.tracked())
        lockouts = CounterMetricFamily(
            "gatekeeper_lockouts", "Sources or networks (/24, /64) locked out of completing a "
            "sequence: scanners, and too many failed sequences", labels=["cause"])
        refused = CounterMetricFamily(
            "gatekeeper_sources_refused", "New sources whose knock was not tracked: their /24 or "
            "/64 at prefix_quota, or the table full of sources further along", labels=["cause"])
        for guard, cause in LOCKOUT_CAUSES.items():
            lockouts.add_metric([cause], total.guards[guard])
        for guard, cause in REFUSED_CAUSES.items():
            refused.add_metric([cause], total.guards[guard])
        yield lockouts
        yield refused
        yield CounterMetricFamily("gatekeeper_sources_evicted", "Sources one step into a sequence "
                                  "dropped to make room in a full table",
                                  value=total.guards[Guard.EVICTED])

    def _grants(self, doors: list[str]) -> Iterator[Metric]:
        active = self.grants_active()
        g_active = GaugeMetricFamily("gatekeeper_grants_active", "Grants admitting new connections",
                                     labels=["door"])
        g_total = CounterMetricFamily("gatekeeper_grants", "Grants made (renewals included)",
                                      labels=["door"])
        for door in doors:
            g_active.add_metric([door], active.get(door, 0))
            g_total.add_metric([door], self.stats.grants_total.get(door, 0))
        yield g_active
        yield g_total

    def _queues(self) -> Iterator[Metric]:
        dropped = CounterMetricFamily("gatekeeper_queue_dropped",
                                      "Packets the kernel dropped before a verdict",
                                      labels=["queue", "cause"])
        for (q, cause), n in sorted(self.stats.queue_dropped().items()):
            dropped.add_metric([str(q), cause], n)
        yield dropped
        depth = GaugeMetricFamily("gatekeeper_queue_depth", "Packets waiting in the kernel queue",
                                  labels=["queue"])
        for q, v in sorted(read_queues().items()):
            depth.add_metric([str(q)], v["waiting"])
        yield depth

    def _daemon(self) -> Iterator[Metric]:
        yield CounterMetricFamily("gatekeeper_worker_restarts", "Workers restarted after dying",
                                  value=self.stats.restarts)
        yield GaugeMetricFamily("gatekeeper_workers", "Workers running", value=self.workers())
        reloads = CounterMetricFamily("gatekeeper_config_reloads", "Config reloads by result",
                                      labels=["result"])
        for result, n in sorted(self.stats.reloads.items()):
            reloads.add_metric([result], n)
        yield reloads
        not_run = self.commands_dropped()
        commands = CounterMetricFamily("gatekeeper_commands_dropped", "start and SPA server "
                                       "commands not run because too many commands were "
                                       "waiting, and the stop_commands of such starts",
                                       labels=["command"])
        for what in COMMANDS:
            commands.add_metric([what], not_run.get(what, 0))
        yield commands

    def _ruleset(self) -> Iterator[Metric]:
        intact = GaugeMetricFamily("gatekeeper_ruleset_intact", "1 while the running ruleset is as "
                                   "gatekeeper installed it: its jumps first, no rule ahead of them "
                                   "that may accept, its chains unchanged", labels=["family"])
        repairs = CounterMetricFamily("gatekeeper_ruleset_repairs", "Times gatekeeper put its jumps "
                                      "and chains back after another program changed them",
                                      labels=["family"])
        for family, (ok, n) in sorted(self.ruleset().items()):
            intact.add_metric([str(family)], 1 if ok else 0)
            repairs.add_metric([str(family)], n)
        yield intact
        yield repairs

    def _prefilter(self) -> Iterator[Metric]:
        """Read from the kernel's rule counters at scrape time (zeros with prefilter off)."""
        dropped = CounterMetricFamily("gatekeeper_prefilter_dropped", "Packets the kernel "
                                      "prefilter dropped without queueing them: junk (no sequence "
                                      "in progress, no first step), scanner (a source over the "
                                      "kernel's scan limit)", labels=["family", "cause"])
        for (family, cause), n in sorted(self.prefilter().items()):
            dropped.add_metric([str(family), cause], n)
        yield dropped

    def _cluster(self, total: Snapshot) -> Iterator[Metric]:
        """[cluster]: every series exists (at 0) without it too, state "off"."""
        state = self.cluster_state()
        states = GaugeMetricFamily("gatekeeper_cluster_state", "The shared store ([cluster]): 1 for "
                                   "the current state (off: a single gateway)", labels=["state"])
        for name in CLUSTER_STATES:
            states.add_metric([name], 1 if name == state else 0)
        yield states
        yield _histogram("gatekeeper_cluster_seconds", "Round trips to the shared store on the hot "
                         "path (knocks, first packets to protected ports)", total.cluster_hist,
                         total.cluster_sum_ns)
        yield CounterMetricFamily("gatekeeper_cluster_errors", "Calls to the shared store that "
                                  "failed or timed out", value=total.cluster_errors)
        fallbacks = CounterMetricFamily("gatekeeper_cluster_fallbacks", "Knocks decided without "
                                        "the shared store, by the door's cluster_fallback",
                                        labels=["mode"])
        for mode in CLUSTER_FALLBACKS:
            fallbacks.add_metric([mode], total.cluster_fallbacks.get(mode, 0))
        yield fallbacks
        yield CounterMetricFamily("gatekeeper_cluster_mirrored", "Grants of other gateways "
                                  "written into this one's kernel sets", value=self.stats.cluster_mirrored)
        yield CounterMetricFamily("gatekeeper_cluster_bad_messages", "Messages, grant keys and "
                                  "answers of the shared store that did not parse: ignored",
                                  value=self.stats.cluster_bad_messages + total.cluster_bad)


    def _interfaces(self) -> Iterator[Metric]:
        """Each guarded interface named in the config (not a wildcard, not "all")."""
        present = GaugeMetricFamily("gatekeeper_interface_present", "A guarded interface of "
                                    "[gatekeeper] interfaces: 1 while present, 0 while absent "
                                    "(removed or renamed); hotplug: listed in hotplug_interfaces",
                                    labels=["interface", "hotplug"])
        changes = CounterMetricFamily("gatekeeper_interface_changes", "A guarded interface "
                                      "removed, renamed or (back) appearing",
                                      labels=["interface", "change"])
        for name, hotplug, up, counts in self.interfaces():
            present.add_metric([name, "true" if hotplug else "false"], 1 if up else 0)
            for change, n in sorted(counts.items()):
                changes.add_metric([name, change], n)
        yield present
        yield changes


def serve(collector: GatekeeperCollector, listen: str) -> CollectorRegistry:
    """Serve the registry on ``HOST:PORT`` in a background thread."""
    host, _, port = listen.rpartition(":")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=registry)
    return registry
