"""``gatekeeper soak``: the report on synthetic records, the exporter parsing against the
real collector. (The whole scenario in the namespace lab: tests/lab/test_soak_lab.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gatekeeper.cli import build_parser, main
from gatekeeper.engine import Reason
from gatekeeper.lab.soak.common import SoakError, parse_sequence, parse_sources
from gatekeeper.lab.soak.gateway import histogram_quantile, interval_latency, parse_metrics
from gatekeeper.metrics import BUCKETS, GatekeeperCollector, Stats
from tests.fixtures.formats import PNG

T0 = 1_700_000_000.0


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def synthetic(tmp: Path, *, seconds: int = 60, failures: int = 0, accepted: int = 0,
              rss_growth_kb: int = 0) -> Path:
    """The three roles' files as the roles write them, for a run of ``seconds``."""
    d = tmp / "in"
    d.mkdir()
    client: list[dict[str, Any]] = [{"role": "client", "kind": "start", "t": T0}]
    for n in range(seconds * 5):
        ok = n >= failures
        client.append({"role": "client", "kind": "attempt", "t": T0 + n * 0.2, "n": n,
                       "source": f"192.0.2.{100 + n % 30}", "ok": ok,
                       "stage": "done" if ok else "connect", "error": None if ok else "timed out",
                       "knock_ms": 0.1, "connect_ms": 0.4 + (n % 7) / 10 if ok else 900.0,
                       **({"reply_ms": 0.2, "reply": "echo"} if ok else {})})
    client.append({"role": "client", "kind": "end", "t": T0 + seconds})
    write_jsonl(d / "client.jsonl", client)

    attacker: list[dict[str, Any]] = [{"role": "attacker", "kind": "start", "t": T0}]
    for n in range(seconds):
        attacker.append({"role": "attacker", "kind": "loop", "t": T0 + n + 0.5, "n": n,
                         "replay": ["none", "partial", "none", "wrong"][n % 4],
                         "protected_tried": 4, "protected_accepted": 1 if n < accepted else 0,
                         "tcp_probes": 16, "tcp_answered": 0, "udp_sent": 120})
    attacker.append({"role": "attacker", "kind": "end", "t": T0 + seconds})
    write_jsonl(d / "attacker.jsonl", attacker)

    gateway: list[dict[str, Any]] = [{"role": "gateway", "kind": "start", "t": T0}]
    for n in range(seconds):
        gateway.append({"role": "gateway", "kind": "sample", "t": T0 + n, "n": n,
                        "rss_kb": 100_000 + rss_growth_kb * n // max(1, seconds - 1),
                        "pss_kb": 60_000, "fds": 37, "procs": 3, "tracked": 30, "grants_active": 25,
                        "grants_total": n * 5, "queue_dropped": 0, "worker_restarts": 0,
                        "verdicts_total": n * 100, "packets": {"drop_knock": n * 60},
                        "p99_us": 40.0 + n % 5 if n else None, "p99_cum_us": 42.0,
                        "verdicts": 100 if n else None})
    gateway.append({"role": "gateway", "kind": "end", "t": T0 + seconds})
    write_jsonl(d / "gateway.jsonl", gateway)
    return d


