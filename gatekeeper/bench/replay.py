"""A fixed replay of the bench's traffic through ``Worker.on_packet``, for instruction counts.

    python -m gatekeeper.bench.replay PASSES

Round 1's packets of ``gatekeeper bench`` go through a fresh worker's callback PASSES
times, with stand-ins implemented in C (the packet's ``get_payload``, ``accept`` and
``drop``; a clock that advances 10 us a packet), so the replay adds no Python frames
of its own and is the same on every run. ``scripts/callgrind.sh`` runs it under
valgrind with 0 and 2 passes: the difference over the verdicts is the instructions a
verdict costs, a figure that load on a shared machine does not move (wall-clock
times do). Prints the fastest pass's ns a verdict and the reasons' counts to stderr.
"""

from __future__ import annotations

import itertools
import sys
import time
from types import SimpleNamespace
from typing import Any

from gatekeeper import config as config_mod
from gatekeeper import native
from gatekeeper.bench import overhead, traffic
from gatekeeper.queue.worker import Worker

PACKETS = 60_000


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    passes = int(args[0]) if args else 1
    config = config_mod.loads(traffic.config_text())
    packets: list[Any] = [
        SimpleNamespace(get_payload=itertools.repeat(p).__next__, accept=int, drop=int)
        for p in traffic.build(PACKETS, round_=0).packets
    ]
    best = float("inf")
    counts: list[int] = []
    for _ in range(passes):
        worker = Worker(config, overhead._Grants(), overhead._ignore,
                        clock=itertools.count(0.0, 1e-5).__next__)
        callback = worker.on_packet
        start = time.perf_counter_ns()
        for pkt in packets:
            callback(pkt)
        best = min(best, (time.perf_counter_ns() - start) / len(packets))
        counts = worker.counts
    if passes:
        print(f"{native.describe()}: {len(packets)} verdicts a pass, fastest of {passes} passes "
              f"{best:.0f} ns a verdict; reasons {counts}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
