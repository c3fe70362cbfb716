"""``gatekeeper soak``: a soak scenario whose roles run unchanged in VMs and in the lab.

Three roles each write one JSON record per line (a ``start`` record, then one record per
attempt, loop or sample, then an ``end`` record), flushed as they go:

* ``client``: knocks, connects at once with a 0.9 s timeout (below the first SYN
  retransmit, so a success means the very first SYN was accepted), sends a line, reads a
  line back, closes. Paced (``--interval``) and bounded in count and time. With
  ``--sources`` it rotates over several local addresses, so most attempts need a fresh
  grant rather than renewing a running one.
* ``attacker``: bounded, paced junk against the one gateway address it is given:
  connects to the protected port without a valid knock (each success is an
  *unauthorised accept*, which must never happen), after a replay of a partial
  sequence or of one with a wrong last step, a small scan of random ports, and a
  paced flood of UDP junk to random ports. Random ports never include the door's
  knock ports or the protected port.
* ``gateway``: once a second, memory (RSS, PSS) and open fds of the supervisor and its
  workers, tracked sources and grants from the control socket, and from the metrics
  endpoint the p99 verdict latency of the last interval, packet counters, grants made
  and kernel queue drops.

``report`` merges every ``*.jsonl`` of a directory into ``summary.json``, a summary on
stdout and ``soak.png``, and exits 1 when a check fails: an unauthorised accept, a
client success rate below 99 %, RSS growth beyond the bound, a role that did not
finish. ``lab`` runs the whole scenario in the namespace lab (needs root).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import json
import math
import os
import random
import re
import selectors
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from gatekeeper import __version__
from gatekeeper.client.knock import FIRST_SYN_TIMEOUT, Target, knock, parse_step, resolve
from gatekeeper.errors import GatekeeperError
from gatekeeper.model import DEFAULT_CONTROL_SOCKET, ICMP, PROTO_NAMES, TCP, UDP

DEFAULT_SEQUENCE = "7000:udp,8000:tcp,9000:udp"
DEFAULT_METRICS = "http://127.0.0.1:9464/metrics"
REPLY_TIMEOUT = 2.0
ATTACK_TIMEOUT = 1.2  # long enough to see a SYN accepted on its first retransmit too
MAX_DURATION = 7 * 24 * 3600.0
MAX_SOURCES = 1024
MAX_RECORDS = 10_000_000  # hard bound on every loop, whatever the duration
SUMMARY_FILE, PLOT_FILE = "summary.json", "soak.png"

# report thresholds
MIN_SUCCESS = 0.99
MAX_RSS_GROWTH_MB = 20.0
MAX_RSS_GROWTH_PCT = 25.0


class SoakError(GatekeeperError):
    pass


# -- records ---------------------------------------------------------------------------------


class Records:
    """Appends JSON lines to a file, flushed per record so a killed role leaves its data."""

    def __init__(self, path: str, role: str) -> None:
        self.role = role
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        self._f: IO[str] = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self.count = 0

    def write(self, kind: str, **fields: Any) -> None:
        record = {"role": self.role, "kind": kind, "t": round(time.time(), 4), **fields}
        self._f.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._f.flush()
        self.count += 1

    def close(self) -> None:
        self._f.close()


def _check_duration(duration: float) -> float:
    if not 0 < duration <= MAX_DURATION:
        raise SoakError(f"--duration must be more than 0 and at most {MAX_DURATION:.0f} seconds")
    return float(duration)


def _bound(duration: float, period: float) -> int:
    """The most records a loop of ``period`` may write within ``duration``."""
    return min(MAX_RECORDS, int(duration / max(period, 0.001)) + 2)


def _sleep_until(when: float, deadline: float) -> None:
    delay = min(when, deadline) - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def parse_sequence(text: str) -> list[tuple[int, int]]:
    steps = [parse_step(s.strip(), TCP) for s in text.split(",") if s.strip()]
    if not steps:
        raise SoakError("--sequence: at least one PORT[:PROTO] step")
    return steps


def parse_sources(text: str) -> list[str]:
    """``ADDR,ADDR,...``; an IPv4 item may be a last-octet range ``192.0.2.100-129``."""
    out: list[str] = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        m = re.fullmatch(r"(\d{1,3}\.\d{1,3}\.\d{1,3}\.)(\d{1,3})-(\d{1,3})", item)
        if m:
            lo, hi = int(m[2]), int(m[3])
            if not lo <= hi <= 255:
                raise SoakError(f"--sources: {item!r}: expected a range like 192.0.2.100-129")
            out += [str(ipaddress.ip_address(f"{m[1]}{n}")) for n in range(lo, hi + 1)]
        else:
            try:
                out.append(str(ipaddress.ip_address(item)))
            except ValueError:
                raise SoakError(f"--sources: {item!r} is not an address") from None
        if len(out) > MAX_SOURCES:
            raise SoakError(f"--sources: at most {MAX_SOURCES} addresses")
    return out


def _error_name(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno)).lower()
    return str(exc) or type(exc).__name__


# -- client ----------------------------------------------------------------------------------


def client_attempt(target: Target, steps: list[tuple[int, int]], port: int, n: int,
                   timeout: float = FIRST_SYN_TIMEOUT) -> dict[str, Any]:
    """Knock, connect at once, exchange a line, close. Never waits more than
    ``timeout`` + ``REPLY_TIMEOUT`` seconds."""
    out: dict[str, Any] = {"n": n, "source": target.source or "", "ok": False, "stage": "knock",
                           "error": None}
    start = time.perf_counter()
    try:
        knock(target, steps)
    except (GatekeeperError, OSError) as exc:
        out["error"] = _error_name(exc)
        return out
    knocked = time.perf_counter()
    out["knock_ms"] = round((knocked - start) * 1000, 3)
    out["stage"] = "connect"
    with socket.socket(target.family, socket.SOCK_STREAM) as s:
        try:
            if target.source is not None:
                s.bind((target.source, 0))
            s.settimeout(timeout)
            s.connect((target.address, port))
        except OSError as exc:
            out["connect_ms"] = round((time.perf_counter() - knocked) * 1000, 3)
            out["error"] = _error_name(exc)
            return out
        connected = time.perf_counter()
        out["connect_ms"] = round((connected - knocked) * 1000, 3)
        # an SSH identification line: an echo service sends it back, sshd answers with its
        # own banner; either way a line came back over the new connection
        line = f"SSH-2.0-gatekeeper_soak_{n}\r\n".encode()
        out["stage"] = "reply"
        try:
            s.settimeout(REPLY_TIMEOUT)
            s.sendall(line)
            data = b""
            while b"\n" not in data and len(data) < 1024:
                chunk = s.recv(1024)
                if not chunk:
                    raise ConnectionError("closed by the peer before a line")
                data += chunk
        except OSError as exc:
            out["error"] = _error_name(exc)
            return out
        out["reply_ms"] = round((time.perf_counter() - connected) * 1000, 3)
        out["reply"] = "echo" if data.split(b"\n")[0] + b"\n" == line else "banner"
    out["ok"], out["stage"] = True, "done"
    return out


def run_client(gateway: str, duration: float, sequence: str, port: int, out: str,
               interval: float = 0.2, timeout: float = FIRST_SYN_TIMEOUT, sources: str = "",
               max_attempts: int = 0) -> int:
    duration = _check_duration(duration)
    if not 0.01 <= interval <= 3600:
        raise SoakError("--interval must be 0.01-3600 seconds")
    if not 0.05 <= timeout <= 30:
        raise SoakError("--timeout must be 0.05-30 seconds")
    steps = parse_sequence(sequence)
    addresses = parse_sources(sources)
    target = resolve(gateway)
    limit = _bound(duration, interval)
    if max_attempts > 0:
        limit = min(limit, max_attempts)
    records = Records(out, "client")
    records.write("start", version=__version__, host=socket.gethostname(), gateway=target.address,
                  port=port, duration=duration, interval=interval, timeout=timeout,
                  sequence=[f"{p}:{PROTO_NAMES[proto]}" for proto, p in steps],
                  sources=len(addresses), max_attempts=limit)
    ok = n = 0
    begin = time.monotonic()
    deadline = begin + duration
    try:
        while n < limit and time.monotonic() < deadline:
            source = addresses[n % len(addresses)] if addresses else None
            result = client_attempt(Target(target.family, target.address, source), steps, port, n,
                                    timeout)
            records.write("attempt", **result)
            ok += bool(result["ok"])
            n += 1
            _sleep_until(begin + n * interval, deadline)
        records.write("end", attempts=n, ok=ok, reason="count" if n >= limit else "duration")
    finally:
        records.close()
    print(f"soak client: {n} attempts, {ok} ok ({100.0 * ok / n if n else 0:.2f} %) -> {out}",
          flush=True)
    return 0


# -- attacker --------------------------------------------------------------------------------


def _random_port(rng: random.Random, excluded: set[int]) -> int:
    while True:
        port = rng.randint(1, 65535)
        if port not in excluded:
            return port


def _nonblocking_connect(family: int, address: str, port: int) -> socket.socket | None:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setblocking(False)
    err = s.connect_ex((address, port))
    if err not in (0, errno.EINPROGRESS, errno.EAGAIN, errno.ECONNREFUSED):
        s.close()
        return None
    return s


def attacker_loop(target: Target, steps: list[tuple[int, int]], port: int, n: int,
                  rng: random.Random, rate: float, probes: int = 16, protected: int = 4,
                  wait: float = ATTACK_TIMEOUT) -> dict[str, Any]:
    """One bounded round of junk; takes about ``wait`` seconds. Every packet goes to
    ``target.address`` and nowhere else."""
    start = time.monotonic()
    knock_ports = {p for proto, p in steps if proto in (TCP, UDP)}
    excluded = knock_ports | {port}
    out: dict[str, Any] = {"n": n, "replay": "none", "replay_error": None}

    # 1. every other round, replay what a sniffer saw, but never the whole sequence:
    #    all steps but the last (partial), or those and a wrong last step
    if n % 2 == 1 and steps:
        kind = "partial" if n % 4 == 1 else "wrong"
        replay = list(steps[:-1])
        if kind == "wrong" or not replay:
            kind = "wrong"
            last_proto, last_port = steps[-1]
            wrong = last_port % 65535 + 1
            while wrong in excluded:
                wrong = wrong % 65535 + 1
            replay.append((last_proto if last_proto != ICMP else UDP, wrong))
        out["replay"] = kind
        try:
            knock(target, replay)
        except (GatekeeperError, OSError) as exc:
            out["replay_error"] = _error_name(exc)

    # 2. connects to the protected port (without a valid knock) and a small scan, all at once
    sel = selectors.DefaultSelector()
    pending: dict[socket.socket, tuple[int, bool]] = {}
    ports = [(port, True)] * protected + [(_random_port(rng, excluded), False) for _ in range(probes)]
    for p, is_protected in ports:
        s = _nonblocking_connect(target.family, target.address, p)
        if s is not None:
            pending[s] = (p, is_protected)
            sel.register(s, selectors.EVENT_WRITE)
    connects_at = time.monotonic()

    # 3. a paced flood of UDP junk to random ports while the connects wait
    flood = max(0, min(5000, int(rate * wait * 0.5)))
    sent = 0
    with socket.socket(target.family, socket.SOCK_DGRAM) as udp:
        for i in range(flood):
            if i % 10 == 0:
                _sleep_until(connects_at + i / max(rate, 1.0), connects_at + wait)
                if time.monotonic() >= connects_at + wait:
                    break
            try:
                udp.sendto(rng.randbytes(rng.randint(1, 256)), (target.address,
                                                                  _random_port(rng, excluded)))
                sent += 1
            except OSError:
                pass

    # 4. collect: connected or refused means the packet got through the firewall
    accepted = answered = 0
    answered_ports: list[int] = []
    deadline = connects_at + wait
    while pending and (left := deadline - time.monotonic()) > 0:
        for key, _ in sel.select(left):
            conn = key.fileobj
            assert isinstance(conn, socket.socket)
            p, is_protected = pending.pop(conn)
            sel.unregister(conn)
            err = conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            conn.close()
            if is_protected and err == 0:
                accepted += 1
            elif not is_protected and err in (0, errno.ECONNREFUSED):
                answered += 1
                answered_ports.append(p)
    for conn in pending:
        conn.close()  # still in SYN-SENT: dropped, as it should be
    sel.close()
    out.update(protected_tried=protected, protected_accepted=accepted, tcp_probes=probes,
               tcp_answered=answered, answered_ports=answered_ports[:20], udp_sent=sent,
               elapsed_ms=round((time.monotonic() - start) * 1000, 1))
    return out


def run_attacker(gateway: str, duration: float, out: str, sequence: str = DEFAULT_SEQUENCE,
                 port: int = 22, rate: float = 200.0, max_loops: int = 0, seed: int | None = None) -> int:
    duration = _check_duration(duration)
    if not 0 <= rate <= 5000:
        raise SoakError("--rate must be 0-5000 packets a second")
    steps = parse_sequence(sequence)
    target = resolve(gateway)
    seed = seed if seed is not None else int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    period = ATTACK_TIMEOUT + 0.1
    limit = _bound(duration, period)
    if max_loops > 0:
        limit = min(limit, max_loops)
    records = Records(out, "attacker")
    records.write("start", version=__version__, host=socket.gethostname(), gateway=target.address,
                  port=port, duration=duration, rate=rate, seed=seed, max_loops=limit)
    n = unauthorised = 0
    begin = time.monotonic()
    deadline = begin + duration
    try:
        while n < limit and time.monotonic() + ATTACK_TIMEOUT / 2 < deadline:
            result = attacker_loop(target, steps, port, n, rng, rate)
            unauthorised += int(result["protected_accepted"])
            records.write("loop", **result)
            n += 1
            _sleep_until(begin + n * period, deadline)
        records.write("end", loops=n, unauthorised_accepts=unauthorised,
                      reason="count" if n >= limit else "duration")
    finally:
        records.close()
    print(f"soak attacker: {n} loops, unauthorised accepts {unauthorised} -> {out}", flush=True)
    return 0


# -- gateway sampler -------------------------------------------------------------------------


def _proc_memory(pid: int) -> tuple[int, int, int] | None:
    """RSS and PSS in kB and the number of open fds of ``pid``, or None if it is gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                    break
        try:
            with open(f"/proc/{pid}/smaps_rollup", encoding="ascii", errors="replace") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss = int(line.split()[1])
                        break
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
    from gatekeeper.control import request

    out: dict[str, Any] = {}
    supervisor: int | None = None
    workers: list[int] = []
    try:
        status = request(socket_path, timeout=2.0)
        workers = [int(w["pid"]) for w in status.get("workers", [])]
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
    duration = _check_duration(duration)
    if not 0.1 <= interval <= 3600:
        raise SoakError("--interval must be 0.1-3600 seconds")
    if not metrics_url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        raise SoakError("--metrics: the gateway's own exporter, on loopback (http://127.0.0.1:9464/metrics)")
    limit = _bound(duration, interval)
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
            _sleep_until(begin + n * interval, deadline)
        records.write("end", samples=n, reason="count" if n >= limit else "duration")
    finally:
        records.close()
    print(f"soak gateway: {n} samples -> {out}", flush=True)
    return 0


