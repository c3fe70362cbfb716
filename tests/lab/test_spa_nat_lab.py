"""SPA NAT access (``fwknop -N HOST:PORT``) with the stock client against the real daemon:
the gateway (203.0.113.1) DNATs the client's connections to a gateway port to the server
behind it (198.51.100.10, listening on 3389; the gateway itself listens on no port used
here), for that client's address only, from its first SYN; gone after expiry and stop."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.lab.netns import GW4, GW6, SERVER4, SERVER6, Lab
from gatekeeper.netfilter.nat import CHAIN_NAT, set_name
from tests.lab.support import (
    H,
    K,
    daemon_pid,
    fwknop_send,
    is_open,
    needs_fwknop,
    snapshot,
    spa_config,
    wait_count,
)

GATEWAY_PORT, FORCED_PORT, TARGET_PORT = 4422, 4423, 3389
TARGET = f"{SERVER4}:{TARGET_PORT}"
TARGET6 = f"[{SERVER6}]:{TARGET_PORT}"
NAT_DOORS = f"""spa_nat = ["{TARGET}", "{TARGET6}"]
open_for = 3

[[door]]
name = "forced"
spa = true
key_file = "{{key}}"
spa_port = 62202
opens = ["{FORCED_PORT}:tcp"]
spa_force_nat = "{TARGET}"
open_for = 3
"""


@pytest.fixture
def nat_daemon(lab: Lab, start_daemon: Any, tmp_path: Path) -> Iterator[Any]:
    text = spa_config(tmp_path).replace('opens = ["22:tcp"]', f'opens = ["{GATEWAY_PORT}:tcp"]')
    key = str(tmp_path / "spa.key")
    home = tmp_path / "home"
    home.mkdir()
    before = snapshot(lab)
    daemon = start_daemon(text + NAT_DOORS.replace("{key}", key))
    daemon.home = str(home)
    daemon.key = key
    daemon.before = before
    yield daemon


def nat_entries(lab: Lab) -> str:
    return str(lab.run("gw", ["ipset", "list", set_name(SERVER4, TARGET_PORT)]).stdout)


def wait_expired(lab: Lab, seconds: float = 10) -> None:
    """Until the kernel set timed the grant out (bounded)."""
    deadline = time.monotonic() + seconds
    while "203.0.113." in nat_entries(lab).split("Members:", 1)[1]:
        assert time.monotonic() < deadline, nat_entries(lab)
        time.sleep(0.2)


@needs_fwknop
def test_nat_access_first_syn_to_the_internal_host_only_for_that_client(
        lab: Lab, nat_daemon: Any) -> None:
    assert not is_open(lab, "client", GW4, GATEWAY_PORT)
    fwknop_send(lab, nat_daemon.home, "-N", TARGET, access=f"tcp/{GATEWAY_PORT}")
    assert is_open(lab, "client", GW4, GATEWAY_PORT), "the first SYN, DNATed to the server"
    assert not is_open(lab, "other", GW4, GATEWAY_PORT), "another address is not forwarded"
    assert not is_open(lab, "client", GW4, 22), "a NAT grant opens nothing on the gateway"
    # only connections to the gateway itself are translated, not the client's traffic
    # through it to other addresses on that port
    assert not is_open(lab, "client", SERVER4, GATEWAY_PORT), "DNATed on its way elsewhere"
    nat_daemon.wait_for(rf"grant door=spa address=203\.0\.113\.10 .*opens={GATEWAY_PORT}:tcp->"
                        rf"{SERVER4}:{TARGET_PORT}")
    assert wait_count(nat_daemon, "ok", 1)["ok"] == 1
    wait_expired(lab)
    assert not is_open(lab, "client", GW4, GATEWAY_PORT), "expired"
    nat_daemon.stop()
    assert snapshot(lab) == nat_daemon.before, "the nat table, its chain and sets are gone"


@needs_fwknop
def test_targets_not_allowed_and_local_nat_are_refused_at_access(
        lab: Lab, nat_daemon: Any) -> None:
    fwknop_send(lab, nat_daemon.home, "-N", f"{SERVER4}:22", access=f"tcp/{GATEWAY_PORT}")
    fwknop_send(lab, nat_daemon.home, "--nat-local", access=f"tcp/{GATEWAY_PORT}")
    counts = wait_count(nat_daemon, "access", 2)
    assert counts.get("access") == 2 and "ok" not in counts, counts
    assert not is_open(lab, "client", GW4, GATEWAY_PORT)
    assert "203.0.113." not in nat_entries(lab).split("Members:", 1)[1]


@needs_fwknop
def test_forced_target_whatever_the_client_asks(lab: Lab, nat_daemon: Any) -> None:
    assert not is_open(lab, "client", GW4, FORCED_PORT)
    fwknop_send(lab, nat_daemon.home, "-p", "62202", access=f"tcp/{FORCED_PORT}")
    assert is_open(lab, "client", GW4, FORCED_PORT), "a plain request, forced to the server"
    assert not is_open(lab, "other", GW4, FORCED_PORT)
    nat_daemon.wait_for(rf"grant door=forced .*opens={FORCED_PORT}:tcp->{SERVER4}:{TARGET_PORT}")
    saved = lab.run("gw", ["iptables-save", "-t", "nat"]).stdout
    assert f":{CHAIN_NAT} " in saved and f"--to-destination {TARGET}" in saved


def test_ipv6_nat_access_with_the_gatekeeper_client(lab: Lab, nat_daemon: Any) -> None:
    """fwknop 2.6 sends no IPv6 request; gatekeeper's client does, and ip6tables DNATs it."""
    assert not is_open(lab, "client", GW6, GATEWAY_PORT)
    lab.run("client", [sys.executable, "-m", "gatekeeper", "spa", "--key-file", nat_daemon.key,
                       "-A", f"tcp/{GATEWAY_PORT}", "-N", TARGET6, GW6])
    assert is_open(lab, "client", GW6, GATEWAY_PORT), "the first SYN, DNATed to the server"
    assert not is_open(lab, "other", GW6, GATEWAY_PORT)
    assert f"--to-destination {TARGET6}" in lab.run("gw", ["ip6tables-save", "-t", "nat"]).stdout


