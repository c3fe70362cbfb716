"""gatekeeper replay against the real daemon: tcpdump records the gateway's guarded
interface (and ``-i any``) while stock clients knock (knockd's ``knock``, ``fwknop``), another host knocks
wrong and scans with nmap; the replay of that capture with the same config reports exactly
the grants the daemon logged, and the scanner's lockout."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.lab.netns import CLIENT4, GW4, OTHER4, Lab
from gatekeeper.replay.capture import LINUX_SLL2, open_capture
from gatekeeper.spa import fwknop
from tests.fixtures.needs import need_tool
from tests.lab.support import KEYS, fwknop_send, is_open

pytestmark = pytest.mark.lab

CONFIG = """
[gatekeeper]
queue = 0
workers = 2
interfaces = ["eth0"]
public = ["80:tcp"]

[[door]]
name = "ssh"
sequence = ["7000:udp", "8000:tcp", "9000:udp"]
opens = ["22:tcp"]
open_for = 30

[[door]]
name = "spa"
spa = true
key_file = "{key}"
opens = ["8080:tcp"]
open_for = 30
"""


def record(lab: Lab, path: Path, interface: str = "eth0") -> subprocess.Popen[Any]:
    """tcpdump on the gateway's guarded interface (or ``any``), both directions, until stopped."""
    proc = lab.popen("gw", ["tcpdump", "-i", interface, "-n", "-U", "--immediate-mode", "-s", "0",
                             "-w", str(path)],
                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 10
    line = ""
    while time.monotonic() < deadline and "listening on" not in line:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            raise AssertionError(f"tcpdump exited {proc.returncode}")
    assert "listening on" in line, line
    return proc


def replay(config: Path, capture: Path) -> list[dict[str, Any]]:
    out = subprocess.run([sys.executable, "-m", "gatekeeper", "replay", "-c", str(config), "--json",
                          str(capture)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_replay_of_a_recorded_capture_matches_the_daemon(lab: Lab, start_daemon: Any,
                                                         tmp_path: Path) -> None:
    need_tool("tcpdump", "scripts/setup.sh installs it")
    need_tool("knock", "Debian's knockd package")
    need_tool("nmap", "scripts/setup.sh installs it")
    need_tool("fwknop", "Debian's fwknop-client")
    key = tmp_path / "spa.key"
    key.write_text(fwknop.format_key_file(KEYS))
    key.chmod(0o600)
    home = tmp_path / "home"
    home.mkdir()
    capture, cooked = tmp_path / "gw.pcap", tmp_path / "any.pcap"
    tcpdump = record(lab, capture)
    tcpdump_any = record(lab, cooked, "any")  # Linux cooked v2
    try:
        daemon = start_daemon(CONFIG.format(key=key))
        lab.run("client", ["knock", "-d", "20", GW4, "7000:udp", "8000:tcp", "9000:udp"])
        assert is_open(lab, "client", GW4, 22)
        lab.run("other", ["knock", "-d", "20", GW4, "7000:udp", "1234:tcp", "9000:udp"])  # wrong
        assert not is_open(lab, "other", GW4, 22)
        lab.run("other", ["nmap", "-sS", "-n", "-Pn", "-T5", "--max-retries", "0", "-p", "1-100", GW4],
                timeout=60)
        fwknop_send(lab, str(home), allow=CLIENT4, access="tcp/8080")
        daemon.wait_for(r"grant door=spa address=203\.0\.113\.10 ")
        assert is_open(lab, "client", GW4, 8080)
        time.sleep(0.3)  # the last packets reach tcpdump's file
    finally:
        lab.stop(tcpdump)
        lab.stop(tcpdump_any)
    logged = {(m[2], m[1], m[3]) for line in daemon.lines
              if (m := re.search(r"grant door=(\S+) address=(\S+) open_for=\S+ opens=(\S+)", line))}
    assert {(a, d) for a, d, _ in logged} == {(CLIENT4, "ssh"), (CLIENT4, "spa")}
    opened = open_capture(str(cooked))
    opened.close()
    assert opened.link == LINUX_SLL2  # what tcpdump -i any writes
    rows = replay(daemon.config, cooked)
    assert {(r["address"], r["door"], ",".join(r["ports"])) for r in rows
            if r.get("what") == "grant"} == logged, "the -i any capture"
    rows = replay(daemon.config, capture)
    replayed = {(r["address"], r["door"], ",".join(r["ports"])) for r in rows if r.get("what") == "grant"}
    assert replayed == logged
    lockouts = [r for r in rows if r.get("what") == "lockout"]
    assert [(r["source"], r["cause"]) for r in lockouts] == [(OTHER4, "scan")]
    resets = [r for r in rows if r.get("what") == "knock" and r["outcome"] == "reset"]
    assert resets and resets[0]["source"] == OTHER4 and resets[0]["port"] == "1234:tcp"
    summary = rows[-1]
    assert summary["not_queued"]["outbound"] > 0 and summary["not_queued"]["established"] > 0
    assert GW4 in summary["gateway"] and summary["spa"]["spa"]["ok"] == 1
