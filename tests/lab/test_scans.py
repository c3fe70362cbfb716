"""Full-range scans from several sources against doors a scan could walk through."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from gatekeeper.lab.netns import GW4, Lab
from tests.fixtures.configs import config
from tests.fixtures.needs import need_tool
from tests.lab.support import is_open

# Doors a scan is most likely to walk through: all-tcp ascending and descending, all-udp.
SCAN_DOORS = """
[[door]]
name = "up"
sequence = ["1000", "2000", "3000"]
opens = ["2201:tcp"]

[[door]]
name = "down"
sequence = ["6000", "5000", "4000"]
opens = ["2202:tcp"]

[[door]]
name = "udp"
sequence = ["1001:udp", "1002:udp", "1003:udp"]
opens = ["2203:tcp"]
"""


@pytest.mark.parametrize("kind", ["-sS", "-sT", "-sU"])
@pytest.mark.parametrize("order", ["ordered", "random"])
def test_full_range_scans_make_no_grant(lab: Lab, start_daemon: Any, kind: str, order: str) -> None:
    need_tool("nmap", "scripts/setup.sh installs it")
    daemon = start_daemon(config() + SCAN_DOORS)
    flags = ["-r"] if order == "ordered" else []
    for host in ("client", "other"):
        result = lab.run(host, ["nmap", kind, *flags, "-p-", "-n", "-Pn", "-T5", "--max-retries", "0",
                                "--min-rate", "20000", "--host-timeout", "120s", GW4], timeout=180)
        assert "Nmap done" in result.stdout, result.stdout + result.stderr
        open_ports = re.findall(r"^(\d+)/(tcp|udp)\s+open\s", result.stdout, re.M)
        assert not open_ports, f"the scan saw open ports: {open_ports}"
    time.sleep(0.3)
    grants = [ln for ln in daemon.lines if " grant " in f" {ln} "]
    assert grants == [], grants
    for port in (22, 2201, 2202, 2203):
        assert not is_open(lab, "client", GW4, port)