# -- report ----------------------------------------------------------------------------------


def load_records(directory: str) -> tuple[dict[str, list[dict[str, Any]]], list[str], int]:
    by_role: dict[str, list[dict[str, Any]]] = {}
    files = sorted(p for p in Path(directory).glob("*.jsonl") if p.is_file())
    bad = 0
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    bad += 1  # a role killed mid-write leaves half a line
                    continue
                if isinstance(record, dict) and isinstance(record.get("role"), str):
                    record["_file"] = path.name
                    by_role.setdefault(record["role"], []).append(record)
                else:
                    bad += 1
    return by_role, [p.name for p in files], bad


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _kind(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return sorted((r for r in records if r.get("kind") == kind), key=lambda r: float(r["t"]))


def summarise(by_role: dict[str, list[dict[str, Any]]], files: list[str], bad_lines: int = 0,
              min_success: float = MIN_SUCCESS, max_growth_mb: float = MAX_RSS_GROWTH_MB,
              max_growth_pct: float = MAX_RSS_GROWTH_PCT) -> dict[str, Any]:
    attempts = _kind(by_role.get("client", []), "attempt")
    loops = _kind(by_role.get("attacker", []), "loop")
    samples = _kind(by_role.get("gateway", []), "sample")
    times = [float(r["t"]) for recs in by_role.values() for r in recs if "t" in r]
    t0 = min(times) if times else 0.0
    span = (max(times) - t0) if times else 0.0

    ok = sum(1 for a in attempts if a.get("ok"))
    connect = [float(a["connect_ms"]) for a in attempts if a.get("ok") and "connect_ms" in a]
    total = [float(a["connect_ms"]) + float(a.get("knock_ms", 0)) + float(a.get("reply_ms", 0))
             for a in attempts if a.get("ok") and "connect_ms" in a]
    failures: dict[str, int] = {}
    for a in attempts:
        if not a.get("ok"):
            key = f"{a.get('stage', '?')}: {a.get('error', '?')}"
            failures[key] = failures.get(key, 0) + 1
    rate = ok / len(attempts) if attempts else None
    client = {
        "attempts": len(attempts), "successes": ok, "success_rate": _r(rate, 5),
        "sources": len({a.get("source", "") for a in attempts}),
        "connect_ms": {"p50": _r(_pct(connect, 0.5), 3), "p99": _r(_pct(connect, 0.99), 3),
                       "max": _r(max(connect) if connect else None, 3)},
        "knock_to_reply_ms": {"p50": _r(_pct(total, 0.5), 3), "p99": _r(_pct(total, 0.99), 3)},
        "replies": {k: sum(1 for a in attempts if a.get("reply") == k) for k in ("echo", "banner")},
        "failures": failures,
    }

    unauthorised = sum(int(lp.get("protected_accepted", 0)) for lp in loops)
    attacker = {
        "loops": len(loops),
        "protected_connects": sum(int(lp.get("protected_tried", 0)) for lp in loops),
        "unauthorised_accepts": unauthorised,
        "replays": {k: sum(1 for lp in loops if lp.get("replay") == k) for k in ("partial", "wrong")},
        "tcp_probes": sum(int(lp.get("tcp_probes", 0)) for lp in loops),
        "tcp_probes_answered": sum(int(lp.get("tcp_answered", 0)) for lp in loops),
        "udp_junk_sent": sum(int(lp.get("udp_sent", 0)) for lp in loops),
    }

    mem = [s for s in samples if "rss_kb" in s]
    gateway: dict[str, Any] = {"samples": len(samples), "memory_samples": len(mem)}
    growth_mb = growth_pct = None
    if mem:
        k = max(1, math.ceil(len(mem) * 0.1))
        first = statistics.median(float(s["rss_kb"]) for s in mem[:k]) / 1024
        last = statistics.median(float(s["rss_kb"]) for s in mem[-k:]) / 1024
        growth_mb = last - first
        growth_pct = 100.0 * growth_mb / first if first else 0.0
        pss = [float(s.get("pss_kb", 0)) / 1024 for s in mem]
        gateway.update(
            rss_mb={"first": _r(first), "last": _r(last),
                    "max": _r(max(float(s["rss_kb"]) for s in mem) / 1024)},
            rss_growth_mb=_r(growth_mb), rss_growth_pct=_r(growth_pct),
            pss_mb={"first": _r(pss[0]), "last": _r(pss[-1]), "max": _r(max(pss))},
            fds={"first": mem[0].get("fds"), "last": mem[-1].get("fds"),
                 "max": max(int(s.get("fds", 0)) for s in mem)},
            procs={"min": min(int(s.get("procs", 0)) for s in mem),
                   "max": max(int(s.get("procs", 0)) for s in mem)},
        )
    p99 = [float(s["p99_us"]) for s in samples if s.get("p99_us") is not None]
    with_metrics = [s for s in samples if "grants_total" in s]
    gateway["p99_verdict_us"] = {"median": _r(statistics.median(p99) if p99 else None),
                                 "max": _r(max(p99) if p99 else None),
                                 "cumulative_last": samples[-1].get("p99_cum_us") if samples else None}
    tracked = [int(s["tracked"]) for s in samples if "tracked" in s]
    gateway["tracked_sources_max"] = max(tracked) if tracked else None
    gateway["grants_active_max"] = max((int(s.get("grants_active", 0)) for s in samples), default=None)
    if with_metrics:
        a, b = with_metrics[0], with_metrics[-1]
        gateway["grants"] = int(b["grants_total"]) - int(a["grants_total"])
        gateway["verdicts"] = int(b.get("verdicts_total", 0)) - int(a.get("verdicts_total", 0))
        gateway["queue_dropped"] = int(b["queue_dropped"]) - int(a["queue_dropped"])
        gateway["worker_restarts"] = int(b.get("worker_restarts", 0)) - int(a.get("worker_restarts", 0))
        gateway["packets"] = {key: int(v) - int(a.get("packets", {}).get(key, 0))
                              for key, v in b.get("packets", {}).items()}
    kq = [s["kernel_queues"] for s in samples if "kernel_queues" in s]
    if kq:
        gateway["kernel_queue"] = {"dropped": int(kq[-1]["dropped"]) - int(kq[0]["dropped"]),
                                   "waiting_max": max(int(q["waiting"]) for q in kq)}
    gateway["errors"] = {
        "status": sum(1 for s in samples if "status_error" in s),
        "metrics": sum(1 for s in samples if "metrics_error" in s),
    }

    warnings: list[str] = []
    if gateway.get("grants") and not gateway.get("verdicts"):
        warnings.append("the exporter counted no verdicts (gatekeeper_verdict_seconds, "
                        "gatekeeper_packets_total) although grants were made: the workers' counter "
                        "snapshots do not reach the supervisor, so no p99 verdict latency")
    if attacker["tcp_probes_answered"]:
        warnings.append(f"{attacker['tcp_probes_answered']} scan probes to random ports were answered "
                        "(connected or refused): a public port, or a leak")
    kernel_dropped = gateway.get("kernel_queue", {}).get("dropped", 0)
    if gateway.get("queue_dropped") or kernel_dropped:
        warnings.append(f"the kernel dropped queued packets: {gateway.get('queue_dropped', 0)} by the "
                        f"exporter, {kernel_dropped} by /proc/net/netfilter/nfnetlink_queue")
    if bad_lines:
        warnings.append(f"{bad_lines} unreadable line(s) in the .jsonl files")

    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"name": name, "ok": ok, "detail": detail})

    check("unauthorised accepts", bool(loops) and unauthorised == 0,
          f"{unauthorised} == 0 over {attacker['protected_connects']} connects without a valid knock"
          if loops else "no attacker data")
    check("client success rate", rate is not None and rate >= min_success,
          f"{100 * rate:.2f} % of {len(attempts)} >= {100 * min_success:g} %" if rate is not None
          else "no client attempts")
    if growth_mb is not None and growth_pct is not None:
        check("RSS growth", growth_mb <= max_growth_mb and growth_pct <= max_growth_pct,
              f"{growth_mb:+.2f} MB ({growth_pct:+.1f} %) between the first and last 10 % of samples; "
              f"bound +{max_growth_mb:g} MB and +{max_growth_pct:g} %")
    else:
        check("RSS growth", False, "no memory samples of the daemon")
    ended = {r["_file"] for recs in by_role.values() for r in recs if r.get("kind") == "end"}
    started = {r["_file"] for recs in by_role.values() for r in recs if r.get("kind") == "start"}
    unfinished = sorted(started - ended)
    check("roles finished", not unfinished,
          "every role wrote its end record" if not unfinished
          else f"no end record in {', '.join(unfinished)}")
    for lab in _kind(by_role.get("lab", []), "end"):
        code = lab.get("daemon_exit")
        check("daemon stopped cleanly", code == 0, f"gatekeeper run exited {code} on SIGTERM")
        bad = {k: v for k, v in lab.get("role_exits", {}).items() if v != 0}
        check("role processes", not bad, "every role exited 0" if not bad else f"exits: {bad}")

    return {
        "version": __version__,
        "files": files,
        "bad_lines": bad_lines,
        "started": t0,
        "duration_s": round(span, 1),
        "unauthorised_accepts": unauthorised,
        "client": client,
        "attacker": attacker,
        "gateway": gateway,
        "warnings": warnings,
        "checks": checks,
        "ok": all(c["ok"] for c in checks),
    }