@needs_fwknop
def test_a_reload_without_targets_takes_the_nat_chain_and_sets_out(lab: Lab, nat_daemon: Any) -> None:
    text = nat_daemon.config.read_text()
    nat_daemon.config.write_text(text.split("spa_nat = ", 1)[0])  # the first door, no NAT
    os.kill(daemon_pid(nat_daemon), signal.SIGHUP)
    nat_daemon.wait_for("reloaded")
    assert f":{CHAIN_NAT} " not in lab.run("gw", ["iptables-save", "-t", "nat"]).stdout
    assert "gatekeeper-nat" not in lab.run("gw", ["ipset", "list", "-n"]).stdout
    at = len(nat_daemon.lines)
    nat_daemon.config.write_text(text)
    os.kill(daemon_pid(nat_daemon), signal.SIGHUP)
    nat_daemon.wait_for("reloaded", since=at)
    fwknop_send(lab, nat_daemon.home, "-N", TARGET, access=f"tcp/{GATEWAY_PORT}")
    assert is_open(lab, "client", GW4, GATEWAY_PORT), "NAT access again after the reload"


def test_check_and_run_refuse_nat_without_forwarding(lab: Lab, tmp_path: Path) -> None:
    config = tmp_path / "nat.toml"
    config.write_text(spa_config(tmp_path, f'spa_nat = ["{TARGET}"]\n')
                      .replace("[gatekeeper]\n", f'[gatekeeper]\ncontrol = "{tmp_path}/c.sock"\n'))
    lab.sysctl("gw", "net.ipv4.ip_forward", "0")
    try:
        for command in ("check", "run"):
            result = lab.run("gw", [sys.executable, "-m", "gatekeeper", command, "-c", str(config)],
                             check=False, timeout=30)
            assert result.returncode != 0, result.stdout
            assert "spa_force_nat) needs IPv4 forwarding" in result.stderr, result.stderr
            assert "sysctl -w net.ipv4.ip_forward=1" in result.stderr
    finally:
        lab.sysctl("gw", "net.ipv4.ip_forward", "1")
    checked = lab.run("gw", [sys.executable, "-m", "gatekeeper", "check", "-c", str(config)]).stdout
    assert f"spa (spa on 62201:udp -> 22:tcp, DNATed to {TARGET})" in checked, checked


