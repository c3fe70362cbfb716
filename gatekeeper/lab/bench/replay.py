"""A fixed replay of the bench's traffic through ``Worker.decide_batch``, for instruction counts.

    python -m gatekeeper.lab.bench.replay PASSES

Round 1's packets of ``gatekeeper bench`` go through a fresh worker PASSES times, in
batches of :data:`~gatekeeper.queue.worker.BATCH` (the default ``[gatekeeper] batch``)
as a read brings them, each batch at a clock 10 us a packet later, so the replay is the
same on every run. ``scripts/callgrind.sh`` runs it under valgrind with 0 and 2 passes:
the difference over the verdicts is the instructions a verdict costs, a figure that
load on a shared machine does not move (wall-clock times do). Prints the fastest pass's
ns a verdict and the reasons' counts to stderr.
"""

from __future__ import annotations

import sys
import time

import gatekeeper.config.load as config_mod
from gatekeeper import native
from gatekeeper.lab.bench import overhead, traffic
from gatekeeper.queue.worker import BATCH, Worker

PACKETS = 60_000


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    passes = int(args[0]) if args else 1
    config = config_mod.loads(traffic.config_text())
    packets = traffic.build(PACKETS, round_=0).packets
    batches = [(packets[i:i + BATCH], i * 1e-5) for i in range(0, len(packets), BATCH)]
    best = float("inf")
    counts: list[int] = []
    for _ in range(passes):
        worker = Worker(config, overhead._Grants(), overhead._ignore)
        decide = worker.decide_batch
        start = time.perf_counter_ns()
        for batch, now in batches:
            decide(batch, now)
        best = min(best, (time.perf_counter_ns() - start) / len(packets))
        counts = worker.counts
    if passes:
        print(f"{native.describe()}: {len(packets)} verdicts a pass, fastest of {passes} passes "
              f"{best:.0f} ns a verdict; reasons {counts}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
