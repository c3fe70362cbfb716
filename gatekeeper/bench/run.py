"""``gatekeeper bench``: build a namespace lab, load gatekeeper, print what it does.

Throughput is measured by *draining*: the verdicting processes are stopped (SIGSTOP),
the queue is filled with a known number of packets from the client namespace, then
they are resumed (SIGCONT) and timed until the kernel's queue is empty again. Sending
150k+ packets a second from Python on two cores would measure the sender; a full queue
measures the reader alone. The baseline is the same drain into a drop-only
NetfilterQueue loop on the same queue and rules (:mod:`gatekeeper.bench.bare`); a
second one drains with gatekeeper's own batched reader and no decisions, the floor of
that reader.

The default config exports metrics, so the worker times every verdict for the latency
histogram (``Worker.record``, once a batch). The same drain with ``[metrics] listen = ""``,
run back to back with it on the same packets, gives the cost of that instrumentation as
a share of throughput; the same packets through both callbacks in process
(:mod:`gatekeeper.bench.overhead`) give it without the machine's noise.

With several workers the same drain gives the aggregate, and the bare loop on as many
queues shows how far the machine itself lets two readers scale.

Latency is the callback's own time, timed inside the worker (opt-in, see
:data:`gatekeeper.queue.worker.TIMING_ENV`) while a paced sender offers about half of
the drained rate. Knock-to-connected comes from real knocks and connect()s; memory per
tracked source from tracemalloc and from RSS growth, each in a fresh process. Every
loop is bounded in count and time; nothing leaves the lab, which is removed on exit
(Ctrl-C and SIGTERM included).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from gatekeeper import native
from gatekeeper.bench import memory, overhead, traffic
from gatekeeper.client.knock import FIRST_SYN_TIMEOUT
from gatekeeper.lab import GW4, GW6, Lab, LabError, Terminated, sigterm_unwinds
from gatekeeper.model import DEFAULT_BATCH
from gatekeeper.queue.worker import TIMING_ENV

START_TIMEOUT = 30.0
SETTLE_SECONDS = 0.08  # the queue counts as filled once it stops growing for this long
POLL_SECONDS = 0.002  # while draining: 0.1-1% of the time, and little CPU taken from the readers
PROC_QUEUES = "net/netfilter/nfnetlink_queue"
KNOCK_STEPS = "7000:udp,8000:tcp,9000:udp"
KNOCK_V4 = "203.0.113.100"  # .100-.249: 150 addresses
KNOCK_V6 = "2001:db8:1::100:0"
KNOCK_PORT = 22
# A drain round must fit in one queue: the kernel here holds at most 65,536 packets a
# queue whatever queue_maxlen says (the rest is dropped, and counted as queue_dropped).
DEFAULT_PACKETS = 60_000


# One datagram to the gateway in each family (to the discard port: gatekeeper is not
# running yet, so the gateway drops it quietly), so the client knows its link address.
_PRIME = f"""
import socket, time
for family, address in ((socket.AF_INET, "{GW4}"), (socket.AF_INET6, "{GW6}")):
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.sendto(b"", (address, 9))
time.sleep(0.2)
"""


class BenchFailure(Exception):
    """Something in the lab did not behave; one line for the user."""


# -- reading the kernel -----------------------------------------------------------------------


@dataclass(frozen=True)
class QueueStat:
    portid: int
    waiting: int
    queue_dropped: int
    user_dropped: int
    id_sequence: int


def read_queues(pid: int) -> dict[int, QueueStat]:
    """/proc/net/netfilter/nfnetlink_queue of the network namespace ``pid`` lives in."""
    out: dict[int, QueueStat] = {}
    with open(f"/proc/{pid}/{PROC_QUEUES}", encoding="ascii") as f:
        for line in f:
            v = [int(x) for x in line.split()]
            out[v[0]] = QueueStat(v[1], v[2], v[5], v[6], v[7])
    return out


def cpu_seconds(pid: int) -> tuple[float, float, float]:
    """(on-CPU time from /proc/PID/sched, user, system from /proc/PID/stat), in seconds."""
    total = math.nan
    try:
        with open(f"/proc/{pid}/sched", encoding="ascii") as f:
            for line in f:
                if line.startswith("se.sum_exec_runtime"):
                    total = float(line.split(":")[1]) / 1000.0
                    break
    except OSError:
        pass
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    user, system = int(fields[11]) / tick, int(fields[12]) / tick
    return (total if not math.isnan(total) else user + system), user, system


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


# -- programs in the gateway ------------------------------------------------------------------


class Reader:
    """Reads a child's output lines in a thread; lets the bench wait for one."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self.closed = False
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                with self._cond:
                    self.lines.append(line.rstrip("\n"))
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str] | None:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    m = regex.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    return None
                self._cond.wait(left)

    def tail(self, n: int = 3) -> str:
        with self._cond:
            return " | ".join(self.lines[-n:]) or "no output"


