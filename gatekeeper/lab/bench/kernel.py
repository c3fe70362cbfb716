"""What the bench reads off the kernel: the NFQUEUE instances of a namespace and a
process's CPU time, from /proc; and the nearest-rank percentile of its figures."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from gatekeeper.netfilter import procfs
from gatekeeper.netfilter.procfs import QueueStat


def read_queues(pid: int) -> dict[int, QueueStat]:
    """/proc/net/netfilter/nfnetlink_queue of the network namespace ``pid`` lives in (the
    product's one reader of that file)."""
    return procfs.read_queues(f"/proc/{pid}/net/netfilter/nfnetlink_queue")


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
    """Nearest-rank percentile of already sorted values (NaN for none): the lab's one."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


