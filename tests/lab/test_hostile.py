"""Hostile and imperfect networks against the real daemon: scans, loss, duplication,
reordering, and workers killed over and over under load. Every loop is bounded."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.lab.netns import GW4, Lab
from tests.fixtures.configs import SSH, config
from tests.lab.support import is_open, knock, probe, worker_pids

LAB = Path(__file__).parent

@pytest.fixture
def impaired(lab: Lab) -> Any:
    """Loss, duplication and reordering on the client's packets to the gateway, made with
    the kernel's statistic match, TEE and an NFQUEUE delayer (no tc netem in this kernel)."""
    added: list[list[str]] = []
    gw_added: list[list[str]] = []
    procs: list[Any] = []

    def impair(loss: float = 0.0, duplicate: float = 0.0, reorder: float = 0.0) -> None:
        if loss:  # lost on the link: dropped as the gateway receives it, before anything else
            rule = ["-t", "raw", "PREROUTING", "-i", "eth0", "-s", "203.0.113.0/24", "-m",
                    "statistic", "--mode", "random", "--probability", str(loss), "-j", "DROP"]
            gw_added.append(rule)
        if duplicate:
            rule = ["-t", "mangle", "POSTROUTING", "-d", GW4, "-m", "statistic", "--mode",
                    "random", "--probability", str(duplicate), "-j", "TEE", "--gateway", GW4]
            added.append(rule)
        if reorder:
            proc = lab.popen("client", [sys.executable, str(LAB / "reorder.py"), "40",
                                        str(reorder), "15", "600"], stdout=subprocess.PIPE)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            procs.append(proc)
            added.append(["-t", "filter", "OUTPUT", "-d", GW4, "-p", "udp", "-j", "NFQUEUE",
                          "--queue-num", "40"])
            added.append(["-t", "filter", "OUTPUT", "-d", GW4, "-p", "tcp", "--syn", "-j",
                          "NFQUEUE", "--queue-num", "40"])
        for rule in added:
            lab.run("client", ["iptables", "-t", rule[1], "-A", *rule[2:]])
        for rule in gw_added:
            lab.run("gw", ["iptables", "-t", rule[1], "-A", *rule[2:]])

    yield impair
    for rule in added:
        lab.run("client", ["iptables", "-t", rule[1], "-D", *rule[2:]], check=False)
    for rule in gw_added:
        lab.run("gw", ["iptables", "-t", rule[1], "-D", *rule[2:]], check=False)
    for proc in procs:
        lab.stop(proc)


@pytest.fixture(scope="module")
def many_sources(lab: Lab) -> str:
    for i in range(100):
        lab.add_address("client", f"203.0.113.{50 + i}")
    return "203.0.113.50"


def test_duplicates_never_reset_progress(lab: Lab, start_daemon: Any, impaired: Any,
                                         many_sources: str) -> None:
    start_daemon(config())
    impaired(duplicate=1.0)  # every packet to the gateway arrives twice
    results = probe(lab, "client", "trials", GW4, 22, 30, many_sources, ",".join(SSH))
    assert sum(r["ok"] for r in results) == 30, [r for r in results if not r["ok"]][:3]


def test_loss_duplication_and_reordering_with_a_retrying_client(
    lab: Lab, start_daemon: Any, impaired: Any, many_sources: str
) -> None:
    start_daemon(config())
    impaired(loss=0.05, duplicate=0.05, reorder=0.25)
    results = probe(lab, "client", "retrying", GW4, 22, 100, many_sources, ",".join(SSH),
                    timeout=600)
    ok = [r for r in results if r["ok"]]
    first = sum(1 for r in ok if r["attempts"] == 1)
    print(f"\nimpaired link (5% loss, 5% duplication, 25% held 15 ms): {len(ok)}/100 connected, "
          f"{first} on the first knock")
    assert len(ok) >= 99, [r for r in results if not r["ok"]]