@dataclass
class Target:
    """A program verdicting the gateway's queues: ``gatekeeper run`` or the bare loop."""

    name: str
    proc: subprocess.Popen[str]
    log: Reader
    pids: dict[int, int]  # queue -> pid of the process reading it

    @property
    def netns_pid(self) -> int:
        return self.proc.pid  # `ip netns exec` execs: the same pid, inside the gateway


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("JOURNAL_STREAM", "INVOCATION_ID", "NOTIFY_SOCKET", TIMING_ENV)}
    env.update(extra or {})
    return env


def start_gatekeeper(lab: Lab, config: str, env: dict[str, str] | None = None) -> Target:
    proc: subprocess.Popen[str] = lab.popen(
        "gw", [sys.executable, "-m", "gatekeeper", "run", "-c", config],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(env),
    )
    assert proc.stderr is not None
    log = Reader(proc.stderr)
    m = log.wait_for(r"gatekeeper running: queues=([\d,]+)(?: pids=([\d,]+))?", START_TIMEOUT)
    if m is None:
        Lab.stop(proc)
        raise BenchFailure(f"gatekeeper run did not start: {log.tail()}")
    queues = [int(q) for q in m.group(1).split(",")]
    if m.group(2):
        pids = [int(p) for p in m.group(2).split(",")]
    else:  # an older supervisor that does not log them: its children, in start order
        out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True,
                             check=False).stdout
        pids = sorted(int(p) for p in out.split())
    if len(pids) != len(queues):
        Lab.stop(proc)
        raise BenchFailure(f"found {len(pids)} worker(s) for queues {queues}")
    return Target("gatekeeper", proc, log, dict(zip(queues, pids, strict=True)))


def start_bare(lab: Lab, config: str, queues: Sequence[int], batched: bool = False) -> Target:
    proc: subprocess.Popen[str] = lab.popen(
        "gw", [sys.executable, "-m", "gatekeeper.bench.bare", config, *(["--batch"] if batched else [])],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env(),
    )
    assert proc.stdout is not None
    log = Reader(proc.stdout)
    m = log.wait_for(r"ready pids=([\d,]+)", START_TIMEOUT)
    if m is None:
        Lab.stop(proc)
        raise BenchFailure(f"the bare NetfilterQueue loop did not start: {log.tail()}")
    pids = [int(p) for p in m.group(1).split(",")]
    return Target("bare", proc, log, dict(zip(queues, pids, strict=True)))


def stop(target: Target) -> None:
    for pid in target.pids.values():  # never leave one stopped, whatever happened
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    code = Lab.stop(target.proc, signal.SIGTERM, 20)
    if code not in (0, -signal.SIGTERM):
        raise BenchFailure(f"{target.name} exited with {code}: {target.log.tail()}")


# -- the drain --------------------------------------------------------------------------------


@dataclass
class Drain:
    sent: int
    refused: int  # by the client's own stack (sendto failed): never reached the gateway
    queued: dict[int, int]  # per queue
    seconds: dict[int, float]  # per queue: SIGCONT until its queue was empty
    queue_dropped: int
    user_dropped: int
    cpu: dict[int, tuple[float, float, float]]  # per queue: on-CPU, user, system seconds
    fill_rate: float

    @property
    def total(self) -> int:
        return sum(self.queued.values())

    @property
    def rate(self) -> float:
        """Aggregate verdicts a second: every queued packet over the time until all were done."""
        return self.total / max(self.seconds.values())

    def per_worker(self, queue: int) -> float:
        return self.queued[queue] / self.seconds[queue]

    def cpu_per_packet_us(self, part: int = 0) -> float:
        """On-CPU microseconds a verdict, summed over the readers (part 1: user, 2: system)."""
        return 1e6 * sum(c[part] for c in self.cpu.values()) / max(1, self.total)


