"""Refused SPA packets from the stock fwknop client, logged by the real daemon with their
source and stage, a few lines a source, and read by the real fail2ban-regex through the
filter under rules/fail2ban."""

from __future__ import annotations

import base64
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from gatekeeper.lab.netns import CLIENT4, GW4, Lab
from gatekeeper.queue.refusals import PER_SOURCE_BURST, PER_SOURCE_EVERY
from tests.fixtures.configs import ROOT
from tests.fixtures.needs import need_tool
from tests.lab.support import fwknop_send, is_open, needs_fwknop, spa_config, wait_count

FILTER = ROOT / "rules" / "fail2ban" / "filter.d" / "gatekeeper-spa.conf"
SENT = PER_SOURCE_BURST + 3


@needs_fwknop
def test_refused_packets_are_logged_a_few_a_source_and_fail2ban_reads_them(
        lab: Lab, start_daemon: Any, tmp_path: Path) -> None:
    fail2ban_regex = need_tool("fail2ban-regex", "scripts/setup.sh installs fail2ban")
    home = tmp_path / "home"
    home.mkdir()
    daemon = start_daemon(spa_config(tmp_path))
    wrong = base64.b64encode(bytes(32)).decode()
    for _ in range(SENT):
        fwknop_send(lab, str(home), hmac_key=wrong)  # another HMAC key: no door's
    assert wait_count(daemon, "hmac", SENT).get("hmac") == SENT, "every one counted"
    time.sleep(PER_SOURCE_EVERY)  # the source's next line is due
    fwknop_send(lab, str(home), "--server-cmd", "reboot", access=None)  # the right keys
    daemon.wait_for(rf"spa refused door=spa address={CLIENT4} stage=command")
    refused = [ln for ln in daemon.lines if "spa refused" in ln]
    hmac = [ln for ln in refused if re.search(rf"door=spa address={CLIENT4} stage=hmac$", ln)]
    assert len(hmac) == PER_SOURCE_BURST, "a burst a source, then one every few seconds"
    assert re.search(rf"stage=command \({SENT - PER_SOURCE_BURST} more refused, not logged\)$",
                     refused[-1]), refused[-1]

    log = tmp_path / "gatekeeper.log"
    log.write_text("\n".join(daemon.lines) + "\n")
    result = subprocess.run([fail2ban_regex, "-o", "ip", str(log), str(FILTER)],
                            capture_output=True, text=True, timeout=60, check=True)
    # one address a matched line: every refusal line, and nothing else of the log
    assert result.stdout.split() == [CLIENT4] * len(refused), result.stdout + result.stderr
    fwknop_send(lab, str(home))  # the right keys still open the door
    assert is_open(lab, "client", GW4)
