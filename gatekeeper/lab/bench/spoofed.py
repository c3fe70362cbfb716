"""The spoofed flood of ``gatekeeper bench --flood`` against one daemon: the C senders
(:file:`gatekeeper/lab/programs/flood.c`), the lab's counters, the CPU the flood cost.

:class:`FloodBench` compiles the sender, prepares the lab (the gateway's reverse-path check
off for the spoofed sources, a counting rule in its raw table, the legitimate client's
addresses) and runs one :class:`Sample` at a time against a fresh daemon;
:mod:`gatekeeper.lab.bench.flood` says what is measured and how.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatekeeper.daemon.control import request
from gatekeeper.errors import GatekeeperError
from gatekeeper.lab import programs
from gatekeeper.lab.bench import traffic
from gatekeeper.lab.bench.kernel import cpu_seconds, read_queues
from gatekeeper.lab.bench.phases import KNOCK_PORT, KNOCK_STEPS, KNOCK_V4, KNOCK_V6
from gatekeeper.lab.bench.targets import BenchFailure, Target, start_gatekeeper, stop
from gatekeeper.lab.netns import GW4, GW6, Lab
from gatekeeper.netfilter.prefilter import SET_PROGRESS

FLOOD4, FLOOD6 = "198.18.0.0/15", "2001:db8:1:ffff::/64"
DOOR_PORT = 7000  # the ssh door's first step (udp)
# packets a second one sender is asked for; above, two share the rate (one sender reached
# 67k - 81k/s here with a daemon: the gateway's receive path runs in its system calls)
ONE_SENDER = 50_000
SHORT = 0.9  # senders below this share of their rate: the lab's limit


@dataclass(frozen=True)
class Plan:
    share_rate: float
    share_seconds: float
    first_rate: float
    max_rate: float
    tries: int
    warmup: float
    door_warmup: float
    door_failures: int
    quick: bool

@dataclass
class Sample:
    """One flood against one fresh daemon (or the floor: none), read off the gateway."""

    mode: str
    target: float  # packets a second asked of the senders
    sent: int = 0
    refused: int = 0
    seconds: float = 0.0
    reached: int = 0  # flood packets that reached the gateway's netfilter
    queued: int = 0  # packets the queues received (their ids)
    queue_dropped: int = 0
    user_dropped: int = 0
    pre_dropped: dict[str, int] = field(default_factory=dict)
    irq: float = 0.0  # the machine's interrupt seconds over the flood, its idle rate taken off
    senders_cpu: float = 0.0
    daemon_cpu: float = 0.0
    trials: list[dict[str, Any]] = field(default_factory=list)
    defences: dict[str, int] = field(default_factory=dict)
    tracked: int = 0
    progress: int = 0  # entries in the prefilter's progress sets at the end (IPv4 + IPv6)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> int:
        return sum(1 for t in self.trials if t["ok"])

    @property
    def share(self) -> float:
        return self.queued / self.sent if self.sent else math.nan

    def per_packet_us(self, seconds: float) -> float:
        return 1e6 * seconds / self.reached if self.reached else math.nan

    @property
    def cpu(self) -> float:
        """CPU seconds the flood cost: the senders, the daemon, the machine's interrupts."""
        return self.senders_cpu + self.daemon_cpu + self.irq

    @property
    def uncounted(self) -> int:
        """Flood packets the gateway dropped that neither the queues nor the prefilter's
        counters saw (a rule that drops by itself, as ``hashlimit`` does when its table is full)."""
        seen = self.queued + self.queue_dropped + sum(self.pre_dropped.values())
        return max(0, self.reached - seen)

    @property
    def short(self) -> bool:
        return self.rate < SHORT * self.target

def machine_irq() -> float:
    """Seconds the machine's CPUs spent in interrupts since boot (``/proc/stat``: irq + softirq)."""
    with open("/proc/stat", encoding="ascii") as f:
        v = [int(x) for x in f.readline().split()[1:8]]
    return float(v[5] + v[6]) / os.sysconf("SC_CLK_TCK")


def daemon_cpu(gk: Target | None) -> float:
    """On-CPU seconds of the supervisor and its workers so far (0 without a daemon)."""
    if gk is None:
        return 0.0
    return sum(cpu_seconds(pid)[0] for pid in (gk.proc.pid, *gk.pids.values()))

