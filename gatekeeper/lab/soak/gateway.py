"""The soak's ``gateway`` role: once an interval, the daemon's memory and fds, what its
status says and what its exporter counts."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

from gatekeeper import __version__
from gatekeeper.errors import GatekeeperError
from gatekeeper.lab.soak.common import (
    DEFAULT_METRICS,
    Records,
    SoakError,
    bound,
    check_duration,
    sleep_until,
)
from gatekeeper.lab.status import worker_pids
from gatekeeper.model import DEFAULT_CONTROL_SOCKET


def _kb(path: str, field: str) -> int:
    """The kB figure of the first ``field:`` line of a /proc status-like file (0: none)."""
    with open(path, encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _proc_memory(pid: int) -> tuple[int, int, int] | None:
    """RSS and PSS in kB and the number of open fds of ``pid``, or None if it is gone."""
    try:
        rss = _kb(f"/proc/{pid}/status", "VmRSS:")
        try:
            pss = _kb(f"/proc/{pid}/smaps_rollup", "Pss:")
        except OSError:
            pss = 0
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError, IndexError):
        return None
    return rss, pss, fds


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _pgrep_pids() -> tuple[int | None, list[int]]:
    """The supervisor and its workers by command line, when the control socket is off."""
    try:
        found = subprocess.run(["pgrep", "-f", r"gatekeeper run( |$)"], capture_output=True,
                               text=True, timeout=5, check=False).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return None, []
    pids = {int(p) for p in found if p.isdigit()} - {os.getpid()}
    roots = sorted(p for p in pids if _ppid(p) not in pids)
    supervisor = roots[0] if roots else None
    return supervisor, sorted(p for p in pids if p != supervisor)


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over cumulative ``(le, count)`` buckets."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def parse_metrics(text: str) -> dict[str, Any]:
    """The figures the soak needs from the exporter's text."""
    from prometheus_client.parser import text_string_to_metric_families

    hist: dict[float, float] = {}
    packets: dict[str, float] = {}
    grants = dropped = restarts = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, float(sample.value)
            if name == "gatekeeper_verdict_seconds_bucket":
                hist[float(labels["le"])] = value
            elif name == "gatekeeper_packets_total":
                key = f"{labels.get('verdict', '?')}_{labels.get('reason', '?')}"
                packets[key] = packets.get(key, 0.0) + value
            elif name == "gatekeeper_grants_total":
                grants += value
            elif name == "gatekeeper_queue_dropped_total":
                dropped += value
            elif name == "gatekeeper_worker_restarts_total":
                restarts += value
    return {"hist": sorted(hist.items()), "packets": {k: int(v) for k, v in sorted(packets.items())},
            "grants_total": int(grants), "queue_dropped": int(dropped), "worker_restarts": int(restarts)}


def _fetch(url: str, timeout: float = 2.0) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    with opener.open(url, timeout=timeout) as response:
        body: bytes = response.read(8 << 20)
    return body.decode("utf-8", "replace")


Buckets = list[tuple[float, float]]


def gateway_sample(socket_path: str, metrics_url: str,
                   previous: Buckets | None) -> tuple[dict[str, Any], Buckets | None]:
    from gatekeeper.daemon.control import request

    out: dict[str, Any] = {}
    supervisor: int | None = None
    workers: list[int] = []
    try:
        status = request(socket_path, timeout=2.0)
        workers = list(worker_pids(status).values())
        parents = {_ppid(p) for p in workers} - {0}
        supervisor = parents.pop() if len(parents) == 1 else None
        out["tracked"] = sum(int(w.get("tracked", 0)) for w in status.get("workers", []))
        out["grants_active"] = len(status.get("grants", []))
        out["restarts"] = int(status.get("restarts", 0))
    except (GatekeeperError, OSError, ValueError, KeyError, TypeError) as exc:
        out["status_error"] = str(exc)
    if supervisor is None:
        supervisor, found = _pgrep_pids()
        workers = workers or found
    pids = ([supervisor] if supervisor else []) + workers
    rss = pss = fds = alive = 0
    per_pid: dict[str, list[int]] = {}
    for pid in pids:
        mem = _proc_memory(pid)
        if mem is None:
            continue
        alive += 1
        rss, pss, fds = rss + mem[0], pss + mem[1], fds + mem[2]
        per_pid[str(pid)] = list(mem)
    out.update(supervisor=supervisor, workers=workers, procs=alive, per_pid=per_pid)
    from gatekeeper.metrics import read_queues

    queues = read_queues()  # this network namespace's NFQUEUE instances, from /proc
    out["kernel_queues"] = {
        "queues": len(queues),
        "waiting": sum(q["waiting"] for q in queues.values()),
        "dropped": sum(q["queue_full"] + q["socket_full"] for q in queues.values()),
    }
    if alive:
        out.update(rss_kb=rss, pss_kb=pss, fds=fds)
    try:
        metrics = parse_metrics(_fetch(metrics_url))
    except (OSError, ValueError) as exc:
        out["metrics_error"] = str(exc)
        return out, previous
    hist: Buckets = [(float(le), float(c)) for le, c in metrics.pop("hist")]
    out.update(metrics)
    out.update(interval_latency(hist, previous))
    return out, hist


def interval_latency(hist: Buckets, previous: Buckets | None) -> dict[str, Any]:
    """p99 over the whole run and over the interval since ``previous`` (microseconds)."""
    out: dict[str, Any] = {}
    if hist:
        cum_p99 = histogram_quantile(0.99, hist)
        out["p99_cum_us"] = None if cum_p99 is None else round(cum_p99 * 1e6, 2)
        out["verdicts_total"] = int(hist[-1][1])
        if previous is not None and [le for le, _ in previous] == [le for le, _ in hist]:
            delta = [(le, c - pc) for (le, c), (_, pc) in zip(hist, previous, strict=True)]
            if all(c >= 0 for _, c in delta):  # a counter going back: the daemon restarted
                p99 = histogram_quantile(0.99, delta)
                out["verdicts"] = int(delta[-1][1])
                out["p99_us"] = None if p99 is None else round(p99 * 1e6, 2)
    return out


def run_gateway(duration: float, out: str, socket_path: str = DEFAULT_CONTROL_SOCKET,
                metrics_url: str = DEFAULT_METRICS, interval: float = 1.0) -> int:
    duration = check_duration(duration)
    if not 0.1 <= interval <= 3600:
        raise SoakError("--interval must be 0.1-3600 seconds")
    if not metrics_url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        raise SoakError("--metrics: the gateway's own exporter, on loopback (http://127.0.0.1:9464/metrics)")
    limit = bound(duration, interval)
    records = Records(out, "gateway")
    records.write("start", version=__version__, host=socket.gethostname(), socket=socket_path,
                  metrics=metrics_url, duration=duration, interval=interval, max_samples=limit)
    n = 0
    previous: Buckets | None = None
    begin = time.monotonic()
    deadline = begin + duration
    try:
        while n < limit and time.monotonic() < deadline:
            sample, previous = gateway_sample(socket_path, metrics_url, previous)
            records.write("sample", n=n, **sample)
            n += 1
            sleep_until(begin + n * interval, deadline)
        records.write("end", samples=n, reason="count" if n >= limit else "duration")
    finally:
        records.close()
    print(f"soak gateway: {n} samples -> {out}", flush=True)
    return 0
