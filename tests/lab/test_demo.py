"""The README's first command ends in `gatekeeper demo`: it must run, start to finish."""

from __future__ import annotations

import subprocess
import sys

from tests.fixtures.needs import need_root


def test_demo_runs_and_cleans_up() -> None:
    need_root()
    result = subprocess.run([sys.executable, "-m", "gatekeeper", "demo", "--open-for", "2"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "first SYN accepted" in out
    assert "new connection after expiry: shut" in out
    assert "still works" in out
    assert "rules removed: yes" in out and "demo OK" in out