class FloodBench:
    def __init__(self, lab: Lab, tmp: str, p: Plan) -> None:
        self.lab, self.tmp, self.plan = lab, tmp, p
        self.sender = os.path.join(tmp, "flood")
        source = Path(programs.__file__).with_name("flood.c")
        done = subprocess.run(["gcc", "-O2", "-Wall", "-o", self.sender, str(source)],
                              capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise BenchFailure(f"gcc {source}: {done.stderr.strip() or done.returncode}")
        self.seed = 0
        self.control = ""  # the control socket of the daemon started last

    # -- the lab ------------------------------------------------------------------------

    def prepare(self) -> None:
        """Spoofed sources pass the gateway's reverse-path check; the raw table counts them;
        the client holds the legitimate sources (fresh daemons: the same ones each time)."""
        for key in ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.eth0.rp_filter"):
            self.lab.sysctl("gw", key, "0")
        for tool, net in (("iptables", FLOOD4), ("ip6tables", FLOOD6)):
            self.lab.run("gw", [tool, "-t", "raw", "-A", "PREROUTING", "-s", net])
        n4 = self.plan.tries // 2
        for i in range(n4):
            self.lab.add_address("client", str(ipaddress.IPv4Address(KNOCK_V4) + i))
        for i in range(self.plan.tries - n4):
            self.lab.add_address("client", str(ipaddress.IPv6Address(KNOCK_V6) + i))
        self.lab.program("other", "prime", GW4, GW6)
        self.lab.program("client", "prime", GW4, GW6)

    def config(self, mode: str, quotas: bool = True) -> str:
        name = f"flood-{mode}{'' if quotas else '-noquota'}"
        self.control = os.path.join(self.tmp, name + ".sock")
        text = traffic.config_text(workers=2, control=self.control)
        if quotas:  # the product's defaults, which the throughput bench turns off
            text = text.replace("prefix_quota = 0\nprefix_failure_limit = 0\n", "")
        on = "true" if mode == "on" else "false"
        text = text.replace("[gatekeeper]\n", f'[gatekeeper]\nprefilter = {on}\nstate_dir = ""\n', 1)
        path = os.path.join(self.tmp, name + ".toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def reached(self) -> int:
        total = 0
        for tool, net in (("iptables-save", FLOOD4), ("ip6tables-save", FLOOD6)):
            text = self.lab.run("gw", [tool, "-c", "-t", "raw"]).stdout
            m = re.search(rf"^\[(\d+):\d+\] -A PREROUTING -s {re.escape(net)}$", text, re.M)
            if m is None:
                raise BenchFailure(f"the raw table's counting rule for {net} is gone")
            total += int(m.group(1))
        return total

    def _fresh(self) -> None:
        self.lab.run("gw", ["conntrack", "-F"], check=False)
        for tool in ("iptables", "ip6tables"):
            self.lab.run("gw", [tool, "-t", "raw", "-Z", "PREROUTING"])

    # -- the senders ----------------------------------------------------------------------

    def start_flood(self, rate: float, seconds: float, door: bool = False) -> list[subprocess.Popen[str]]:
        n = 1 if rate <= ONE_SENDER else 2
        procs = []
        for _ in range(n):
            self.seed += 1
            argv = [self.sender, "--dst4", GW4, "--dst6", GW6, "--seed", str(self.seed),
                    "--rate", f"{rate / n:.0f}", "--seconds", f"{seconds:g}",
                    "--count", str(int(rate / n * seconds) + 1)]
            if door:
                argv += ["--port", str(DOOR_PORT), "--proto", "udp"]
            procs.append(self.lab.popen("other", argv, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE))
        return procs

    def end_flood(self, procs: list[subprocess.Popen[str]], into: Sample, wait: float) -> None:
        """Wait up to ``wait`` seconds for the senders to end on their own, then SIGTERM them;
        their JSON lines summed into ``into``."""
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=max(0.1, wait))
            except subprocess.TimeoutExpired:
                self.lab.stop(proc)
                out, err = proc.communicate(timeout=10)
            wait = 0.1
            try:
                got = json.loads(out.strip().splitlines()[-1])
            except (ValueError, IndexError):
                raise BenchFailure(f"the flood sender printed no result: {err.strip()[-200:]}") from None
            into.sent += int(got["sent"])
            into.refused += int(got["refused"])
            into.seconds = max(into.seconds, float(got["seconds"]))
            into.senders_cpu += float(got["user"]) + float(got["system"])

    # -- one measure ----------------------------------------------------------------------

    def measure(self, mode: str, rate: float, *, seconds: float = 0.0, tries: int = 0,
                max_failures: int = 2, door: bool = False, quotas: bool = True) -> Sample:
        """A flood at ``rate`` against a fresh daemon (mode ``floor``: none, a raw DROP):
        for ``seconds`` without a client, or while ``tries`` legitimate clients try."""
        self._fresh()
        sample = Sample(mode, rate)
        gk: Target | None = None
        floor = ("iptables", FLOOD4), ("ip6tables", FLOOD6)
        try:
            if mode == "floor":
                for tool, net in floor:
                    self.lab.run("gw", [tool, "-t", "raw", "-A", "PREROUTING", "-s", net, "-j", "DROP"])
            else:
                gk = start_gatekeeper(self.lab, self.config(mode, quotas))
            self._run(sample, gk, rate, seconds, tries, max_failures, door)
        finally:
            if gk is not None:
                stop(gk)
            if mode == "floor":
                for tool, net in floor:
                    self.lab.run("gw", [tool, "-t", "raw", "-D", "PREROUTING", "-s", net, "-j", "DROP"],
                                 check=False)
        return sample

    def _run(self, sample: Sample, gk: Target | None, rate: float, seconds: float, tries: int,
             max_failures: int, door: bool) -> None:
        idle0, t0 = machine_irq(), time.monotonic()
        time.sleep(1.0 if not tries else 0.0)
        idle_rate = (machine_irq() - idle0) / (time.monotonic() - t0) if not tries else 0.0
        q0 = read_queues(gk.netns_pid) if gk else {}
        w0 = daemon_cpu(gk)
        d0 = self._dropped(gk)
        irq0, t1 = machine_irq(), time.monotonic()
        if tries:
            bound = self.plan.door_warmup if door else self.plan.warmup
            procs = self.start_flood(rate, bound + 30 + 1.5 * tries, door)
            try:
                time.sleep(bound)
                sample.trials = self._trials(tries, max_failures)
            finally:
                self.end_flood(procs, sample, 0)
        else:
            procs = self.start_flood(rate, seconds, door)
            self.end_flood(procs, sample, seconds + 30)
        time.sleep(0.2)  # the last packets through the gateway
        sample.irq = machine_irq() - irq0 - idle_rate * (time.monotonic() - t1)
        sample.reached = self.reached()
        if gk is None:
            return
        q1 = read_queues(gk.netns_pid)
        sample.queued = sum(q1[q].id_sequence - q0[q].id_sequence for q in q1 if q in q0)
        sample.queue_dropped = sum(q1[q].queue_dropped - q0[q].queue_dropped for q in q1 if q in q0)
        sample.user_dropped = sum(q1[q].user_dropped - q0[q].user_dropped for q in q1 if q in q0)
        sample.daemon_cpu = daemon_cpu(gk) - w0
        d1 = self._dropped(gk)
        sample.pre_dropped = {k: v - d0.get(k, 0) for k, v in d1.items()}
        status = self._status(gk)
        sample.defences = {k: int(v) for k, v in status.get("defences", {}).items()}
        sample.tracked = sum(int(w.get("tracked", 0)) for w in status.get("workers", []))
        sample.progress = self._progress()

    def _progress(self) -> int:
        """Entries in the gateway's progress sets (0 when there are none: prefilter off)."""
        total = 0
        for name in SET_PROGRESS.values():
            out = self.lab.run("gw", ["ipset", "list", "-t", name], check=False).stdout
            m = re.search(r"^Number of entries: (\d+)", out, re.M)
            total += int(m.group(1)) if m else 0
        return total

    def _status(self, gk: Target) -> dict[str, Any]:
        """The status of the daemon started last (on the control socket :meth:`config` named)."""
        try:
            return request(self.control)
        except (GatekeeperError, OSError, ValueError) as exc:
            raise BenchFailure(f"the status of gatekeeper run: {exc}") from None

    def _dropped(self, gk: Target | None) -> dict[str, int]:
        if gk is None:
            return {}
        pre = self._status(gk).get("prefilter", {})
        return {k: int(v) for k, v in pre.get("dropped", {}).items()}

    def _trials(self, tries: int, max_failures: int) -> list[dict[str, Any]]:
        """Knock and connect from ``tries`` fresh sources, half IPv4, half IPv6."""
        n4 = tries // 2
        out: list[dict[str, Any]] = []
        for host, n, first in ((GW4, n4, KNOCK_V4), (GW6, tries - n4, KNOCK_V6)):
            left = max_failures - sum(1 for r in out if not r["ok"])
            if n and left > 0:
                argv = [sys.executable, "-m", "gatekeeper.lab.bench.probe", "trials", host,
                        str(KNOCK_PORT), str(n), first, KNOCK_STEPS, str(left)]
                out += json.loads(self.lab.run("client", argv, timeout=30 + 3 * n).stdout)
        return out
