"""The real daemon's side effects: knockd-style start/stop commands, the control socket."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gatekeeper import __version__
from gatekeeper.lab.netns import CLIENT4, GW4, Lab
from tests.fixtures.commands import lines, wait_for_file
from tests.fixtures.configs import SSH, config
from tests.lab.support import control, knock, snapshot

CLOSE = ["9000:tcp", "8000:udp", "7000:tcp"]
RULE = "INPUT -s %IP% -p tcp --dport 2223 -j ACCEPT"


def rules_for(lab: Lab, address: str) -> list[str]:
    return [ln for ln in lab.run("gw", ["iptables-save"]).stdout.splitlines()
            if f"-s {address}/32" in ln and "--dport 2223" in ln]


@pytest.fixture(autouse=True)
def no_leftover_rule(lab: Lab) -> Iterator[None]:
    """A test that failed must not leave its commands' rule to the next one."""
    yield
    for _ in range(10):
        if not rules_for(lab, CLIENT4):
            break
        lab.run("gw", ["iptables", *RULE.replace("%IP%", CLIENT4).replace("INPUT", "-D INPUT").split()],
                check=False)


def test_a_knockd_style_rule_never_outlives_a_close_knocked_at_once(
        lab: Lab, start_daemon: Any, tmp_path: Path) -> None:
    """knockd's ``iptables -A ... -s %IP%`` start and ``-D`` stop, the start slow (it waits
    until the close sequence has revoked the grant): the stop must wait for it, and the
    rule must be gone once both have run."""
    go, log = tmp_path / "go", tmp_path / "commands.log"
    start = f"{wait_for_file(go)}; iptables -A {RULE} && echo added %IP% >> {log}"
    stop = '["iptables", ' + ", ".join(f'"{arg}"' for arg in RULE.replace("INPUT", "-D INPUT").split()) + "]"
    extra = (f'start_command = ["/bin/sh", "-c", "{start}"]\n'
             f"stop_command = {stop}\n"
             "command_timeout = 10\n")
    daemon = start_daemon(config(**{"close_sequence": extra + "close_sequence"}))
    try:
        knock(lab, "client", GW4, *SSH)
        knock(lab, "client", GW4, *CLOSE)
        daemon.wait_for(rf"revoke door=ssh address={CLIENT4} cause=closed")
        go.touch()
        for _ in range(100):  # bounded: 10 s
            if lines(log):
                break
            time.sleep(0.1)
    finally:
        assert daemon.stop() == 0  # the supervisor waits for the commands it queued
    assert lines(log) == [f"added {CLIENT4}"], daemon.lines
    assert not [ln for ln in daemon.lines if "stop_command" in ln], daemon.lines
    assert rules_for(lab, CLIENT4) == [], daemon.lines


def test_a_knockd_style_rule_never_outlives_the_daemon(lab: Lab, start_daemon: Any,
                                                      tmp_path: Path) -> None:
    """A grant still running when the daemon stops ends with it (its kernel set is
    removed): its stop_command runs before the daemon exits."""
    before = snapshot(lab)
    extra = (f'start_command = "iptables -A {RULE}"\n'
             f'stop_command = "iptables -D {RULE}"\n')
    daemon = start_daemon(config(**{"close_sequence": extra + "close_sequence"}))
    knock(lab, "client", GW4, *SSH)
    daemon.wait_for(rf"grant door=ssh address={CLIENT4} ")
    for _ in range(100):  # bounded: 10 s
        if rules_for(lab, CLIENT4):
            break
        time.sleep(0.1)
    assert rules_for(lab, CLIENT4), "the start command ran"
    assert daemon.stop() == 0
    assert rules_for(lab, CLIENT4) == [], daemon.lines
    daemon.wait_for(rf"revoke door=ssh address={CLIENT4} cause=stopped")
    assert snapshot(lab) == before


def test_run_refuses_a_control_path_that_is_not_a_socket(
        lab: Lab, start_daemon: Any, tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    path.write_text("not a socket\n")
    before = snapshot(lab)
    daemon = start_daemon(config().replace("[gatekeeper]\n", f'[gatekeeper]\ncontrol = "{path}"\n', 1),
                          wait=False)
    try:
        code = daemon.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        daemon.stop()
        raise
    daemon.wait_for("gatekeeper: ", timeout=5)  # the reader has the whole of stderr
    assert code == 2
    assert daemon.lines == [f"gatekeeper: control socket {path}: a regular file is there, not a "
                            "socket; remove it or set [gatekeeper] control to another path"]
    assert path.read_text() == "not a socket\n"
    assert snapshot(lab) == before, "nothing may stay installed"


def test_run_replaces_the_stale_socket_of_a_killed_daemon(
        lab: Lab, start_daemon: Any, tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    text = config().replace("[gatekeeper]\n", f'[gatekeeper]\ncontrol = "{path}"\n', 1)
    start_daemon(text).stop(9)
    assert path.is_socket(), "kill -9 leaves the socket file"
    status = [sys.executable, "-m", "gatekeeper", "status", "-s", str(path)]
    stale = lab.run("gw", status, check=False)
    assert (stale.returncode, stale.stdout) == (3, "")
    assert stale.stderr == (f"gatekeeper status: no gatekeeper is running on {path} (a stale socket: "
                            "connection refused)\n")
    again = start_daemon(text)
    out = lab.run("gw", status).stdout
    assert out.startswith(f"gatekeeper {__version__} on {path}: up "), out
    assert f"config {again.config}" in out.splitlines()[0]
    assert again.stop() == 0


def test_status_asks_the_daemon_of_the_config_it_is_given(
        lab: Lab, start_daemon: Any, tmp_path: Path) -> None:
    """-c reads the socket from the config and checks that its daemon runs that config: never
    the default socket's daemon by mistake; none running is exit 3, naming the socket."""
    daemon = start_daemon(config())
    text = daemon.config.read_text()
    socket_path = control(daemon)
    status = [sys.executable, "-m", "gatekeeper", "status", "-c", str(daemon.config)]
    first = lab.run("gw", status).stdout.splitlines()[0]
    assert first.startswith(f"gatekeeper {__version__} on {socket_path}: up "), first
    assert first.endswith(f"config {daemon.config}"), first
    other = tmp_path / "other.toml"
    other.write_text(text)  # the same socket, another config
    wrong = lab.run("gw", [*status[:-1], str(other)], check=False)
    assert (wrong.returncode, wrong.stderr) == (
        2, f"gatekeeper: {socket_path}: the daemon there runs {daemon.config}, not {other}\n")
    assert daemon.stop() == 0
    gone = lab.run("gw", status, check=False)
    assert gone.returncode == 3
    assert gone.stderr == f"gatekeeper status: no gatekeeper is running on {socket_path} (no such socket)\n"