def report(d: Path, out: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    code = main(["soak", "report", "--in", str(d), "--out", str(out), *extra])
    return code, json.loads((out / "summary.json").read_text())


def test_report_on_synthetic_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = synthetic(tmp_path, failures=1)
    code, summary = report(d, tmp_path / "out")
    assert code == 0, capsys.readouterr().out
    assert summary["ok"] is True
    assert summary["unauthorised_accepts"] == 0
    assert summary["client"]["attempts"] == 300
    assert summary["client"]["successes"] == 299
    assert summary["client"]["success_rate"] == pytest.approx(299 / 300, abs=1e-5)
    assert summary["client"]["failures"] == {"connect: timed out": 1}
    assert summary["attacker"]["protected_connects"] == 240
    assert summary["attacker"]["replays"] == {"partial": 15, "wrong": 15}
    assert summary["gateway"]["grants"] == 59 * 5
    assert summary["gateway"]["rss_growth_mb"] == 0
    assert summary["gateway"]["p99_verdict_us"]["max"] == 44.0
    assert {c["name"] for c in summary["checks"]} == {
        "unauthorised accepts", "client success rate", "RSS growth", "roles finished"}
    assert (tmp_path / "out" / "soak.png").read_bytes().startswith(PNG)
    out = capsys.readouterr().out
    assert "result    PASS" in out
    assert "unauthorised accepts 0" in out


@pytest.mark.parametrize(("kwargs", "failing"), [
    ({"accepted": 1}, "unauthorised accepts"),
    ({"failures": 4}, "client success rate"),                # 296/300 < 99 %
    ({"rss_growth_kb": 30 * 1024}, "RSS growth"),            # +30 MB > +20 MB
])
def test_report_fails_each_check(tmp_path: Path, kwargs: dict[str, int], failing: str) -> None:
    code, summary = report(synthetic(tmp_path, **kwargs), tmp_path / "out")
    assert code == 1
    assert summary["ok"] is False
    assert [c["name"] for c in summary["checks"] if not c["ok"]] == [failing]
    if failing == "unauthorised accepts":
        assert summary["unauthorised_accepts"] == 1


def test_report_fails_on_a_role_that_did_not_finish(tmp_path: Path) -> None:
    d = synthetic(tmp_path)
    lines = (d / "client.jsonl").read_text().splitlines()
    (d / "client.jsonl").write_text("\n".join(lines[:-1]) + '\n{"role": "client", "ki')  # killed
    code, summary = report(d, tmp_path / "out")
    assert code == 1
    assert summary["bad_lines"] == 1
    assert [c["name"] for c in summary["checks"] if not c["ok"]] == ["roles finished"]


def test_report_without_data_fails(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    write_jsonl(d / "client.jsonl", [{"role": "client", "kind": "start", "t": T0},
                                     {"role": "client", "kind": "end", "t": T0 + 1}])
    code, summary = report(d, tmp_path / "out")
    assert code == 1
    failed = {c["name"] for c in summary["checks"] if not c["ok"]}
    assert failed == {"unauthorised accepts", "client success rate", "RSS growth"}
    assert (tmp_path / "out" / "soak.png").read_bytes().startswith(PNG)


def test_exporter_text_parses_into_the_figures_the_soak_needs() -> None:
    stats = Stats()
    counts = [0] * len(Reason)
    counts[Reason.KNOCK] = 7
    counts[Reason.GRANTED] = 3
    hist = [0] * (len(BUCKETS) + 1)
    hist[BUCKETS.index(0.00005)] = 98   # 98 verdicts in (25 us, 50 us]
    hist[BUCKETS.index(0.0005)] = 2     # 2 in (250 us, 500 us]
    stats.worker_snapshot(1, {"counts": counts, "hist": hist, "hist_sum_ns": 10**6, "knocks": {}})
    stats.granted("ssh")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatekeeperCollector(stats, lambda: {"ssh": 1}, lambda: 2, lambda: ["ssh"]))
    figures = parse_metrics(generate_latest(registry).decode())
    assert figures["packets"]["drop_knock"] == 7
    assert figures["packets"]["accept_granted"] == 3
    assert figures["grants_total"] == 1
    assert figures["queue_dropped"] == 0
    p99 = histogram_quantile(0.99, figures["hist"])
    assert p99 is not None and 0.00025 < p99 <= 0.0005  # rank 99 of 100 lies in the slow bucket
    p50 = histogram_quantile(0.5, figures["hist"])
    assert p50 is not None and 0.000025 < p50 <= 0.00005


def test_interval_latency_is_over_the_last_interval_only() -> None:
    inf = float("inf")
    before = [(0.00005, 1000.0), (0.0005, 1000.0), (inf, 1000.0)]       # 1000 fast verdicts
    after = [(0.00005, 1000.0), (0.0005, 1100.0), (inf, 1100.0)]        # then 100 slow ones
    figures = interval_latency(after, before)
    assert figures["verdicts"] == 100
    assert figures["verdicts_total"] == 1100
    assert 50 < figures["p99_us"] <= 500          # the interval: all slow
    assert figures["p99_cum_us"] <= 500
    assert "p99_us" not in interval_latency(before, None)  # no interval yet
    assert "p99_us" not in interval_latency(before, after)  # counters went back: restart


def test_histogram_quantile_edges() -> None:
    assert histogram_quantile(0.99, []) is None
    assert histogram_quantile(0.99, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    assert histogram_quantile(0.5, [(1.0, 10.0), (float("inf"), 10.0)]) == pytest.approx(0.5)
    # everything above the last finite bucket: its bound, like Prometheus
    assert histogram_quantile(0.99, [(1.0, 0.0), (float("inf"), 5.0)]) == 1.0


def test_sources_and_sequence_parsing() -> None:
    assert parse_sources("192.0.2.100-102, 2001:db8::1") == [
        "192.0.2.100", "192.0.2.101", "192.0.2.102", "2001:db8::1"]
    assert parse_sources("") == []
    for bad in ("192.0.2.5-1", "not-an-address", "192.0.2.0-255,198.51.100.0-255,203.0.113.0-255,"
                "192.0.2.0-255,198.51.100.0-255"):
        with pytest.raises(SoakError):
            parse_sources(bad)
    assert parse_sequence("7000:udp,8000:tcp,9000") == [(17, 7000), (6, 8000), (6, 9000)]
    with pytest.raises(SoakError):
        parse_sequence(" , ")


def test_cli_roles_parse() -> None:
    parser = build_parser()
    args = parser.parse_args(["soak", "client", "--gateway", "192.0.2.1", "--duration", "5",
                              "--out", "c.jsonl", "--sources", "192.0.2.100-129"])
    assert (args.role, args.port, args.interval, args.timeout) == ("client", 22, 0.2, 0.9)
    args = parser.parse_args(["soak", "lab", "--duration", "20", "--out", "d"])
    assert (args.role, args.duration, args.sources, args.min_success) == ("lab", 20.0, 30, 0.99)
    args = parser.parse_args(["soak", "report", "--in", "a", "--out", "b"])
    assert (args.in_dir, args.max_rss_growth_mb, args.max_rss_growth_pct) == ("a", 20.0, 25.0)
    with pytest.raises(SystemExit):
        parser.parse_args(["soak", "client", "--duration", "5", "--out", "x"])  # no --gateway
    assert main(["soak", "client", "--gateway", "192.0.2.1", "--duration", "0", "--out",
                 "/nonexistent/x.jsonl"]) == 2  # refused before any packet or file


