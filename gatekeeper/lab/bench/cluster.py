"""``gatekeeper bench --cluster``: the shared store ([cluster]) beside the local engine.

Builds the two-gateway lab (:mod:`gatekeeper.lab.cluster`) with a redis-server in the store
namespace, and runs the same measurements with the local config and with the same config
plus ``[cluster]``, back to back and in turns:

* 1-worker verdict throughput: the drain of :mod:`gatekeeper.lab.bench.run` over the same mix
  (knocks, unauthorised SYNs, junk, malformed); only knocks and first packets to protected
  ports consult the store;
* knock-to-connected: knock three ports, then connect() to the gateway at once;
* the store's round trip per hot-path call (knock script or grant lookup), from the
  daemon's own histogram (``gatekeeper_cluster_seconds``);
* the mirror: a grant made through one gateway, until the other gateway's kernel set has it.

The store is flushed before each cluster run, so no run inherits another's grants.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from gatekeeper.lab.bench import traffic
from gatekeeper.lab.bench.drain import Drain, drain
from gatekeeper.lab.bench.kernel import percentile
from gatekeeper.lab.bench.phases import KNOCK_PORT, KNOCK_STEPS, KNOCK_V4, median
from gatekeeper.lab.bench.run import guarded, options
from gatekeeper.lab.bench.targets import BenchFailure, Target, start_gatekeeper, stop
from gatekeeper.lab.cluster import STORE4, STORE_PORT, ClusterLab
from gatekeeper.lab.netns import GW4, GW6, sigterm_unwinds

MODES = ("local", "cluster")
METRICS_URL = "http://127.0.0.1:9464/metrics"


def _say(text: str) -> None:
    print(f"  .. {text}", flush=True)


class Bench:
    def __init__(self, lab: ClusterLab, tmp: str, packets: int) -> None:
        self.lab = lab
        self.tmp = tmp
        maxlen = min(1_000_000, max(4096, int(packets * 1.25)))
        store = f'\n[cluster]\nredis = "{lab.redis_url()}"\n'
        self.configs = {}
        for mode, control in (("local", "local.sock"), ("cluster", "cluster.sock"), ("gw2", "")):
            # (gw2, the mirror's second gateway, runs beside gw: no control socket of its own)
            text = traffic.config_text(workers=1, maxlen=maxlen,
                                       control=os.path.join(tmp, control) if control else "")
            text += store if mode != "local" else ""
            path = os.path.join(tmp, f"{mode}.toml")
            with open(path, "w", encoding="utf-8") as f:
                f.write(text.replace("[gatekeeper]\n", "[gatekeeper]\nstate_dir = \"\"\n", 1))
            self.configs[mode] = path
        self.drains: dict[str, list[Drain]] = {m: [] for m in MODES}
        self.knocks: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
        self.store_rtt: list[float] = []  # mean seconds a call, per cluster run
        self.store_calls = 0
        self.mirror_ms: list[float] = []

    def flush(self) -> None:
        self.lab.run("store", ["redis-cli", "-h", STORE4, "-p", str(STORE_PORT), "flushall"])

    def start(self, mode: str) -> Target:
        if mode == "cluster":
            self.flush()
        return start_gatekeeper(self.lab, self.configs[mode])

    def store_figures(self) -> None:
        text = self.lab.program("gw", "fetch", METRICS_URL)
        total = re.search(r"^gatekeeper_cluster_seconds_sum (\S+)", text, re.M)
        count = re.search(r"^gatekeeper_cluster_seconds_count (\S+)", text, re.M)
        if total and count and float(count.group(1)):
            self.store_rtt.append(float(total.group(1)) / float(count.group(1)))
            self.store_calls += int(float(count.group(1)))

    def throughput(self, rounds: int, packets: int) -> None:
        for r in range(rounds):
            mix = traffic.build(packets, round_=r)
            path = os.path.join(self.tmp, f"round{r}.bin")
            with open(path, "wb") as f:
                f.write(traffic.dump(mix.packets))
            if r == 0:
                _say(f"mix: {mix.describe()}")
            for mode in MODES[:: -1 if r % 2 else 1]:
                _say(f"round {r + 1}/{rounds}: drain, 1 worker, {mode}")
                target = self.start(mode)
                try:
                    self.drains[mode].append(drain(self.lab, target, path))
                finally:
                    stop(target)

    def knock_trials(self, n: int) -> None:
        for i in range(n):
            self.lab.add_address("client", str(ipaddress.IPv4Address(KNOCK_V4) + i))
        for mode in MODES:
            _say(f"knock -> connect from {n} sources, {mode}")
            target = self.start(mode)
            try:
                argv = [sys.executable, "-m", "gatekeeper.lab.bench.probe", "trials", GW4,
                        str(KNOCK_PORT), str(n), KNOCK_V4, KNOCK_STEPS]
                out = self.lab.run("client", argv, timeout=30 + 3 * n).stdout
                self.knocks[mode] = json.loads(out)
                if mode == "cluster":
                    time.sleep(1.0)  # the worker's next snapshot reaches the exporter
                    self.store_figures()
            finally:
                stop(target)

    def mirror(self, n: int) -> None:
        """Knock through gw, time until gw2's kernel set holds the grant (both gateways run)."""
        _say(f"mirror delay: {n} grants made through gw, watched in gw2's kernel set")
        self.flush()
        first = self.start("cluster")
        second = self.lab.popen("gw2", [sys.executable, "-m", "gatekeeper", "run", "-c",
                                        self.configs["gw2"]],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while "gatekeeper-in4" not in self.lab.run("gw2", ["ipset", "list", "-n"]).stdout:
                if time.monotonic() > deadline or second.poll() is not None:
                    raise BenchFailure("the second gateway did not start")
                time.sleep(0.1)
            time.sleep(1.0)  # its mirror connects and resyncs
            base = ipaddress.IPv4Address(KNOCK_V4)
            for i in range(n):
                source = str(base + i)  # (added by knock_trials; their grants went with gw's sets)
                watcher = self.lab.popen("gw2", self.lab.program_argv("watch_set", source),
                                         stdout=subprocess.PIPE)
                assert watcher.stdout is not None
                if watcher.stdout.readline().strip() != "watching":
                    raise BenchFailure("the watcher did not start")
                knocked = float(self.lab.program("client", "knock_from", GW4, source, KNOCK_STEPS))
                line = watcher.stdout.readline().strip()
                self.lab.stop(watcher)
                if line.startswith("seen "):
                    self.mirror_ms.append((float(line.split()[1]) - knocked) * 1000)
        finally:
            self.lab.stop(second)
            stop(first)


def report(b: Bench) -> None:
    say = print
    say("\nCLUSTER  the shared store ([cluster], redis-server 198.51.100.100 over a veth bridge) "
        "beside the local engine")
    say("  verdict throughput, 1 worker (drain; median of rounds [min - max]):")
    for mode in MODES:
        rates = [d.rate for d in b.drains[mode]]
        if rates:
            say(f"    {mode:<8} {median(rates):>10,.0f} verdicts/s  [{min(rates):,.0f} - {max(rates):,.0f}]"
                f"  ({len(rates)} round(s) of {b.drains[mode][0].total:,} packets)")
    say("  knock -> connected (3 knocks, then connect() at once; ms):")
    for mode in MODES:
        trials = b.knocks[mode]
        ok = [t for t in trials if t["ok"]]
        total = [t["total_ms"] for t in ok]
        knock = [t["knock_ms"] for t in ok]
        connect = [t["ms"] for t in ok]
        if trials:
            say(f"    {mode:<8} first-SYN {len(ok)}/{len(trials)}; knock->connected median "
                f"{median(total):.2f} p90 {percentile(sorted(total), 90):.2f}; "
                f"knocks sent in {median(knock):.2f}, "
                f"connect {median(connect):.2f}")
    if b.store_rtt:
        say(f"  store round trip per hot-path call (knock script or grant lookup): mean "
            f"{1e6 * median(b.store_rtt):.0f} us over {b.store_calls} calls")
    if b.mirror_ms:
        say(f"  mirror: grant made through gw, in gw2's kernel set after median "
            f"{median(b.mirror_ms):.1f} ms, max {max(b.mirror_ms):.1f} ms ({len(b.mirror_ms)} grants; "
            "from the first knock sent; polled every 2 ms)")


def main(args: argparse.Namespace) -> int:
    opts = options(args)
    packets = opts.packets if args.packets else (3000 if opts.quick else 20_000)
    rounds = opts.rounds if args.rounds else (1 if opts.quick else 3)
    knocks = opts.knocks if args.knocks else (6 if opts.quick else 50)
    print(f"gatekeeper bench --cluster: {rounds} round(s) of {packets:,} packets, {knocks} knocks, "
          "local and cluster in turns; nothing leaves the lab", flush=True)

    def body() -> None:
        lab = ClusterLab(f"gkcb{os.getpid() % 10000}")
        with sigterm_unwinds(), tempfile.TemporaryDirectory(prefix="gatekeeper-bench-") as tmp, lab:
            lab.start_redis()
            lab.serve_tcp("gw", KNOCK_PORT)
            lab.program("client", "prime", GW4, GW6)
            b = Bench(lab, tmp, packets)
            b.throughput(rounds, packets)
            b.knock_trials(knocks)
            b.mirror(min(knocks, 20))
            report(b)

    return guarded(body)

