"""The drain: the readers stopped, their queues filled from the client namespace, the
readers resumed and timed until the kernel's queues are empty again."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from gatekeeper.lab.bench.kernel import cpu_seconds, read_queues
from gatekeeper.lab.bench.targets import BenchFailure, Target
from gatekeeper.lab.netns import Lab

SETTLE_SECONDS = 0.08  # the queue counts as filled once it stops growing for this long
POLL_SECONDS = 0.002  # while draining: 0.1-1% of the time, and little CPU taken from the readers


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
    argv = [sys.executable, "-m", "gatekeeper.lab.bench.sender", packet_file, "--rate", str(rate),
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


