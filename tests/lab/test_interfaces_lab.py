"""Guarded interfaces that are not there: refused at start, watched while running.

``interfaces = ["eth9"]`` on a gateway that has eth0, eth1 and lo guards nothing (iptables'
``-i eth9`` matches no packet), so ``check`` and ``run`` refuse it. A wildcard (``ppp+``)
and an interface listed in ``hotplug_interfaces`` may be absent. While the daemon runs, a
guarded interface that is renamed or removed is logged, counted and exported.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.lab.netns import Lab
from tests.lab.support import snapshot

CONFIG = """
[gatekeeper]
queue = 0
workers = 1
interfaces = {interfaces}
{extra}

[[door]]
name = "ssh"
sequence = ["7000:udp", "8000:tcp", "9000:udp"]
opens = ["22:tcp"]
"""
GATEKEEPER = [sys.executable, "-m", "gatekeeper"]
METRICS = "http://127.0.0.1:9464/metrics"  # the default [metrics] listen, in the gateway


def config(*interfaces: str, extra: str = "") -> str:
    return CONFIG.format(interfaces=json.dumps(list(interfaces)), extra=extra)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gk.toml"
    path.write_text(text.replace("[gatekeeper]\n", f'[gatekeeper]\ncontrol = "{tmp_path}/c.sock"\n'
                                 f'state_dir = "{tmp_path}/state"\n', 1))
    return path


def refusal(lab: Lab, argv: list[str]) -> str:
    """The one line ``argv`` exits 2 with, run in the gateway (a daemon that starts
    instead is stopped after 20 s, and the test fails)."""
    proc = lab.popen("gw", argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        lab.stop(proc)
        out, err = proc.communicate()
        raise AssertionError(f"{argv[3]} did not refuse: still running after 20 s:\n{err}") from None
    assert proc.returncode == 2, (proc.returncode, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def scrape(lab: Lab) -> dict[str, float]:
    """The gateway's gatekeeper_interface_* samples, by series text."""
    text = lab.python("gw", f"import urllib.request; print(urllib.request.urlopen({METRICS!r}, "
                      "timeout=5).read().decode())")
    out = {}
    for line in text.splitlines():
        if line.startswith("gatekeeper_interface_"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def status(tmp_path: Path) -> dict[str, Any]:
    done = subprocess.run([*GATEKEEPER, "status", "--json", "-s", str(tmp_path / "control0.sock")],
                          capture_output=True, text=True, timeout=10, check=True)
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


@pytest.fixture
def veth(lab: Lab) -> Iterator[str]:
    """A veth pair gkx0/gkpeer0 of the gateway's own: the test renames and deletes it."""
    lab.run("gw", ["ip", "link", "add", "gkx0", "type", "veth", "peer", "name", "gkpeer0"])
    try:
        yield "gkx0"
    finally:
        for name in ("gkx0", "gky0", "gkpeer0"):
            lab.run("gw", ["ip", "link", "del", name], check=False)


@pytest.fixture
def clean(lab: Lab) -> Iterator[None]:
    """Whatever a daemon that wrongly started left behind goes, pass or fail."""
    yield
    lab.run("gw", [sys.executable, "-c",
                   "from gatekeeper.netfilter.install import Installer; Installer().remove()"],
            check=False)


def test_absent_interface_is_refused_by_check_and_run(lab: Lab, tmp_path: Path, clean: None) -> None:
    """eth9 does not exist in the gateway: one line naming it and what does exist, exit 2,
    nothing installed (test fails on the old code: both accepted it)."""
    path = write(tmp_path, config("eth0", "eth9"))
    before = snapshot(lab)
    for command in ("check", "run"):
        line = refusal(lab, [*GATEKEEPER, command, "-c", str(path)])
        assert f"{path}: gatekeeper.interfaces[1]: 'eth9' is not present" in line, line
        assert "present: eth0, eth1, lo" in line, line
        assert "hotplug_interfaces" in line, line  # the way out, if it really comes later
        assert snapshot(lab) == before, f"{command} left something installed"
    ok = lab.run("gw", [*GATEKEEPER, "check", "-c", str(write(tmp_path, config("eth0")))])
    assert "OK" in ok.stdout


def test_wildcard_and_hotplug_interface_may_be_absent(lab: Lab, start_daemon: Any,
                                                       tmp_path: Path) -> None:
    """ppp+ (a wildcard) and wg7 (hotplug_interfaces) start without being there; wg7
    is reported missing, then present when it appears."""
    text = config("eth0", "ppp+", "wg7", extra='hotplug_interfaces = ["wg7"]')
    check = lab.run("gw", [*GATEKEEPER, "check", "-c", str(write(tmp_path, text))], check=False)
    assert check.returncode == 0 and "OK" in check.stdout, check.stderr
    daemon = start_daemon(text)
    daemon.wait_for(r"WARNING interface wg7 \(hotplug_interfaces\) is not present")
    rules = lab.run("gw", ["iptables-save", "-t", "filter"]).stdout
    assert "-i ppp+" in rules and "-i wg7" in rules
    metrics = scrape(lab)
    assert metrics['gatekeeper_interface_present{hotplug="true",interface="wg7"}'] == 0
    assert metrics['gatekeeper_interface_present{hotplug="false",interface="eth0"}'] == 1
    assert not [s for s in metrics if "ppp" in s], "a wildcard is not one interface"
    lab.run("gw", ["ip", "link", "add", "wg7", "type", "veth", "peer", "name", "wg7peer"])
    try:
        daemon.wait_for(r"INFO interface wg7 appeared: guarded")
        assert scrape(lab)['gatekeeper_interface_present{hotplug="true",interface="wg7"}'] == 1
    finally:
        lab.run("gw", ["ip", "link", "del", "wg7"], check=False)


def test_guarded_interface_renamed_and_removed_while_running(lab: Lab, start_daemon: Any,
                                                              tmp_path: Path, veth: str) -> None:
    """gkx0 renamed to gky0: an error naming both (traffic on gky0 is not guarded), the
    gauge at 0, the counter at 1, the status says so; renamed back: guarded again; deleted:
    an error again (test fails on the old code: it said nothing)."""
    daemon = start_daemon(config("eth0", veth))
    present = 'gatekeeper_interface_present{hotplug="false",interface="gkx0"}'

    def changes(change: str) -> str:
        return f'gatekeeper_interface_changes_total{{change="{change}",interface="gkx0"}}'

    metrics = scrape(lab)
    assert metrics[present] == 1
    assert [metrics[changes(c)] for c in ("removed", "renamed", "appeared")] == [0, 0, 0]

    lab.run("gw", ["ip", "link", "set", "dev", veth, "name", "gky0"])
    daemon.wait_for(r"ERROR interface gkx0 was renamed to gky0: .*not guarded")
    metrics = scrape(lab)
    assert metrics[present] == 0 and metrics[changes("renamed")] == 1
    answer = status(tmp_path)
    assert {"name": "gkx0", "present": False, "hotplug": False, "renamed_to": "gky0"} \
        in answer["interfaces"], answer["interfaces"]
    text = subprocess.run([*GATEKEEPER, "status", "-s", str(tmp_path / "control0.sock")],
                          capture_output=True, text=True, timeout=10, check=True).stdout
    assert "gkx0 MISSING (renamed to gky0)" in text, text

    lab.run("gw", ["ip", "link", "set", "dev", "gky0", "name", veth])
    daemon.wait_for(r"INFO interface gkx0 is back: guarded again")
    metrics = scrape(lab)
    assert metrics[present] == 1 and metrics[changes("appeared")] == 1

    lab.run("gw", ["ip", "link", "del", veth])
    daemon.wait_for(r"ERROR interface gkx0 was removed")
    metrics = scrape(lab)
    assert metrics[present] == 0 and metrics[changes("removed")] == 1
    assert daemon.proc.poll() is None, "the daemon keeps running (its rules keep the rest shut)"


def test_reload_naming_an_absent_interface_is_refused(lab: Lab, start_daemon: Any) -> None:
    """SIGHUP with a config that names eth9: refused, the running config stays."""
    daemon = start_daemon(config("eth0"))
    daemon.config.write_text(daemon.config.read_text().replace('["eth0"]', '["eth0", "eth9"]'))
    since = len(daemon.lines)
    daemon.proc.send_signal(signal.SIGHUP)
    line = daemon.wait_for("reload refused", since=since)
    assert "'eth9' is not present" in line, line
    rules = lab.run("gw", ["iptables-save"]).stdout
    assert "eth9" not in rules