def test_killing_workers_100_times_under_load(lab: Lab, start_daemon: Any,
                                              many_sources: str) -> None:
    """kill -9 a worker 100 times while a client knocks and connects and another host keeps
    trying the protected port: the grant made first survives, nobody else gets in."""
    daemon = start_daemon(config(open_for=120))
    knock(lab, "client", GW4, *SSH)
    assert is_open(lab, "client", GW4)
    attacker = lab.popen("other", [sys.executable, "-c", _ATTACKER, GW4, "60"],
                         stdout=subprocess.PIPE, text=True)
    gaps = []
    for i in range(100):
        pids = worker_pids(daemon)
        queue = i % 2
        assert queue in pids, (pids, daemon.lines[-5:])
        victim = pids[queue]
        mark = len(daemon.lines)
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        daemon.wait_for(rf"started: pid (?!{victim}\b)\d+, NFQUEUE {queue}\b", timeout=5, since=mark)
        gaps.append(time.monotonic() - killed)
    lab.stop(attacker, signal.SIGTERM)
    assert attacker.stdout is not None
    summary = attacker.stdout.read().strip().splitlines()[-1]
    print(f"\n100 kills: restart gap mean {1000 * sum(gaps) / len(gaps):.0f} ms, "
          f"max {1000 * max(gaps):.0f} ms; attacker: {summary}")
    assert summary.startswith("accepted 0 "), summary
    assert is_open(lab, "client", GW4), "the grant made before the kills still admits"
    results = probe(lab, "client", "trials", GW4, 22, 20, many_sources, ",".join(SSH))
    assert sum(r["ok"] for r in results) == 20, "new knocks work with the restarted workers"
    assert max(gaps) < 1.0, gaps


_ATTACKER = """
import socket, sys, time, signal
stop = False
def halt(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, halt)
host, limit = sys.argv[1], time.monotonic() + float(sys.argv[2])
tries = accepted = 0
while not stop and time.monotonic() < limit and tries < 100000:
    s = socket.socket(); s.settimeout(0.2)
    try:
        s.connect((host, 22)); accepted += 1
    except OSError:
        pass
    finally:
        s.close()
    tries += 1
print(f"accepted {accepted} of {tries}", flush=True)
"""


_STEP = """
import sys
from gatekeeper.client.knock import knock, parse_step, resolve
knock(resolve(sys.argv[1], source=sys.argv[2]), [parse_step(sys.argv[3])])
"""
_SPOOF = """
import socket, sys, random
from gatekeeper.lab.bench.traffic import step
src, dst = socket.inet_aton(sys.argv[1]), socket.inet_aton(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.sendto(step(src, dst, 17, random.randrange(20000, 30000)), (sys.argv[2], 0))
"""


@pytest.mark.parametrize("mode", ["reset", "ignore"])
def test_spoofed_wrong_knock_between_each_of_a_victims_knocks(
    lab: Lab, start_daemon: Any, mode: str
) -> None:
    """The attack the seeds warn about: another host injects a packet with the victim's
    address to a wrong port after each of its knocks. With the default (reset) the victim
    never gets in; with wrong_knock = "ignore" it always does."""
    trials = 10
    text = config().replace("close_sequence", f'wrong_knock = "{mode}"\nclose_sequence', 1)
    start_daemon(text)
    ok = 0
    for i in range(trials):
        victim = f"203.0.113.{240 + i}"
        if victim not in lab.run("client", ["ip", "-4", "addr", "show", "dev", "eth0"]).stdout:
            lab.add_address("client", victim)
        for knock_step in SSH:
            lab.run("client", [sys.executable, "-c", _STEP, GW4, victim, knock_step])
            lab.run("other", [sys.executable, "-c", _SPOOF, victim, GW4])
        ok += bool(probe(lab, "client", "connect", GW4, 22, victim)["ok"])
    print(f"\nwrong_knock = {mode!r}: the victim got in {ok}/{trials} times under injection")
    assert ok == (0 if mode == "reset" else trials)


def test_a_brute_forcer_is_locked_out_and_its_neighbour_is_not(lab: Lab, start_daemon: Any) -> None:
    """More than failure_limit failed sequences lock the source out of completing one,
    even the right one; another host of the same /24 still gets in."""
    daemon = start_daemon(config().replace("[gatekeeper]\n", "[gatekeeper]\nfailure_limit = 5\n", 1))
    for guess in range(6):  # the right first step, then a wrong guess: a reset each
        knock(lab, "client", GW4, SSH[0], f"{8100 + guess}:tcp")
    knock(lab, "client", GW4, *SSH)
    assert not is_open(lab, "client", GW4), "the brute-forcer is locked out"
    knock(lab, "other", GW4, *SSH)
    assert is_open(lab, "other", GW4), "its neighbour in 203.0.113.0/24 is not"
    control = daemon.config.read_text().split('control = "', 1)[1].split('"', 1)[0]
    out = lab.run("gw", [sys.executable, "-m", "gatekeeper", "status", "-s", control]).stdout
    assert re.search(r"^defences: .*lockout source 1\b", out, re.M), out
    assert re.search(r"^packets: .*locked 1\b", out, re.M), out  # the completion it refused
