"""``gatekeeper soak lab``: the whole soak scenario in the namespace lab (root; CI runs it). (The
report and the exporter parsing, without a kernel: tests/unit/test_soak.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.fixtures.formats import PNG
from tests.fixtures.needs import need_root


def test_soak_lab(tmp_path: Path) -> None:
    need_root()
    out = tmp_path / "soak"
    duration = 20
    result = subprocess.run([sys.executable, "-m", "gatekeeper", "soak", "lab", "--duration",
                             str(duration), "--out", str(out)],
                            capture_output=True, text=True, timeout=duration + 150, check=False)
    log = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["unauthorised_accepts"] == 0, log
    client = summary["client"]
    assert client["attempts"] > 0, log
    assert client["success_rate"] >= 0.99, log
    # bounded: never more attempts than the pacing allows (one every 0.2 s)
    assert client["attempts"] <= duration / 0.2 + 2
    assert client["sources"] == 30
    assert summary["attacker"]["loops"] > 0
    assert summary["attacker"]["protected_connects"] > 0
    assert summary["gateway"]["memory_samples"] >= duration // 2
    assert summary["gateway"]["procs"]["min"] == 3  # the supervisor and its two workers
    assert summary["gateway"]["grants"] > 0
    assert all(c["ok"] for c in summary["checks"]), log
    assert (out / "soak.png").read_bytes().startswith(PNG)
    assert "result    PASS" in result.stdout
