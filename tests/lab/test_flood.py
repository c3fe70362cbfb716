"""A spoofed-source flood for 60 s while a legitimate client knocks and connects.

The flood's sources are random addresses in the benchmarking range 198.18.0.0/15 (RFC
2544; 131,072 of them, twice the state table's cap) and random addresses inside one IPv6
/64; every packet is addressed to the lab's gateway and never leaves the namespaces.
Each flood packet is a first knock (the costliest: it creates state) or junk.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.lab.bench.traffic import dump, step
from gatekeeper.lab.netns import GW4, Lab
from tests.fixtures.configs import SSH, config
from tests.lab.support import probe

SECONDS = 60
LEGIT = 100
RATE = 40_000  # what this lab sustains without the kernel dropping packets before netfilter
MAX_SOURCES = 65536
PREFIX_QUOTA = 64  # the default: sources of one /24 or /64 part-way through a sequence
FLOOD_PREFIXES = 512 + 1  # 198.18.0.0/15 holds 512 /24s; the IPv6 flood is one /64


def flood_packets(count: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    gw4, gw6 = bytes(map(int, GW4.split("."))), bytes.fromhex("20010db8000100000000000000000001")
    out = []
    for i in range(count):
        if i % 2:
            src = bytes([198, 18 + rng.getrandbits(1), rng.getrandbits(8), rng.getrandbits(8)])
            dst = gw4
        else:
            src = bytes.fromhex("20010db80001ffff") + rng.getrandbits(64).to_bytes(8, "big")
            dst = gw6
        if rng.random() < 0.5:
            out.append(step(src, dst, 17, 7000))  # the first knock of the ssh door
        else:
            out.append(step(src, dst, rng.choice((6, 17)), rng.randrange(1, 65536)))
    return out


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


@pytest.fixture(scope="module")
def legitimate(lab: Lab) -> None:
    """The legitimate clients' addresses, once for the module's lab; spoofed sources let in."""
    for i in range(LEGIT):
        lab.add_address("client", f"203.0.113.{150 + i}")
    lab.sysctl("gw", "net.ipv4.conf.all.rp_filter", "0")
    lab.sysctl("gw", "net.ipv4.conf.eth0.rp_filter", "0")


@pytest.mark.parametrize("prefilter", [False, True], ids=["queued", "prefiltered"])
@pytest.mark.usefixtures("legitimate")
def test_spoofed_flood_does_not_keep_a_legitimate_client_out(
    lab: Lab, start_daemon: Any, tmp_path: Path, prefilter: bool
) -> None:
    """Prefiltered, the flood's first knocks fill the kernel's progress set (every flood
    source that sent one): the legitimate client's first knock must still get in it."""
    daemon = start_daemon(config(open_for=300).replace(
        "[gatekeeper]\n", f"[gatekeeper]\nprefilter = {str(prefilter).lower()}\n", 1))
    control = daemon.config.read_text().split('control = "', 1)[1].split('"', 1)[0]

    def status() -> dict[str, Any]:
        out = lab.run("gw", [sys.executable, "-m", "gatekeeper", "status", "--json", "-s", control])
        return dict(json.loads(out.stdout))

    pids = [daemon.proc.pid] + [w["pid"] for w in status()["workers"]]
    rss_before = rss_kb(pids)
    packets = tmp_path / "flood.bin"
    packets.write_bytes(dump(flood_packets(200_000)))
    packets.chmod(0o644)
    flood = lab.popen("other", [sys.executable, "-m", "gatekeeper.lab.bench.sender", str(packets),
                                "--seconds", str(SECONDS), "--repeat", "1000", "--rate", str(RATE)],
                      stdout=subprocess.PIPE, text=True)
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(2.0):
            samples.append(sum(w["tracked"] for w in status()["workers"]))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    time.sleep(5)  # the flood is up to speed
    results = []
    for i in range(LEGIT):
        results += probe(lab, "client", "trials", GW4, 22, 1, f"203.0.113.{150 + i}", ",".join(SSH))
        time.sleep((SECONDS - 15) / LEGIT)
    assert flood.stdout is not None
    sent = json.loads(flood.stdout.readline())
    flood.wait(30)
    stop.set()
    sampler.join(10)
    rss_after = rss_kb(pids)
    defences = status()["defences"]
    ok = sum(1 for r in results if r["ok"])
    rate = sent["sent"] / sent["seconds"]
    print(f"\nflood: {sent['sent']:,} spoofed packets in {sent['seconds']:.0f} s ({rate:,.0f}/s); "
          f"legitimate first-try connects {ok}/{LEGIT}; tracked sources max {max(samples):,} "
          f"(cap {MAX_SOURCES:,} a worker); RSS {rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MB; "
          f"defences {defences}")
    assert sent["seconds"] >= SECONDS - 1, "the flood ran its full time"
    assert ok >= 0.99 * LEGIT, [r for r in results if not r["ok"]]
    assert max(samples) <= MAX_SOURCES * len(pids[1:]), "the state table stays under its cap"
    assert max(samples) <= len(pids[1:]) * FLOOD_PREFIXES * PREFIX_QUOTA + 1, \
        "no network holds more than its quota (the /64 flood alone would fill the table)"
    assert defences["refused_quota"] > 0
    assert rss_after - rss_before < 100 * 1024, "memory stays bounded (< +100 MB for 131k sources)"
    assert daemon.proc.poll() is None
