"""The kernel prefilter (``prefilter = true``) with the real daemon: what cannot change a
decision never reaches the queue, and what can still does.

The lab's three doors (ssh on the gateway, rdp behind it, ping over ICMP) plus a door of
three consecutive tcp ports, the case an ordered port sweep walks through.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gatekeeper.daemon.control import request
from gatekeeper.lab.netns import GW4, GW6, SERVER4, Lab
from tests.fixtures.configs import SSH, config
from tests.fixtures.needs import need_tool
from tests.lab.support import control, is_open, knock, queue_stats, snapshot

CONSECUTIVE = """
[[door]]
name = "row"
sequence = ["5001", "5002", "5003"]
opens = ["2201:tcp"]
"""


@pytest.fixture(scope="module", autouse=True)
def row_service(lab: Lab) -> Iterator[None]:
    """Something listening on the port the consecutive door opens."""
    server = lab.serve_tcp("gw", 2201)
    yield
    lab.stop(server)


def prefiltered(on: bool = True) -> str:
    return config(**{"[gatekeeper]\n": f"[gatekeeper]\nprefilter = {str(on).lower()}\n"}) + CONSECUTIVE


def queued(lab: Lab) -> int:
    """Packets the gateway's queues have received so far (their last packet ids)."""
    return sum(q["id_sequence"] for q in queue_stats(lab).values())


def dropped(daemon: Any) -> dict[str, int]:
    """The prefilter's drops, as the daemon reports them (``junk4``, ``scanner6``, ...)."""
    out: dict[str, int] = request(control(daemon))["prefilter"]["dropped"]
    return out


def verdicts(daemon: Any) -> int:
    """Packets the workers have verdicted (their counters, summed)."""
    deadline = time.monotonic() + 1.5  # workers report every half second
    counts = sum(request(control(daemon))["packets"].values())
    while time.monotonic() < deadline:
        time.sleep(0.3)
        counts = sum(request(control(daemon))["packets"].values())
    return counts


def send_junk(lab: Lab, host: str, target: str, ports: list[int]) -> None:
    """One UDP datagram to each port (none a knock of any door)."""
    lab.python(host, "import socket, sys\n"
               "family = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET\n"
               "s = socket.socket(family, socket.SOCK_DGRAM)\n"
               "for p in sys.argv[2:]:\n    s.sendto(b'junk', (sys.argv[1], int(p)))\n",
               target, *map(str, ports))


def test_junk_from_a_fresh_source_never_reaches_the_queue(lab: Lab, start_daemon: Any) -> None:
    daemon = start_daemon(prefiltered())
    before_q, before_v = queued(lab), verdicts(daemon)
    send_junk(lab, "other", GW4, [31337, 40000, 51234])
    send_junk(lab, "other", GW6, [31337, 40000])
    assert not is_open(lab, "other", GW4, 22)  # an unauthorised SYN to the protected port
    assert queued(lab) == before_q, "a junk packet reached the queue"
    assert verdicts(daemon) == before_v
    counts = dropped(daemon)
    assert counts["junk4"] >= 4 and counts["junk6"] >= 2, counts


def test_without_the_prefilter_junk_is_queued(lab: Lab, start_daemon: Any) -> None:
    daemon = start_daemon(prefiltered(on=False))
    before = queued(lab)
    send_junk(lab, "other", GW4, [31337, 40000, 51234])
    assert not is_open(lab, "other", GW4, 22)
    deadline = time.monotonic() + 3
    while queued(lab) < before + 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert queued(lab) >= before + 4
    assert sum(dropped(daemon).values()) == 0
    assert "GATEKEEPER-PRE" not in lab.run("gw", ["iptables-save"]).stdout


def test_knocks_open_every_kind_of_door_first_syn_accepted(lab: Lab, start_daemon: Any) -> None:
    start_daemon(prefiltered())
    knock(lab, "client", GW4, *SSH)
    assert is_open(lab, "client", GW4)  # a 0.9 s connect: the first SYN was accepted
    knock(lab, "client", SERVER4, "4001", "4002:udp", "4003")
    assert is_open(lab, "client", SERVER4, 3389)  # a door's host behind the gateway
    knock(lab, "client", GW4, "64:icmp", "128:icmp")
    assert is_open(lab, "client", GW4, 8080)
    knock(lab, "client", GW4, "5001", "5002", "5003")
    assert is_open(lab, "client", GW4, 2201)
    knock(lab, "client", GW6, *SSH)
    assert is_open(lab, "client", GW6)
    assert not is_open(lab, "other", GW4)


