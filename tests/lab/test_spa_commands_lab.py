"""``fwknop --server-cmd`` from the stock client against the real daemon: an allowed
command text runs its argv (no shell) for the client's address, anything else is counted as
``command`` and runs nothing; neither opens a port."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from gatekeeper.lab.netns import CLIENT4, GW4, Lab
from gatekeeper.spa import fwknop
from tests.lab.support import KEYS, fwknop_send, is_open, needs_fwknop, wait_count

CONFIG = """
[gatekeeper]
queue = 0
interfaces = ["eth0"]

[[door]]
name = "spa"
spa = true
key_file = "{key}"
opens = ["22:tcp"]
spa_commands = {{ "mark me" = ["/usr/bin/touch", "{marker}-%IP%"] }}
"""


@needs_fwknop
def test_an_allowed_server_command_runs_and_another_does_not(
        lab: Lab, start_daemon: Any, tmp_path: Path) -> None:
    key = tmp_path / "spa.key"
    key.write_text(fwknop.format_key_file(KEYS))
    os.chmod(key, 0o600)
    marker = tmp_path / "ran"
    home = tmp_path / "home"
    home.mkdir()
    daemon = start_daemon(CONFIG.format(key=key, marker=marker))
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