def format_summary(s: dict[str, Any]) -> str:
    c, a, g = s["client"], s["attacker"], s["gateway"]

    def num(v: Any, fmt: str = ".1f") -> str:
        return "n/a" if v is None else format(v, fmt)

    rate = c["success_rate"]
    lines = [
        f"gatekeeper soak report: {s['duration_s']:.0f} s of records from {', '.join(s['files'])}",
        f"client    {c['attempts']} attempts from {c['sources']} source address(es), {c['successes']} ok "
        f"({'n/a' if rate is None else format(100 * rate, '.2f') + ' %'}); connect on the first SYN "
        f"p50 {num(c['connect_ms']['p50'], '.2f')} ms, p99 {num(c['connect_ms']['p99'], '.2f')} ms, "
        f"max {num(c['connect_ms']['max'], '.2f')} ms; knock to reply p50 "
        f"{num(c['knock_to_reply_ms']['p50'], '.2f')} ms",
        "          failures: " + (", ".join(f"{k} x{v}" for k, v in c["failures"].items()) or "none"),
        f"attacker  {a['loops']} loops: {a['protected_connects']} connects to the protected port without "
        f"a valid knock ({a['replays']['partial']} after a partial replay, {a['replays']['wrong']} "
        f"after one with a wrong last step): unauthorised accepts {a['unauthorised_accepts']}",
        f"          {a['tcp_probes']} scan probes to random ports, {a['tcp_probes_answered']} answered; "
        f"{a['udp_junk_sent']} udp junk datagrams",
    ]
    if "rss_mb" in g:
        lines.append(
            f"gateway   {g['samples']} samples: RSS {g['rss_mb']['first']:.1f} -> "
            f"{g['rss_mb']['last']:.1f} MB "
            f"({g['rss_growth_mb']:+.2f} MB, {g['rss_growth_pct']:+.1f} %; max {g['rss_mb']['max']:.1f}), "
            f"PSS {g['pss_mb']['first']:.1f} -> {g['pss_mb']['last']:.1f} MB, fds {g['fds']['first']} -> "
            f"{g['fds']['last']}, processes {g['procs']['min']}-{g['procs']['max']}")
    else:
        lines.append(f"gateway   {g['samples']} samples, none with the daemon's memory")
    lines.append(
        f"          p99 verdict latency per second: median {num(g['p99_verdict_us']['median'])} us, "
        f"max {num(g['p99_verdict_us']['max'])} us (whole run {num(g['p99_verdict_us']['cumulative_last'])} "
        f"us); grants {g.get('grants', 'n/a')}; verdicts {g.get('verdicts', 'n/a')}; tracked sources max "
        f"{g['tracked_sources_max']}; queue drops {g.get('queue_dropped', 'n/a')} (kernel "
        f"{g.get('kernel_queue', {}).get('dropped', 'n/a')}); worker restarts "
        f"{g.get('worker_restarts', 'n/a')}")
    if g["errors"]["status"] or g["errors"]["metrics"]:
        lines.append(f"          sampling errors: status {g['errors']['status']}, "
                     f"metrics {g['errors']['metrics']}")
    for warning in s["warnings"]:
        lines.append(f"warning   {warning}")
    for ch in s["checks"]:
        lines.append(f"check     {'PASS' if ch['ok'] else 'FAIL'} {ch['name']}: {ch['detail']}")
    lines.append(f"result    {'PASS' if s['ok'] else 'FAIL'}")
    return "\n".join(lines)


