"""``gatekeeper bench``: build a namespace lab, load gatekeeper, print what it does.

Throughput is measured by *draining*: the verdicting processes are stopped (SIGSTOP),
the queue is filled with a known number of packets from the client namespace, then
they are resumed (SIGCONT) and timed until the kernel's queue is empty again. Sending
150k+ packets a second from Python on two cores would measure the sender; a full queue
measures the reader alone. The baseline is the same drain into a drop-only
NetfilterQueue loop on the same queue and rules (:mod:`gatekeeper.lab.bench.bare`); a
second one drains with gatekeeper's own batched reader and no decisions, the floor of
that reader.

The default config exports metrics, so the worker times every verdict for the latency
histogram (``Worker.record``, once a batch). The same drain with ``[metrics] listen = ""``,
run back to back with it on the same packets, gives the cost of that instrumentation as
a share of throughput; the same packets through both callbacks in process
(:mod:`gatekeeper.lab.bench.overhead`) give it without the machine's noise.

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
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable

from gatekeeper import native
from gatekeeper.lab.bench.phases import (
    DEFAULT_PACKETS,
    KNOCK_PORT,
    Options,
    Results,
    run_junk,
    run_knocks,
    run_latency,
    run_memory,
    run_overhead,
    run_profile,
    run_throughput,
)
from gatekeeper.lab.bench.report import report
from gatekeeper.lab.bench.targets import BenchFailure
from gatekeeper.lab.netns import GW4, GW6, Lab, LabError, Terminated, sigterm_unwinds
from gatekeeper.model import DEFAULT_BATCH


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
            lab.program("client", "prime", GW4, GW6)  # the gateway's link address, before the first burst
            run_throughput(lab, opts, tmp, res)
            run_overhead(opts, res)
            run_junk(opts, res)
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