def send(lab: Lab, packet_file: str, *, rate: float = 0.0, seconds: float = 60.0,
         repeat: int = 1) -> dict[str, Any]:
    argv = [sys.executable, "-m", "gatekeeper.bench.sender", packet_file, "--rate", str(rate),
            "--seconds", str(seconds), "--repeat", str(repeat)]
    out = lab.run("client", argv, timeout=seconds + 60).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def drain(lab: Lab, target: Target, packet_file: str, timeout: float = 60.0) -> Drain:
    """Stop the readers, fill their queues from the client, resume them, time the drain."""
    ns_pid = target.netns_pid
    queues = sorted(target.pids)
    before = read_queues(ns_pid)
    for pid in target.pids.values():
        os.kill(pid, signal.SIGSTOP)
    resumed = False
    try:
        sent = send(lab, packet_file)
        # wait until nothing more arrives (the last packets may still be on their way)
        last, stable_since = -1, time.perf_counter()
        deadline = stable_since + 10.0
        while time.perf_counter() < deadline:
            now_q = read_queues(ns_pid)
            total = sum(now_q[q].waiting for q in queues)
            if total != last:
                last, stable_since = total, time.perf_counter()
            elif time.perf_counter() - stable_since >= SETTLE_SECONDS:
                break
            time.sleep(0.005)
        filled = read_queues(ns_pid)
        cpu_before = {q: cpu_seconds(target.pids[q]) for q in queues}
        start = time.perf_counter()
        for pid in target.pids.values():
            os.kill(pid, signal.SIGCONT)
        resumed = True
        done: dict[int, float] = {}
        deadline = start + timeout
        while len(done) < len(queues):
            now = time.perf_counter()
            if now > deadline:
                raise BenchFailure(f"{target.name}: the queue did not drain within {timeout:g} s")
            stats = read_queues(ns_pid)
            for q in queues:
                if q not in stats:
                    raise BenchFailure(f"{target.name}: NFQUEUE {q} went away while draining")
                if q not in done and stats[q].waiting == 0:
                    done[q] = now - start
            time.sleep(POLL_SECONDS)
        cpu_after = {q: cpu_seconds(target.pids[q]) for q in queues}
    finally:
        if not resumed:
            for pid in target.pids.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
    after = read_queues(ns_pid)
    return Drain(
        sent=int(sent["sent"]),
        refused=int(sent["refused"]),
        queued={q: filled[q].waiting for q in queues},
        seconds=done,
        queue_dropped=sum(after[q].queue_dropped - before[q].queue_dropped for q in queues),
        user_dropped=sum(after[q].user_dropped - before[q].user_dropped for q in queues),
        cpu={q: (cpu_after[q][0] - cpu_before[q][0], cpu_after[q][1] - cpu_before[q][1],
                 cpu_after[q][2] - cpu_before[q][2]) for q in queues},
        fill_rate=float(sent["sent"]) / max(1e-9, float(sent["seconds"])),
    )


# -- the phases -------------------------------------------------------------------------------


@dataclass
class Options:
    packets: int
    rounds: int
    knocks: int
    latency_seconds: float
    memory_sources: int
    workers: int
    quick: bool
    profile: str = ""
    batch: int = DEFAULT_BATCH


@dataclass
class Results:
    mix: list[traffic.Mix] = field(default_factory=list)
    bare: list[Drain] = field(default_factory=list)
    bare_batch: list[Drain] = field(default_factory=list)
    one: list[Drain] = field(default_factory=list)  # metrics on: the default config
    one_off: list[Drain] = field(default_factory=list)  # the same with [metrics] listen = ""
    bare_many: list[Drain] = field(default_factory=list)
    many: list[Drain] = field(default_factory=list)
    latency: dict[str, float] = field(default_factory=dict)
    knocks: list[dict[str, Any]] = field(default_factory=list)
    mem: list[memory.MemoryResult] = field(default_factory=list)
    bounded: tuple[int, int, int] = (0, 0, 0)
    in_process: overhead.Overhead | None = None  # the instrumentation without the kernel
    load: float = 0.0
    knock_split: str = ""


