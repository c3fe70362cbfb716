"""The bench's phases: throughput (drains, in turns), the instrumentation in process, an
optional profile, latency under paced load, knock-to-connected and memory; each fills
:class:`Results`."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gatekeeper.lab.bench import junk, memory, overhead, traffic
from gatekeeper.lab.bench.drain import Drain, drain, send
from gatekeeper.lab.bench.kernel import percentile, read_queues
from gatekeeper.lab.bench.targets import BenchFailure, Target, start_bare, start_gatekeeper, stop
from gatekeeper.lab.netns import GW4, GW6, Lab
from gatekeeper.model import DEFAULT_BATCH
from gatekeeper.queue.worker import TIMING_ENV

KNOCK_STEPS = "7000:udp,8000:tcp,9000:udp"
KNOCK_V4 = "203.0.113.100"  # .100-.249: 150 addresses
KNOCK_V6 = "2001:db8:1::100:0"
KNOCK_PORT = 22
# A drain round must fit in one queue: the kernel here holds at most 65,536 packets a
# queue whatever queue_maxlen says (the rest is dropped, and counted as queue_dropped).
DEFAULT_PACKETS = 60_000


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
    junk: junk.JunkCost | None = None  # junk to random high UDP ports, udp-any off and on
    load: float = 0.0
    knock_split: str = ""


def _say(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


def _write_config(tmp: str, name: str, workers: int, maxlen: int, metrics: bool = True,
                  batch: int = DEFAULT_BATCH) -> str:
    """A config in ``tmp``, with a control socket of its own beside it (the bench reads its
    workers' pids from the status there)."""
    path = os.path.join(tmp, name)
    control = os.path.join(tmp, os.path.splitext(name)[0] + ".sock")
    with open(path, "w", encoding="utf-8") as f:
        f.write(traffic.config_text(workers=workers, maxlen=maxlen, metrics=metrics, batch=batch,
                                    control=control))
    return path


def median(values: Sequence[float]) -> float:
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


def run_junk(opts: Options, res: Results) -> None:
    _say("junk to random high UDP ports in process: an SPA door with udp-any off, then on")
    res.junk = junk.measure(2000 if opts.quick else 20_000, passes=3 if opts.quick else 7)


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
    one_rate = median([d.rate for d in res.one])
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
                argv = [sys.executable, "-m", "gatekeeper.lab.bench.probe", "trials", host,
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


