"""The instrumentation's own cost, measured in process, away from the kernel.

With metrics on, the worker binds :meth:`Worker._metered_on_packet`, which times every
verdict (two ``perf_counter_ns`` calls and a bisect into the histogram's buckets) around
:meth:`Worker.on_packet`. Here the bench's packets go through both callbacks in this
process, with stand-in packets and grants: no queue, no netlink, none of the machine's
other work. Passes alternate between the two and each keeps its fastest, so the
difference is the instrumentation's cost alone, steadier than the drains' (whose
spread on a shared machine is often wider than the cost itself).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gatekeeper import config as config_mod
from gatekeeper.config import Door
from gatekeeper.queue.worker import Worker


class _Packet:
    """What the callbacks use of a NetfilterQueue packet."""

    __slots__ = ("_payload",)

    def __init__(self, payload: bytes) -> None:
        self._payload = payload

    def get_payload(self) -> bytes:
        return self._payload

    def accept(self) -> None:
        pass

    def drop(self) -> None:
        pass


class _Grants:
    def add(self, address: str, door: Door, seconds: float, steps: Any = None) -> int:
        return 0

    def remove(self, address: str, door: Door, steps: Any = None) -> None:
        pass


def _ignore(_message: dict[str, Any]) -> None:
    pass


@dataclass(frozen=True)
class Overhead:
    plain_ns: float  # a verdict through on_packet
    metered_ns: float  # the same through _metered_on_packet

    @property
    def extra_us(self) -> float:
        return (self.metered_ns - self.plain_ns) / 1000


def measure(packets: Sequence[bytes], config_text: str, passes: int = 5) -> Overhead:
    """ns a verdict through each callback, the fastest of ``passes`` passes each; every
    pass starts from a fresh worker, so each sees the same engine states."""
    config = config_mod.loads(config_text)
    stand_ins = [_Packet(p) for p in packets]
    best = {"plain": math.inf, "metered": math.inf}
    for i in range(passes):
        for name in ("plain", "metered") if i % 2 == 0 else ("metered", "plain"):
            worker = Worker(config, _Grants(), _ignore)
            callback = worker.on_packet if name == "plain" else worker._metered_on_packet
            start = time.perf_counter_ns()
            for pkt in stand_ins:
                callback(pkt)
            best[name] = min(best[name], (time.perf_counter_ns() - start) / max(1, len(stand_ins)))
    return Overhead(best["plain"], best["metered"])
