"""The instrumentation's own cost, measured in process, away from the kernel.

With metrics on, the worker times every batch it reads (two ``perf_counter_ns`` calls
and a bisect into the histogram's buckets, :meth:`Worker.record`) around
:meth:`Worker.decide_batch`. Here the bench's packets go through the worker in
batches of :data:`~gatekeeper.queue.worker.BATCH` (the default ``[gatekeeper] batch``),
plain and timed, in this process, with stand-in grants: no queue, no netlink, none of
the machine's other work. Passes alternate between the two and each keeps its
fastest, so the difference is the instrumentation's cost alone, steadier than the
drains' (whose spread on a shared machine is often wider than the cost itself).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gatekeeper.config.load as config_mod
from gatekeeper.model import Door
from gatekeeper.queue.worker import BATCH, Worker


class _Grants:
    def add(self, address: str, door: Door, seconds: float, steps: Any = None) -> int:
        return 0

    def remove(self, address: str, door: Door, steps: Any = None) -> None:
        pass

    def add_nat(self, address: str, door: Door, seconds: float, step: Any, host: str,
                port: int) -> None:
        pass


def _ignore(_message: object) -> None:
    pass


@dataclass(frozen=True)
class Overhead:
    plain_ns: float  # a verdict through decide_batch
    metered_ns: float  # the same, timed into the histogram as the worker's drain does

    @property
    def extra_us(self) -> float:
        return (self.metered_ns - self.plain_ns) / 1000


def measure(packets: Sequence[bytes], config_text: str, passes: int = 5) -> Overhead:
    """ns a verdict each way, the fastest of ``passes`` passes each; every pass starts
    from a fresh worker, so each sees the same engine states."""
    config = config_mod.loads(config_text)
    batches = [list(packets[i:i + BATCH]) for i in range(0, len(packets), BATCH)]
    best = {"plain": math.inf, "metered": math.inf}
    clock = time.perf_counter_ns
    for i in range(passes):
        for name in ("plain", "metered") if i % 2 == 0 else ("metered", "plain"):
            worker = Worker(config, _Grants(), _ignore)
            decide = worker.decide_batch
            now = time.monotonic()
            start = clock()
            if name == "plain":
                for batch in batches:
                    decide(batch, now)
            else:
                record = worker.record
                for batch in batches:
                    began = clock()
                    decide(batch, now)
                    record(len(batch), clock() - began)
            best[name] = min(best[name], (clock() - start) / max(1, len(packets)))
    return Overhead(best["plain"], best["metered"])