FWKNOPD_ACCESS = f"""SOURCE ANY
OPEN_PORTS tcp/{FORCED_PORT}
KEY_BASE64 {K}
HMAC_KEY_BASE64 {H}
FORCE_NAT {SERVER4} {TARGET_PORT}
"""


@needs_fwknop
def test_stock_fwknopd_force_nat_imports_and_the_same_command_reaches_the_same_host(
        lab: Lab, start_daemon: Any, tmp_path: Path) -> None:
    from gatekeeper import cli
    from tests.lab.stock_fwknopd import fwknopd, opened

    access, server = tmp_path / "access.conf", tmp_path / "fwknopd.conf"
    access.write_text(FWKNOPD_ACCESS)
    server.write_text("PCAP_INTF eth0\nPCAP_FILTER udp port 62201\nENABLE_IPT_FORWARDING Y\n")
    home = tmp_path / "home"
    home.mkdir()
    stock = fwknopd(lab, tmp_path)
    try:
        assert not is_open(lab, "client", GW4, FORCED_PORT)
        fwknop_send(lab, str(home), access=f"tcp/{FORCED_PORT}")
        assert opened(lab, FORCED_PORT), (tmp_path / "fwknopd.log").read_text()
    finally:
        lab.stop(stock)  # it removes its rules on the way out
    out = tmp_path / "gatekeeper.toml"
    assert cli.main(["import-fwknop", str(access), "--server-conf", str(server), "-o", str(out),
                     "--key-dir", str(tmp_path / "keys")]) == 0
    assert f'spa_force_nat = "{TARGET}"' in out.read_text()
    assert not is_open(lab, "client", GW4, FORCED_PORT), "fwknopd's DNAT is gone"
    start_daemon(out.read_text())
    fwknop_send(lab, str(home), access=f"tcp/{FORCED_PORT}")
    assert is_open(lab, "client", GW4, FORCED_PORT), "the first SYN, DNATed to the same host"


@needs_fwknop
def test_a_nat_grant_the_kernel_refuses_leaves_no_forward_entry(lab: Lab, nat_daemon: Any) -> None:
    """When the DNAT pair cannot go in (here: the target's set is full), the forward grant
    added just before it is taken out again: nothing half-installed is left to time out."""
    name = set_name(SERVER4, TARGET_PORT)
    # the rule's set swapped with a full one of its kind (maxelem 1): the add is refused
    full = "gk-test-full"
    lab.run("gw", ["ipset", "create", full, "hash:ip,port", "maxelem", "1", "timeout", "0", "comment"])
    lab.run("gw", ["ipset", "add", full, "198.18.0.1,tcp:1"])
    lab.run("gw", ["ipset", "swap", full, name])
    try:
        fwknop_send(lab, nat_daemon.home, "-N", TARGET, access=f"tcp/{GATEWAY_PORT}")
        nat_daemon.wait_for(r"grant door=spa address=203\.0\.113\.10: kernel set not updated")
        forward = lab.run("gw", ["ipset", "list", "gatekeeper-fwd4"]).stdout
        assert "203.0.113.10" not in forward.split("Members:", 1)[1], forward
        assert not is_open(lab, "client", GW4, GATEWAY_PORT)
    finally:
        lab.run("gw", ["ipset", "swap", full, name])  # the daemon's own set back, for its stop
        lab.run("gw", ["ipset", "destroy", full])