def plot(by_role: dict[str, list[dict[str, Any]]], summary: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    t0 = float(summary["started"])
    samples = _kind(by_role.get("gateway", []), "sample")
    attempts = _kind(by_role.get("client", []), "attempt")
    loops = _kind(by_role.get("attacker", []), "loop")

    fig = Figure(figsize=(10, 9), dpi=100, layout="constrained")
    ax_mem, ax_lat, ax_ok = fig.subplots(3, 1, sharex=True)
    fig.suptitle(f"gatekeeper soak: {summary['duration_s']:.0f} s, "
                 f"{'PASS' if summary['ok'] else 'FAIL'}")

    mem = [s for s in samples if "rss_kb" in s]
    if mem:
        x = [float(s["t"]) - t0 for s in mem]
        ax_mem.plot(x, [float(s["rss_kb"]) / 1024 for s in mem], label="RSS (supervisor + workers)")
        ax_mem.plot(x, [float(s.get("pss_kb", 0)) / 1024 for s in mem], label="PSS")
        ax_mem.legend(loc="lower right")
    else:
        ax_mem.text(0.01, 0.05, "no memory samples of the daemon", transform=ax_mem.transAxes,
                    fontsize=9, color="tab:gray")
    ax_mem.set_ylabel("memory (MB)")
    ax_mem.set_ylim(bottom=0)
    ax_mem.grid(alpha=0.3)

    lat = [s for s in samples if s.get("p99_us") is not None and float(s["p99_us"]) > 0]
    width = max(2.0, float(summary["duration_s"]) / 40)
    if lat:
        ax_lat.plot([float(s["t"]) - t0 for s in lat], [float(s["p99_us"]) for s in lat], marker=".",
                    label="p99 verdict latency, exporter (per sample interval)")
    else:
        ax_lat.text(0.01, 0.05, "the exporter counted no verdicts: no verdict latency",
                    transform=ax_lat.transAxes, fontsize=9, color="tab:gray")
    connect = [a for a in attempts if a.get("ok") and "connect_ms" in a]
    if connect:
        bins_ms: dict[int, list[float]] = {}
        for a in connect:
            bins_ms.setdefault(int((float(a["t"]) - t0) // width), []).append(1000 * float(a["connect_ms"]))
        xs = [(b + 0.5) * width for b in sorted(bins_ms)]
        ax_lat.plot(xs, [_pct(v, 0.99) or 0.0 for _, v in sorted(bins_ms.items())], marker=".",
                    label=f"p99 client knock-to-connected ({width:g} s bins)")
    ax_lat.axhline(100, color="tab:red", linestyle="--", linewidth=1, label="100 us alert threshold")
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency (us, log)")
    ax_lat.legend(loc="lower right", fontsize=8)
    ax_lat.grid(alpha=0.3, which="both")

    if attempts:
        bins: dict[int, list[bool]] = {}
        for a in attempts:
            bins.setdefault(int((float(a["t"]) - t0) // width), []).append(bool(a.get("ok")))
        xs = [(b + 0.5) * width for b in sorted(bins)]
        ys = [100.0 * sum(v) / len(v) for _, v in sorted(bins.items())]
        ax_ok.plot(xs, ys, marker="o", label=f"client success rate ({width:g} s bins)")
        failed = [float(a["t"]) - t0 for a in attempts if not a.get("ok")]
        if failed:
            ax_ok.plot(failed, [0.0] * len(failed), "x", color="tab:red", label="failed attempt")
    bad = [float(lp["t"]) - t0 for lp in loops if int(lp.get("protected_accepted", 0)) > 0]
    if bad:
        ax_ok.plot(bad, [50.0] * len(bad), "v", color="black", label="unauthorised accept")
    ax_ok.axhline(100 * MIN_SUCCESS, color="tab:red", linestyle="--", linewidth=1, label="99 %")
    ax_ok.set_ylim(-5, 105)
    ax_ok.set_ylabel("success (%)")
    ax_ok.set_xlabel("seconds since the start")
    ax_ok.legend(loc="lower right")
    ax_ok.grid(alpha=0.3)
    fig.savefig(path)


def run_report(in_dir: str, out_dir: str, min_success: float = MIN_SUCCESS,
               max_growth_mb: float = MAX_RSS_GROWTH_MB, max_growth_pct: float = MAX_RSS_GROWTH_PCT) -> int:
    if not os.path.isdir(in_dir):
        raise SoakError(f"{in_dir}: no such directory")
    by_role, files, bad = load_records(in_dir)
    if not files:
        raise SoakError(f"{in_dir}: no .jsonl files")
    summary = summarise(by_role, files, bad, min_success, max_growth_mb, max_growth_pct)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, SUMMARY_FILE), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    plot(by_role, summary, os.path.join(out_dir, PLOT_FILE))
    print(format_summary(summary), flush=True)
    print(f"wrote {os.path.join(out_dir, SUMMARY_FILE)} and {os.path.join(out_dir, PLOT_FILE)}", flush=True)
    return 0 if summary["ok"] else 1


# -- the whole scenario in the namespace lab -------------------------------------------------

LAB_PORT = 22
LAB_KNOCK = ("7000:udp", "8000:tcp", "9000:udp")
LAB_OPEN_FOR = 5
START_TIMEOUT = 20.0
ROLE_FILES = ("client.jsonl", "attacker.jsonl", "gateway.jsonl", "lab.jsonl")


def lab_config(control: str) -> str:
    sequence = ", ".join(f'"{s}"' for s in LAB_KNOCK)
    return (
        "# written by gatekeeper soak lab\n"
        "[gatekeeper]\n"
        "workers = 2\n"
        'interfaces = ["eth0"]\n'
        f'control = "{control}"\n'
        "\n[[door]]\n"
        'name = "ssh"\n'
        f"sequence = [{sequence}]\n"
        f'opens = ["{LAB_PORT}:tcp"]\n'
        f"open_for = {LAB_OPEN_FOR}\n"
    )


def run_lab(duration: float, out: str, sources: int = 30, min_success: float = MIN_SUCCESS,
            max_growth_mb: float = MAX_RSS_GROWTH_MB, max_growth_pct: float = MAX_RSS_GROWTH_PCT) -> int:
    from gatekeeper.lab import CLIENT4, GW4, OTHER4, Lab, sigterm_unwinds

    duration = _check_duration(duration)
    if not 0 <= sources <= 100:
        raise SoakError("--sources must be 0-100")
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    strangers = sorted(p.name for p in Path(out).glob("*.jsonl") if p.name not in ROLE_FILES)
    if strangers:
        raise SoakError(f"{out}: holds other .jsonl files ({', '.join(strangers[:3])}), which the "
                        "report would merge; use an empty directory")
    for name in (*ROLE_FILES, SUMMARY_FILE, PLOT_FILE):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(out, name))

    extra = [f"203.0.113.{100 + i}" for i in range(sources)]
    me = [sys.executable, "-m", "gatekeeper"]
    sequence = ",".join(LAB_KNOCK)
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    print(f"gatekeeper soak lab: {duration:g} s; gateway {GW4} (door ssh {' '.join(LAB_KNOCK)} -> "
          f"{LAB_PORT}:tcp, open_for {LAB_OPEN_FOR} s, 2 workers), client {CLIENT4} + {len(extra)} "
          f"source addresses, attacker {OTHER4}; nothing leaves the lab", flush=True)
    exits: dict[str, int | None] = {}
    daemon_exit: int | None = None
    with sigterm_unwinds(), tempfile.TemporaryDirectory(prefix="gatekeeper-soak-") as tmp, \
            Lab() as lab:
        control = os.path.join(tmp, "control.sock")
        cfg = os.path.join(tmp, "soak.toml")
        with open(cfg, "w", encoding="utf-8") as f:
            f.write(lab_config(control))
        for address in extra:
            lab.add_address("client", address)
        lab.serve_tcp("gw", LAB_PORT)
        log_path = os.path.join(out, "daemon.log")
        with open(log_path, "w", encoding="utf-8") as log:
            daemon = lab.popen("gw", [*me, "run", "-c", cfg], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=log, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while "gatekeeper running" not in Path(log_path).read_text(errors="replace"):
            if daemon.poll() is not None or time.monotonic() > deadline:
                tail = Path(log_path).read_text(errors="replace").strip().splitlines()[-1:]
                raise SoakError(f"the daemon did not start (exit {daemon.poll()}): "
                                f"{tail[0] if tail else 'no output'}")
            time.sleep(0.05)
        print(f"[gw] gatekeeper run -c {cfg}: running (log: {log_path})", flush=True)

        d = f"{duration:g}"
        roles: dict[str, tuple[str, list[str]]] = {
            "gateway": ("gw", ["soak", "gateway", "--duration", d, "--socket", control,
                               "--out", os.path.join(out, "gateway.jsonl")]),
            "client": ("client", ["soak", "client", "--gateway", GW4, "--duration", d,
                                  "--sequence", sequence, "--port", str(LAB_PORT),
                                  *(["--sources", ",".join(extra)] if extra else []),
                                  "--out", os.path.join(out, "client.jsonl")]),
            "attacker": ("other", ["soak", "attacker", "--gateway", GW4, "--duration", d,
                                   "--sequence", sequence, "--port", str(LAB_PORT),
                                   "--out", os.path.join(out, "attacker.jsonl")]),
        }
        procs: dict[str, subprocess.Popen[Any]] = {}
        for name, (host, argv) in roles.items():
            shown = [a if len(a) < 80 else a[:60] + "..." for a in argv]
            print(f"[{host}] gatekeeper {shlex.join(shown)}", flush=True)
            with open(os.path.join(out, f"{name}.log"), "w", encoding="utf-8") as role_log:
                procs[name] = lab.popen(host, [*me, *argv], stdin=subprocess.DEVNULL,
                                        stdout=role_log, stderr=subprocess.STDOUT, env=env)
        until = time.monotonic() + duration + 60
        for name, proc in procs.items():
            try:
                exits[name] = proc.wait(max(1.0, until - time.monotonic()))
            except subprocess.TimeoutExpired:
                Lab.stop(proc, signal.SIGKILL, 5)
                exits[name] = None
            print(f"[{roles[name][0]}] {name} exited {exits[name]}: "
                  f"{_last_line(os.path.join(out, f'{name}.log'))}", flush=True)
        daemon_exit = Lab.stop(daemon, signal.SIGTERM, 15)
        print(f"[gw] daemon stopped with SIGTERM: exit {daemon_exit}", flush=True)
    with open(os.path.join(out, "lab.jsonl"), "w", encoding="utf-8") as f:
        f.write(json.dumps({"role": "lab", "kind": "end", "t": round(time.time(), 4),
                            "daemon_exit": daemon_exit, "role_exits": exits}) + "\n")
    return run_report(out, out, min_success, max_growth_mb, max_growth_pct)


def _last_line(path: str) -> str:
    try:
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"


# -- entry point -----------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    role = args.role
    try:
        if role == "client":
            return run_client(args.gateway, args.duration, args.sequence, args.port, args.out,
                              args.interval, args.timeout, args.sources, args.max_attempts)
        if role == "attacker":
            return run_attacker(args.gateway, args.duration, args.out, args.sequence, args.port,
                                args.rate, args.max_loops, args.seed)
        if role == "gateway":
            return run_gateway(args.duration, args.out, args.socket, args.metrics, args.interval)
        if role == "report":
            return run_report(args.in_dir, args.out, args.min_success, args.max_rss_growth_mb,
                              args.max_rss_growth_pct)
        if role == "lab":
            from gatekeeper.lab import LabError, Terminated

            try:
                return run_lab(args.duration, args.out, args.sources, args.min_success,
                               args.max_rss_growth_mb, args.max_rss_growth_pct)
            except (LabError, subprocess.TimeoutExpired) as exc:
                print(f"gatekeeper soak lab: FAILED: lab: {exc}", file=sys.stderr, flush=True)
                return 1
            except KeyboardInterrupt as exc:
                print("gatekeeper soak lab: interrupted; the lab was removed", file=sys.stderr,
                      flush=True)
                return 143 if isinstance(exc, Terminated) else 130
    except GatekeeperError:
        raise
    except OSError as exc:
        raise SoakError(f"soak {role}: {exc}") from None
    raise SoakError(f"soak: unknown role {role!r}")