def test_a_wrong_knock_still_resets_a_source_in_progress(lab: Lab, start_daemon: Any) -> None:
    daemon = start_daemon(prefiltered())
    knock(lab, "client", GW4, SSH[0], SSH[1], "31337:udp", SSH[2])  # a junk port in between
    assert not is_open(lab, "client", GW4)
    knock(lab, "client", GW4, SSH[0], SSH[1], "22", SSH[2])  # the protected port in between
    assert not is_open(lab, "client", GW4)
    assert not [ln for ln in daemon.lines if "grant door=ssh" in ln]
    knock(lab, "client", GW4, *SSH)
    assert is_open(lab, "client", GW4)


def test_a_source_over_the_scan_limit_cannot_knock(lab: Lab, start_daemon: Any) -> None:
    daemon = start_daemon(prefiltered())
    send_junk(lab, "other", GW4, list(range(30000, 30020)))  # 20 ports > 6 at once
    knock(lab, "other", GW4, "5001", "5002", "5003")
    assert not is_open(lab, "other", GW4, 2201)
    assert dropped(daemon)["scanner4"] >= 3
    assert not [ln for ln in daemon.lines if "grant door=row" in ln]
    knock(lab, "client", GW4, "5001", "5002", "5003")  # another source is not affected
    assert is_open(lab, "client", GW4, 2201)


def test_an_ordered_sweep_does_not_walk_consecutive_ports(lab: Lab, start_daemon: Any) -> None:
    need_tool("nmap", "scripts/setup.sh installs it")
    daemon = start_daemon(prefiltered())
    result = lab.run("other", ["nmap", "-sS", "-r", "-p1-6000", "-n", "-Pn", "-T5", "--max-retries",
                               "0", "--min-rate", "20000", "--host-timeout", "60s", GW4], timeout=90)
    assert "Nmap done" in result.stdout, result.stdout + result.stderr
    assert not re.findall(r"^(\d+)/tcp\s+open\s", result.stdout, re.M)
    time.sleep(0.3)
    assert not [ln for ln in daemon.lines if " grant " in f" {ln} "]
    assert not is_open(lab, "other", GW4, 2201)
    assert dropped(daemon)["scanner4"] > 1000


def test_removal_of_the_prefilter_is_found_and_repaired_and_stop_removes_it(
        lab: Lab, start_daemon: Any) -> None:
    before = snapshot(lab)
    daemon = start_daemon(prefiltered())
    sets = lab.run("gw", ["ipset", "list", "-name"]).stdout.split()
    assert {"gatekeeper-prog4", "gatekeeper-prog6", "gatekeeper-scan4", "gatekeeper-scan6"} <= set(sets)
    mark = len(daemon.lines)
    lab.run("gw", ["iptables", "-F", "GATEKEEPER-PRE"])
    daemon.wait_for(r"chain GATEKEEPER-PRE was changed", since=mark)
    daemon.wait_for(r"ruleset repaired", since=mark)
    knock(lab, "client", GW4, *SSH)
    assert is_open(lab, "client", GW4)
    assert daemon.stop() == 0
    assert snapshot(lab) == before  # rules, chains and every set gone


def test_a_reload_turns_the_prefilter_on_and_off_in_one_swap(lab: Lab, start_daemon: Any) -> None:
    """SIGHUP with prefilter turned on: chain and sets in place, junk no longer queued;
    turned off again: junk queued, chain and sets gone. A knock works throughout."""
    before = snapshot(lab)
    daemon = start_daemon(prefiltered(on=False))
    for on in (True, False):
        text = daemon.config.read_text()  # as the fixture wrote it (its state_dir, control)
        daemon.config.write_text(text.replace(f"prefilter = {str(not on).lower()}",
                                              f"prefilter = {str(on).lower()}"))
        since = len(daemon.lines)
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for(r"reloaded ", since=since)
        sets = set(lab.run("gw", ["ipset", "list", "-name"]).stdout.split())
        assert ("GATEKEEPER-PRE" in lab.run("gw", ["iptables-save"]).stdout) is on
        assert ({"gatekeeper-prog4", "gatekeeper-scan4"} <= sets) is on
        assert not ({"gatekeeper-prog4", "gatekeeper-scan4"} & sets) or on
        queued_before = queued(lab)
        send_junk(lab, "other", GW4, [31337, 40000, 51234])
        time.sleep(0.3)
        assert (queued(lab) == queued_before) is on, "junk is queued exactly when the prefilter is off"
        knock(lab, "client", GW4, *SSH)
        assert is_open(lab, "client", GW4)
    assert daemon.stop() == 0
    assert snapshot(lab) == before
