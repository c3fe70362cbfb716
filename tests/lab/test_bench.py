"""``gatekeeper bench --quick`` runs end to end and prints every figure.

Small counts, so it takes seconds; it checks that each figure is there and sane, never
that a number meets a target (that depends on the machine).
"""

from __future__ import annotations

import re
import subprocess
import sys

from tests.fixtures.needs import need_root

NUMBER = r"[\d,]+(?:\.\d+)?"


def test_quick_bench_prints_every_figure() -> None:
    need_root()
    result = subprocess.run([sys.executable, "-m", "gatekeeper", "bench", "--quick"],
                            capture_output=True, text=True, timeout=120, check=False)
    out = result.stdout
    assert result.returncode == 0, result.stderr + out
    expect = [
        rf"bare drop-only NetfilterQueue loop, 1 queue\s+{NUMBER}",
        rf"bare drop-only batch loop \(_nfq\), 1 queue\s+{NUMBER}",
        rf"gatekeeper, 1 worker\s+{NUMBER}",
        r"gatekeeper 1 worker / bare loop\s+\d+\.\d\d",
        r"gatekeeper 1 worker / bare batch loop\s+\d+\.\d\d",
        rf"gatekeeper, 1 worker, metrics off\s+{NUMBER}",
        # with metrics against without: printed, never judged here (it depends on the machine)
        r"instrumentation cost: -?\d+\.\d% of throughput \(target < 15%\)",
        rf"in process, without the kernel: decide_batch {NUMBER} us, timed {NUMBER} us a verdict",
        rf"short junk\s+udp-any off {NUMBER} us, on {NUMBER} us a verdict \(x\d+\.\d\d\)",
        rf"base64 junk\s+udp-any off {NUMBER} us, on {NUMBER} us a verdict \(x\d+\.\d\d\)",
        rf"gatekeeper, 2 workers \(aggregate\)\s+{NUMBER}",
        r"gatekeeper 2 workers / 1 worker\s+\d+\.\d\d",
        r"bare loop 2 queues / 1 queue \(the machine\)\s+\d+\.\d\d",
        rf"p50 {NUMBER} us\s+p99 {NUMBER} us",
        r"first SYN accepted (\d+)/(\d+)",
        rf"first knock sent -> connected: median {NUMBER} ms, p99 {NUMBER} ms",
        rf"IPv4: {NUMBER} bytes/source allocated \(tracemalloc\), {NUMBER} bytes/source resident",
        rf"IPv6: {NUMBER} bytes/source allocated",
        r"bounded: [\d,]+ sources fed to a table of max_sources = ([\d,]+): ([\d,]+) tracked",
        r"gatekeeper, 1 worker\s+sent\s+[\d,]+\s+queued\s+[\d,]+\s+queue_dropped\s+[\d,]+\s+"
        r"queue_user_dropped\s+[\d,]+",
        r"latency run\s+sent\s+[\d,]+\s+queue_dropped [\d,]+\s+queue_user_dropped [\d,]+",
    ]
    for pattern in expect:
        assert re.search(pattern, out), f"no /{pattern}/ in:\n{out}"
    knocks = re.search(r"first SYN accepted (\d+)/(\d+)", out)
    assert knocks is not None and int(knocks[2]) >= 1 and int(knocks[1]) >= 1
    table = re.search(r"max_sources = ([\d,]+): ([\d,]+) tracked", out)
    assert table is not None and table[1] == table[2], "an overfed table holds max_sources"
    assert "FAILED" not in out + result.stderr


def test_quick_cluster_bench_prints_local_beside_cluster() -> None:
    need_root()
    result = subprocess.run([sys.executable, "-m", "gatekeeper", "bench", "--cluster", "--quick"],
                            capture_output=True, text=True, timeout=180, check=False)
    out = result.stdout
    assert result.returncode == 0, result.stderr + out
    for mode in ("local", "cluster"):
        assert re.search(rf"^\s+{mode}\s+{NUMBER} verdicts/s", out, re.M), out
        found = re.search(rf"^\s+{mode}\s+first-SYN (\d+)/(\d+); knock->connected median {NUMBER}",
                          out, re.M)
        assert found is not None and int(found[1]) >= 1, out
    assert re.search(rf"store round trip per hot-path call .*: mean {NUMBER} us over [1-9]", out), out
    assert re.search(rf"in gw2's kernel set after median {NUMBER} ms", out), out
    assert "FAILED" not in out + result.stderr