def _say(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


def _write_config(tmp: str, name: str, workers: int, maxlen: int, metrics: bool = True,
                  batch: int = DEFAULT_BATCH) -> str:
    path = os.path.join(tmp, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(traffic.config_text(workers=workers, maxlen=maxlen, metrics=metrics, batch=batch))
    return path


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def _drain_with(lab: Lab, start: Callable[[], Target], path: str) -> Drain:
    target = start()
    try:
        return drain(lab, target, path)
    finally:
        stop(target)


def run_throughput(lab: Lab, opts: Options, tmp: str, res: Results) -> None:
    maxlen = min(1_000_000, max(4096, int(opts.packets * 1.25)))
    cfg1 = _write_config(tmp, "one.toml", 1, maxlen, batch=opts.batch)
    cfg1_off = _write_config(tmp, "one-nometrics.toml", 1, maxlen, metrics=False, batch=opts.batch)
    cfgn = _write_config(tmp, "many.toml", opts.workers, maxlen, batch=opts.batch)
    many = list(range(opts.workers))
    for r in range(opts.rounds):
        mix = traffic.build(opts.packets, round_=r)
        res.mix.append(mix)
        path = os.path.join(tmp, f"round{r}.bin")
        with open(path, "wb") as f:
            f.write(traffic.dump(mix.packets))
        step = f"round {r + 1}/{opts.rounds}:"
        # what is compared runs back to back on the same packets, in turns first, so a
        # drift of the machine's speed falls on all alike: gatekeeper (metrics on, the
        # default) sits between the bare loop and itself with metrics off, whatever the order
        groups: list[list[tuple[str, list[Drain], Callable[[], Target]]]] = [[
            ("bare loop", res.bare, lambda: start_bare(lab, cfg1, [0])),
            ("bare batch loop", res.bare_batch, lambda: start_bare(lab, cfg1, [0], batched=True)),
            ("gatekeeper, 1 worker", res.one, lambda: start_gatekeeper(lab, cfg1)),
            ("gatekeeper, 1 worker, metrics off", res.one_off, lambda: start_gatekeeper(lab, cfg1_off)),
        ]]
        if opts.workers > 1:
            groups.append([
                (f"bare loop, {opts.workers} queues", res.bare_many,
                 lambda: start_bare(lab, cfgn, many)),
                (f"gatekeeper, {opts.workers} workers", res.many, lambda: start_gatekeeper(lab, cfgn)),
            ])
        for group in groups:
            for name, into, start in group[:: -1 if r % 2 else 1]:
                _say(f"{step} {name}")
                into.append(_drain_with(lab, start, path))


def run_overhead(opts: Options, res: Results) -> None:
    _say("instrumentation in process: round 1's packets through decide_batch, plain and timed")
    passes = 3 if opts.quick else 7
    res.in_process = overhead.measure(res.mix[0].packets, traffic.config_text(), passes=passes)


def run_profile(lab: Lab, opts: Options, tmp: str, res: Results) -> None:
    """py-spy samples one worker while it drains each round's packets once more."""
    assert opts.profile
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.access(spy, os.X_OK):
        raise BenchFailure("--profile needs py-spy (pip install py-spy)")
    kind = {".svg": "flamegraph", ".json": "speedscope"}.get(os.path.splitext(opts.profile)[1], "raw")
    _say(f"profile: py-spy on one worker, {len(res.mix)} drain(s), to {opts.profile} ({kind})")
    gk = start_gatekeeper(lab, os.path.join(tmp, "one.toml"))
    try:
        spy_proc = subprocess.Popen(
            [spy, "record", "-p", str(gk.pids[0]), "-r", "1000", "--nonblocking", "-f", kind,
             "-o", opts.profile], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1.0)  # attached and sampling
            for r in range(len(res.mix)):
                drain(lab, gk, os.path.join(tmp, f"round{r}.bin"))
        finally:
            spy_proc.send_signal(signal.SIGINT)
            _, err = spy_proc.communicate(timeout=60)
        if spy_proc.returncode != 0 or not os.path.exists(opts.profile):
            raise BenchFailure(f"py-spy failed: {err.strip().splitlines()[-1:] or spy_proc.returncode}")
    finally:
        stop(gk)


def run_latency(lab: Lab, opts: Options, tmp: str, res: Results) -> None:
    one_rate = _median([d.rate for d in res.one])
    rate = max(1000.0, 0.5 * one_rate)
    path = os.path.join(tmp, "round0.bin")
    count = len(res.mix[0].packets)
    repeat = max(1, math.ceil(rate * opts.latency_seconds / max(1, count)) + 1)
    timing = os.path.join(tmp, "timing")
    os.mkdir(timing)
    os.chmod(timing, 0o700)
    cfg = _write_config(tmp, "latency.toml", 1, max(4096, int(opts.packets * 1.25)), batch=opts.batch)
    _say(f"latency: paced at {rate:,.0f} packets/s for {opts.latency_seconds:g} s")
    gk = start_gatekeeper(lab, cfg, {TIMING_ENV: timing})
    backlog = [0]
    watching = threading.Event()
    watching.set()

    def watch() -> None:
        while watching.is_set():
            with contextlib.suppress(OSError, KeyError):
                backlog[0] = max(backlog[0], sum(s.waiting for s in read_queues(gk.netns_pid).values()))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    before = read_queues(gk.netns_pid)
    try:
        watcher.start()
        sent = send(lab, path, rate=rate, seconds=opts.latency_seconds, repeat=repeat)
        time.sleep(0.2)
        after = read_queues(gk.netns_pid)
    finally:
        watching.clear()
        watcher.join(2.0)
        stop(gk)
    samples = array("q")
    for name in os.listdir(timing):
        with open(os.path.join(timing, name), "rb") as f:
            samples.frombytes(f.read())
    values = sorted(samples)
    res.latency = {
        "target": rate,
        "offered": float(sent["sent"]) / max(1e-9, float(sent["seconds"])),
        "sent": float(sent["sent"]),
        "refused": float(sent["refused"]),
        "timed": float(len(values)),
        "p50": percentile(values, 50) / 1000,
        "p99": percentile(values, 99) / 1000,
        "p999": percentile(values, 99.9) / 1000,
        "max": (values[-1] / 1000) if values else math.nan,
        "backlog": float(backlog[0]),
        "queue_dropped": float(sum(after[q].queue_dropped - before[q].queue_dropped for q in after)),
        "user_dropped": float(sum(after[q].user_dropped - before[q].user_dropped for q in after)),
    }


def run_knocks(lab: Lab, opts: Options, tmp: str, res: Results) -> None:
    n6 = opts.knocks // 2
    n4 = min(150, opts.knocks - n6)
    n6 = opts.knocks - n4
    res.knock_split = f"{n4} IPv4, {n6} IPv6"
    for i in range(n4):
        lab.add_address("client", str(ipaddress.IPv4Address(KNOCK_V4) + i))
    for i in range(n6):
        lab.add_address("client", str(ipaddress.IPv6Address(KNOCK_V6) + i))
    cfg = _write_config(tmp, "knock.toml", opts.workers, 4096, batch=opts.batch)
    _say(f"knock -> connect from {opts.knocks} sources ({n4} IPv4, {n6} IPv6)")
    gk = start_gatekeeper(lab, cfg)
    try:
        for host, n, first in ((GW4, n4, KNOCK_V4), (GW6, n6, KNOCK_V6)):
            if n:
                argv = [sys.executable, "-m", "gatekeeper.bench.probe", "trials", host,
                        str(KNOCK_PORT), str(n), first, KNOCK_STEPS]
                out = lab.run("client", argv, timeout=30 + 3 * n).stdout
                res.knocks += json.loads(out)
    finally:
        stop(gk)


def run_memory(opts: Options, res: Results) -> None:
    _say(f"memory: {opts.memory_sources} sources, each measure in a fresh process")
    for family in (4, 6):
        for method in memory.METHODS:
            res.mem.append(memory.measure_apart(opts.memory_sources, family, method))
    cap = 65536 if not opts.quick else 1024
    fed = cap + cap // 2
    res.bounded = (cap, fed, memory.bounded(cap, fed))


# -- the report -------------------------------------------------------------------------------


def _spread(values: Sequence[float], fmt: str) -> str:
    """Median, and [min - max] when there is more than one value."""
    if not values:
        return "n/a"
    text = format(_median(values), fmt)
    if len(values) > 1:
        text += f"  [{format(min(values), fmt)} - {format(max(values), fmt)}]"
    return text


def _ratios(a: Sequence[Drain], b: Sequence[Drain]) -> list[float]:
    """Per round: a's rate over b's (the two ran back to back on the same packets)."""
    return [x.rate / y.rate for x, y in zip(a, b, strict=True)]


def report(opts: Options, res: Results, lab: Lab, out: Callable[[str], None]) -> None:
    w = opts.workers
    load = os.getloadavg()[0]
    out("")
    out(f"gatekeeper bench: {os.cpu_count()} CPUs ({platform.machine()}), Linux {platform.release()}, "
        f"Python {platform.python_version()}; load average {res.load:.2f} at the start, "
        f"{load:.2f} at the end")
    out(f"hot path (decode, engine, worker): {native.describe()}; batch = {opts.batch} "
        "(packets a worker reads and verdicts at once)")
    if opts.quick:
        out("--quick: a smoke test; its drains last milliseconds, so its figures mean little")
    out(f"traffic a round: {res.mix[0].describe()}")
    decided = res.mix[0].decisions()
    n = sum(decided.values()) or 1
    out("  the engine decides: " + ", ".join(
        f"{reason} {100 * count / n:.1f}%" for reason, count in decided.most_common()))
    out("")
    out(f"THROUGHPUT  drain method, {opts.rounds} round(s) of {opts.packets:,} packets; "
        "median [min - max]")
    out("  the readers are stopped (SIGSTOP), the queue filled from the client namespace, the "
        "readers resumed (SIGCONT) and timed until the queue is empty")
    rows: list[tuple[str, str, str]] = [
        ("bare drop-only NetfilterQueue loop, 1 queue", _spread([d.rate for d in res.bare], ",.0f"),
         _spread([d.cpu_per_packet_us() for d in res.bare], ".2f")),
        ("bare drop-only batch loop (_nfq), 1 queue", _spread([d.rate for d in res.bare_batch], ",.0f"),
         _spread([d.cpu_per_packet_us() for d in res.bare_batch], ".2f")),
        ("gatekeeper, 1 worker", _spread([d.rate for d in res.one], ",.0f"),
         _spread([d.cpu_per_packet_us() for d in res.one], ".2f")),
        ("gatekeeper, 1 worker, metrics off", _spread([d.rate for d in res.one_off], ",.0f"),
         _spread([d.cpu_per_packet_us() for d in res.one_off], ".2f")),
    ]
    if res.many:
        rows += [
            (f"bare drop-only loop, {w} queues (aggregate)",
             _spread([d.rate for d in res.bare_many], ",.0f"),
             _spread([d.cpu_per_packet_us() for d in res.bare_many], ".2f")),
            (f"gatekeeper, {w} workers (aggregate)", _spread([d.rate for d in res.many], ",.0f"),
             _spread([d.cpu_per_packet_us() for d in res.many], ".2f")),
            (f"gatekeeper, {w} workers, per worker",
             _spread([d.per_worker(q) for d in res.many for q in d.queued], ",.0f"), ""),
        ]
    out(f"  {'':<46} {'verdicts/s':<28} CPU us a verdict")
    for name, rate, cpu in rows:
        out(f"  {name:<46} {rate:<28} {cpu}")
    # user and system time come in clock ticks (10 ms): split the precise on-CPU time by
    # their shares, and only when a drain lasted long enough for them to mean something
    split = [(name, [d for d in drains if sum(c[1] + c[2] for c in d.cpu.values()) >= 0.2])
             for name, drains in (("bare loop", res.bare), ("1 worker", res.one))]
    if all(drains for _, drains in split):
        parts = []
        for name, drains in split:
            user = _median([d.cpu_per_packet_us() * d.cpu_per_packet_us(1)
                            / max(1e-9, d.cpu_per_packet_us(1) + d.cpu_per_packet_us(2)) for d in drains])
            parts.append(f"{name} {user:.2f} + {_median([d.cpu_per_packet_us() for d in drains]) - user:.2f}")
        out("  CPU us a verdict, user (Python) + system (kernel: recv, verdict, the packet's end): "
            + "; ".join(parts))
    out("")
    out(f"  {'gatekeeper 1 worker / bare loop':<46} {_spread(_ratios(res.one, res.bare), '.2f')}")
    out(f"  {'gatekeeper 1 worker / bare batch loop':<46} "
        f"{_spread(_ratios(res.one, res.bare_batch), '.2f')}")
    out("    (the first is the yardstick: NetfilterQueue's own loop, a packet at a time; the second "
        f"is the same reader the worker uses, batches of {opts.batch}, deciding nothing)")
    # metrics on against off, per round (they ran back to back on the same packets)
    cost = [100.0 * (1.0 - x) for x in _ratios(res.one, res.one_off)]
    extra_cpu = [a.cpu_per_packet_us() - b.cpu_per_packet_us()
                 for a, b in zip(res.one, res.one_off, strict=True)]
    rounds = f"  [{min(cost):.1f}% - {max(cost):.1f}%]" if len(cost) > 1 else ""
    out(f"  instrumentation cost: {_median(cost):.1f}% of throughput (target < 15%){rounds}; "
        f"{_median(extra_cpu):+.2f} us CPU a verdict")
    out("    (1 worker, metrics on - the default: every verdict timed into the latency histogram - "
        "against metrics off)")
    if res.in_process is not None:
        extra = res.in_process.extra_us
        off_cpu = _median([d.cpu_per_packet_us() for d in res.one_off])
        out(f"    in process, without the kernel: decide_batch {res.in_process.plain_ns / 1000:.2f} us, "
            "timed "
            f"{res.in_process.metered_ns / 1000:.2f} us a verdict ({extra:+.2f} us): "
            f"{100 * extra / (off_cpu + extra):.1f}% of throughput when a verdict costs the drained "
            f"{off_cpu:.2f} us CPU without metrics")
    if res.many:
        scale = _ratios(res.many, res.one)
        machine = _ratios(res.bare_many, res.bare)
        out(f"  {f'gatekeeper {w} workers / 1 worker':<46} {_spread(scale, '.2f')}")
        out(f"  {f'bare loop {w} queues / 1 queue (the machine)':<46} {_spread(machine, '.2f')}")
        share = _median([max(d.queued.values()) / d.total for d in res.many])
        out("")
        out("  model: k workers drain k queues in parallel: aggregate = k x one worker's rate x e "
            "(the parallel efficiency), limited by the busiest queue.")
        out(f"    HMARK gave the busiest of {w} queues {100 * share:.1f}% of the packets: "
            f"at most {1 / share:.2f}x.")
        out(f"    the bare loop, with no Python work to speak of, reaches {_median(machine):.2f}x on "
            f"this machine: that is what {w} cores give {w} NFQUEUE readers here;")
        out(f"    gatekeeper reaches {_median(scale):.2f}x, {100 * _median(scale) / _median(machine):.0f}% "
            "of the machine's own scaling.")
        out(f"    this machine has {os.cpu_count()} cores in all. While a queue drains nothing arrives, "
            "so the readers have them to themselves (the kernel's verdict work runs in their own "
            "system time);")
        out("    under live traffic the same cores also carry the softirq work of receiving and "
            f"queueing every packet, so live capacity with {w} workers is lower than the drained one.")
    fill = _median([d.fill_rate for d in res.one])
    out(f"  (one Python raw-socket sender filled the queue at {fill:,.0f} packets/s)")
    out("")
    lat = res.latency
    out("LATENCY  each packet's read-to-verdict time (perf_counter_ns from the recvmmsg that brought it "
        "to the send that carried its verdict), 1 worker, paced load")
    short = " - as fast as one Python sender goes here" if lat["offered"] < 0.95 * lat["target"] else ""
    out(f"  offered {lat['offered']:,.0f} packets/s (target {lat['target']:,.0f}/s: half the 1-worker "
        f"median{short}), {lat['timed']:,.0f} verdicts timed, queue backlog max {lat['backlog']:,.0f}")
    out(f"  p50 {lat['p50']:.1f} us   p99 {lat['p99']:.1f} us   p99.9 {lat['p999']:.1f} us   "
        f"max {lat['max']:.1f} us")
    out("")
    ok = [k for k in res.knocks if k["ok"]]
    total = sorted(k["total_ms"] for k in ok)
    conn = sorted(k["ms"] for k in ok)
    out(f"KNOCK TO CONNECTED  {len(res.knocks)} sources ({res.knock_split}), {w} worker(s); knock "
        f"{KNOCK_STEPS.replace(',', ' ')}, then connect() to port {KNOCK_PORT}, "
        f"{FIRST_SYN_TIMEOUT} s timeout")
    out(f"  first SYN accepted {len(ok)}/{len(res.knocks)}; first knock sent -> connected: median "
        f"{percentile(total, 50):.2f} ms, p99 {percentile(total, 99):.2f} ms; connect() alone: median "
        f"{percentile(conn, 50):.2f} ms, p99 {percentile(conn, 99):.2f} ms")
    out("")
    out(f"MEMORY  per tracked source, {opts.memory_sources:,} sources part-way through a sequence "
        "(address bytes included; 3 doors, 4 tracks)")
    for family in (4, 6):
        got = {m.method: m for m in res.mem if m.family == family}
        t, r = got["tracemalloc"], got["rss"]
        out(f"  IPv{family}: {t.per_source:.0f} bytes/source allocated (tracemalloc), {r.per_source:.0f} "
            f"bytes/source resident (RSS growth); {t.tracked:,} tracked")
    cap, fed, kept = res.bounded
    out(f"  bounded: {fed:,} sources fed to a table of max_sources = {cap:,}: {kept:,} tracked")
    worst = max((m.per_source for m in res.mem), default=0.0)
    out(f"  so the default max_sources (65,536) holds at most about {65536 * worst / 1e6:.0f} MB a worker")
    out("")
    out("QUEUE DROPS  /proc/net/netfilter/nfnetlink_queue: queue_dropped (queue full), "
        "queue_user_dropped (socket full)")
    runs = [("bare loop, 1 queue", res.bare), ("bare batch loop, 1 queue", res.bare_batch),
            ("gatekeeper, 1 worker", res.one),
            ("gatekeeper, 1 worker, metrics off", res.one_off),
            (f"bare loop, {w} queues", res.bare_many), (f"gatekeeper, {w} workers", res.many)]
    width = max(len(name) for name, _ in runs)
    for name, drains in runs:
        if drains:
            sent = sum(d.sent for d in drains)
            queued = sum(d.total for d in drains)
            refused = sum(d.refused for d in drains)
            out(f"  {name:<{width}} sent {sent:>9,}  queued {queued:>9,}  queue_dropped "
                f"{sum(d.queue_dropped for d in drains):>6,}  queue_user_dropped "
                f"{sum(d.user_dropped for d in drains):>6,}"
                + (f"  (and {refused:,} refused by the sender's own stack)" if refused else ""))
    out(f"  {'latency run':<{width}} sent {lat['sent']:>9,.0f}  queue_dropped {lat['queue_dropped']:,.0f}  "
        f"queue_user_dropped {lat['user_dropped']:,.0f}"
        + (f"  (and {lat['refused']:,.0f} refused by the sender's own stack)" if lat["refused"] else ""))
    out("  (sent but not queued: TCP headers under 4 bytes and ICMPv6 under 8, which the ruleset's "
        "own multiport and icmp6 matches drop before the queue)")


# -- main -------------------------------------------------------------------------------------


def options(args: argparse.Namespace) -> Options:
    quick = bool(args.quick)
    return Options(
        packets=args.packets or (3000 if quick else DEFAULT_PACKETS),
        rounds=args.rounds or (1 if quick else 7),
        knocks=args.knocks or (6 if quick else 100),
        latency_seconds=args.seconds or (0.5 if quick else 4.0),
        memory_sources=args.sources or (5000 if quick else 100_000),
        workers=args.workers,
        quick=quick,
        batch=getattr(args, "batch", 0) or DEFAULT_BATCH,
        profile=os.path.abspath(args.profile) if getattr(args, "profile", None) else "",
    )


def main(args: argparse.Namespace) -> int:
    opts = options(args)
    if not 100 <= opts.packets <= 1_000_000:
        print("gatekeeper bench: --packets must be 100-1000000", file=sys.stderr)
        return 2
    if not 1 <= opts.workers <= 8 or not 1 <= opts.rounds <= 20 or not 1 <= opts.knocks <= 1000:
        print("gatekeeper bench: --workers 1-8, --rounds 1-20, --knocks 1-1000", file=sys.stderr)
        return 2
    print(f"gatekeeper bench: {opts.rounds} round(s) of {opts.packets:,} packets, "
          f"{opts.workers} workers for scaling, {opts.knocks} knocks; nothing leaves the lab; "
          f"hot path: {native.describe()}", flush=True)
    res = Results(load=os.getloadavg()[0])

    def body() -> None:
        with sigterm_unwinds(), tempfile.TemporaryDirectory(prefix="gatekeeper-bench-") as tmp, \
                Lab(f"gkb{os.getpid() % 10000}") as lab:
            lab.serve_tcp("gw", KNOCK_PORT)
            lab.python("client", _PRIME)  # the gateway's link address, before the first burst
            run_throughput(lab, opts, tmp, res)
            run_overhead(opts, res)
            if opts.profile:
                run_profile(lab, opts, tmp, res)
            run_latency(lab, opts, tmp, res)
            run_knocks(lab, opts, tmp, res)
            run_memory(opts, res)
            report(opts, res, lab, print)
            if opts.profile:
                print(f"\nPROFILE  py-spy samples of one worker draining every round: {opts.profile}")

    return guarded(body)


def guarded(body: Callable[[], None]) -> int:
    """Run a bench in its lab: 0, or 1 with one line on stderr when it failed (the lab
    is removed either way), 130/143 when interrupted."""
    try:
        body()
    except BenchFailure as exc:
        print(f"gatekeeper bench: FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    except (LabError, subprocess.TimeoutExpired, OSError) as exc:
        print(f"gatekeeper bench: FAILED: lab: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt as exc:
        print("gatekeeper bench: interrupted; the lab was removed", file=sys.stderr, flush=True)
        return 143 if isinstance(exc, Terminated) else 130
    return 0

