"""``fwknop --server-cmd`` from the stock client against the real daemon: an allowed
command text runs its argv (no shell) for the client's address, anything else is counted as
``command`` and runs nothing; neither opens a port."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gatekeeper.lab.netns import CLIENT4, GW4, Lab
from tests.lab.support import fwknop_send, is_open, needs_fwknop, spa_config, wait_count

COMMANDS = 'spa_commands = {{ "mark me" = ["/usr/bin/touch", "{marker}-%IP%"] }}\n'


@needs_fwknop
def test_an_allowed_server_command_runs_and_another_does_not(
        lab: Lab, start_daemon: Any, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    home = tmp_path / "home"
    home.mkdir()
    daemon = start_daemon(spa_config(tmp_path, COMMANDS.format(marker=marker)))
    done = marker.parent / f"{marker.name}-{CLIENT4}"

    fwknop_send(lab, str(home), "--server-cmd", "mark me too", access=None)  # not allowed
    assert wait_count(daemon, "command", 1).get("command") == 1
    time.sleep(0.5)  # what would have run had it been queued
    assert not done.exists() and not any("spa command" in line for line in daemon.lines)
    fwknop_send(lab, str(home), "--server-cmd", "mark me", access=None)
    deadline = time.monotonic() + 5
    while not done.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert done.exists(), "the allowed command ran, with the client's address"
    assert daemon.wait_for(f"spa command: door=spa address={CLIENT4} command='mark me'")
    assert not is_open(lab, "client", GW4), "a command grants nothing"
    assert wait_count(daemon, "ok", 1).get("ok") == 1
