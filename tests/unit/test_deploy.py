"""The systemd unit shipped with the package: valid, hardened, and what it promises."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from gatekeeper.deploy import unit_text
from tests.fixtures.needs import need_tool


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    exe = tmp_path / "gatekeeper"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    path = tmp_path / "gatekeeper.service"
    path.write_text(unit_text(str(exe)))
    return path


def test_unit_names_this_installation_and_the_systemd_contract(unit: Path) -> None:
    text = unit.read_text()
    assert "@GATEKEEPER@" not in text
    assert re.search(r"^Type=notify$", text, re.M)
    assert re.search(r"^ExecReload=/bin/kill -HUP \$MAINPID$", text, re.M)
    assert re.search(r"^AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW$", text, re.M)
    assert re.search(r"^CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW$", text, re.M)
    assert re.search(r"^User=gatekeeper$", text, re.M)
    assert re.search(r"^RuntimeDirectory=gatekeeper$", text, re.M)


def test_systemd_analyze_verify(unit: Path) -> None:
    tool = need_tool("systemd-analyze", "Debian's systemd package")
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True,
                            check=False, env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    problems = [ln for ln in result.stderr.splitlines()
                if str(unit) in ln and "Failed to resolve user" not in ln]
    assert result.returncode == 0 or not problems, result.stderr
    assert not problems, result.stderr


def test_systemd_analyze_security_scores_it_well(unit: Path) -> None:
    tool = need_tool("systemd-analyze", "Debian's systemd package")
    result = subprocess.run([tool, "security", "--offline=yes", "--no-pager", str(unit)],
                            capture_output=True, text=True, check=False)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\S+)", result.stdout)
    assert match, result.stdout + result.stderr
    score = float(match.group(1))
    print(f"\nsystemd-analyze security: {score} {match.group(2)}")
    assert score <= 2.0, result.stdout  # "OK" or better on systemd's 0-10 exposure scale
