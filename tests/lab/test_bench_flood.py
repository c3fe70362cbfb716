"""``gatekeeper bench --flood --quick`` runs end to end and prints every figure.

It checks the report's shape and what a user relies on that is no timing: with the prefilter
on, (nearly) none of a random-port flood reaches the queue, without it all of it does; the
legitimate client gets in during the flood. Never how fast anything is.
"""

from __future__ import annotations

import re
import subprocess
import sys

from tests.fixtures.needs import need_root, need_tool

NUMBER = r"[\d,]+(?:\.\d+)?"


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def test_quick_flood_bench_prints_both_modes() -> None:
    need_root()
    need_tool("gcc", "the bench compiles its C flood sender")
    result = subprocess.run([sys.executable, "-m", "gatekeeper", "bench", "--flood", "--quick"],
                            capture_output=True, text=True, timeout=180, check=False)
    out = result.stdout
    assert result.returncode == 0, result.stderr + out
    assert "FAILED" not in out + result.stderr
    share = {}
    for mode in ("off", "on"):
        m = re.search(rf"prefilter {mode}\s+sent ({NUMBER})\s+reached netfilter ({NUMBER})\s+queued "
                      rf"({NUMBER})\s+queue_dropped ({NUMBER})\s+dropped by the prefilter ({NUMBER})", out)
        assert m is not None, out
        sent, reached, queued, full, _ = (_int(g) for g in m.groups())
        assert sent > 0 and reached > 0, out
        share[mode] = (sent, reached, queued, full)
    sent, reached, queued, full = share["off"]
    assert queued + full >= 0.99 * reached, "without the prefilter every junk packet is queued"
    sent, reached, queued, full = share["on"]
    assert queued <= 0.01 * sent, "with the prefilter at most 1 % of random junk reaches the queue"
    assert re.search(r"share reaching the queue: off [\d.]+ %, on [\d.]+ % \(goal: on <= 1 %\); "
                     r"on/off [\d.]+", out), out
    for mode in ("off", "on"):
        steps = re.findall(rf"prefilter {mode}\s+asked\s+{NUMBER}/s\s+sent\s+{NUMBER}/s\s+"
                           r"first SYN accepted (\d+)/(\d+)", out)
        assert steps, out
        assert int(steps[0][0]) >= 1, f"the legitimate client got in during the flood ({mode})"
        assert re.search(rf"highest rate with >= \d+/\d+, prefilter {mode}: .*; stopped by ", out), out
    assert re.search(r"highest rate on/off: (?:[\d.]+|-)", out), out
    door = re.findall(r"prefilter (off|on)\s+default quotas\s+first SYN accepted (\d+)/(\d+).*"
                      r"defences: ", out)
    assert sorted(m for m, _, _ in door) == ["off", "on"], out
    assert re.search(rf"floor \(raw-table DROP, no daemon\)\s+-?{NUMBER} us a packet", out), out
    for mode in ("off", "on"):
        assert re.search(rf"prefilter {mode}\s+-?{NUMBER} us a packet \(senders", out), out
    assert re.search(r"gateway CPU per dropped packet off/on: (?:-?[\d.]+|-)", out), out
