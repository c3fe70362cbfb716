"""Static checks of the operator side under grafana/, with no Prometheus or Grafana running.

promtool (Debian's ``prometheus`` package, which scripts/setup.sh installs) checks the
Prometheus configuration and the alert rules and runs the alert unit tests. The dashboard
is checked for its uid, its datasource and its queries. Every metric that a dashboard
query or an alert rule uses must belong to ``CONTRACT``, the metrics the supervisor's
exporter promises: a live test can import ``CONTRACT`` and ``contract_metric`` and compare
them with what the exporter really exports.

Without promtool these tests are skipped with a reason; under CI (``CI`` set) a missing
promtool is a failure, never a skip.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.fixtures.grafana import (
    ALERTS,
    CONTRACT,
    DASHBOARD_PROVISIONING,
    JOB,
    PROMETHEUS_DIR,
    VERDICT_BUCKETS,
    all_exprs,
    all_panels,
    contract_metric,
    contract_problems,
    load_dashboard,
    parse_promql,
    provisioned_datasource,
    rule_exprs,
)
from tests.fixtures.needs import need_tool


@pytest.mark.parametrize(("expr", "names"), [
    ('histogram_quantile(0.99, sum by (job, le) (rate(gatekeeper_verdict_seconds_bucket{job="gatekeeper"}'
     "[5m]))) > 1e-4", {"gatekeeper_verdict_seconds_bucket"}),
    ('up{job="gatekeeper"} == 0 or absent(up{job="gatekeeper"})', {"up"}),
    ("60 * sum(rate(foo_total[$__rate_interval] offset 1h)) by (door) / on (door) group_left bar",
     {"foo_total", "bar"}),
    ('{__name__="baz", job="x"} and qux', {"baz", "qux"}),
])
def test_promql_reader_finds_metric_names(expr: str, names: set[str]) -> None:
    assert parse_promql(expr).names == names


@pytest.mark.parametrize(("expr", "problem"), [
    ('rate(gatekeeper_packets{job="gatekeeper"}[5m])', "not in the contract"),
    ("rate(gatekeeper_packets_total[5m])", 'does not pick job="gatekeeper"'),
    ('rate(gatekeeper_knocks_total{job="gatekeeper", outcome=~"reset|timed_out"}[5m])', "timed_out"),
    ('rate(gatekeeper_knocks_total{job="gatekeeper", source="192.0.2.1"}[5m])', "no label source"),
    ('sum by (reason) (gatekeeper_knocks_total{job="gatekeeper"})', "grouping by reason"),
    ('gatekeeper_verdict_seconds_bucket{job="gatekeeper", le="0.0001"}', None),
])
def test_contract_check_catches_what_the_exporter_does_not_export(expr: str, problem: str | None) -> None:
    problems = contract_problems(expr)
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


# --- promtool ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    return need_tool("promtool", "apt-get install prometheus; scripts/setup.sh does")


def run_promtool(promtool: str, *args: str) -> str:
    # Relative paths (rule_files in prometheus.yml, in alerts_test.yml) are relative to the
    # file that names them, so the files are checked where they are.
    done = subprocess.run([promtool, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True,
                          timeout=60, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def test_prometheus_config_is_valid(promtool: str) -> None:
    output = run_promtool(promtool, "check", "config", "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in output, output


def test_alert_rules_are_valid(promtool: str) -> None:
    output = run_promtool(promtool, "check", "rules", "alerts.yml")
    found = re.search(r"SUCCESS: (\d+) rules found", output)
    assert found, output
    assert int(found.group(1)) == len(rule_exprs()), "every rule's expr is read by rule_exprs()"


def test_alert_unit_tests_pass(promtool: str) -> None:
    output = run_promtool(promtool, "test", "rules", "alerts_test.yml")
    assert "SUCCESS" in output, output


# --- the alert rules, read without a YAML library ------------------------------------------


def test_the_alerts_are_the_agreed_ones() -> None:
    assert set(rule_exprs()) == ALERTS


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_alert_uses_only_contract_metrics(alert: str) -> None:
    expr = rule_exprs()[alert]
    assert contract_problems(expr) == [], expr


def test_every_alert_has_a_case_that_fires_and_one_that_does_not() -> None:
    text = (PROMETHEUS_DIR / "alerts_test.yml").read_text()
    cases = re.findall(r"alertname:\s*(\S+)\s*\n\s*exp_alerts:[ \t]*(\[\])?", text)
    fires = {name for name, empty in cases if not empty}
    silent = {name for name, empty in cases if empty}
    assert fires == ALERTS
    assert silent == ALERTS


# --- the dashboard -------------------------------------------------------------------------


def test_provisioning_matches_the_setup() -> None:
    assert provisioned_datasource() == {"type": "prometheus", "uid": "prometheus",
                                        "url": "http://localhost:9090"}
    provider = DASHBOARD_PROVISIONING.read_text()
    assert re.search(r"^\s*type:\s*file\s*$", provider, re.M)
    assert re.search(r"^\s*path:\s*/var/lib/grafana/dashboards/gatekeeper\s*$", provider, re.M)
    config = (PROMETHEUS_DIR / "prometheus.yml").read_text()
    assert re.search(rf"job_name:\s*{JOB}\s*$", config, re.M)
    assert '"127.0.0.1:9464"' in config


def test_dashboard_identity() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "gatekeeper"
    assert dashboard["title"] == "gatekeeper"
    assert 38 <= dashboard["schemaVersion"] <= 41, "Grafana 10 or 11"
    assert "id" not in dashboard or dashboard["id"] is None, "a provisioned dashboard has no fixed id"


def test_every_panel_queries_the_provisioned_datasource() -> None:
    ds = provisioned_datasource()
    want = {"type": ds["type"], "uid": ds["uid"]}
    panels = list(all_panels(load_dashboard()["panels"]))
    assert panels
    for panel in panels:
        title = panel.get("title")
        assert panel.get("datasource") == want, title
        targets = panel.get("targets") or []
        assert targets, f"{title}: no targets"
        for target in targets:
            assert target.get("datasource", want) == want, title
            assert isinstance(target.get("expr"), str) and target["expr"].strip(), f"{title}: empty expr"
    refs = [(p["id"], t["refId"]) for p in panels for t in p["targets"]]
    assert len(refs) == len(set(refs)), "refIds unique within a panel"
    for annotation in load_dashboard()["annotations"]["list"]:
        if not annotation.get("builtIn"):
            assert annotation.get("datasource") == want, annotation.get("name")


def test_panels_fit_the_grid_without_overlapping() -> None:
    panels = list(all_panels(load_dashboard()["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    taken: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_dashboard_uses_only_contract_metrics_and_all_of_them() -> None:
    exprs = list(all_exprs(load_dashboard()))
    assert exprs
    used = set()
    for expr in exprs:
        assert contract_problems(expr) == [], expr
        used |= {contract_metric(n) for n in parse_promql(expr).names} - {None}
    assert used == set(CONTRACT), f"no panel for {sorted(set(CONTRACT) - used)}"


def test_latency_panels_and_alert_agree_with_the_buckets() -> None:
    # The 100 us target is a bucket boundary, so the p99 threshold is exact.
    assert 0.0001 in VERDICT_BUCKETS
    assert re.search(r"\)\s*>\s*0\.0001$", rule_exprs()["GatekeeperVerdictLatencyHigh"])
    heatmaps = [p for p in all_panels(load_dashboard()["panels"]) if p["type"] == "heatmap"]
    assert heatmaps, "a heatmap of the verdict latency buckets"
    for panel in heatmaps:
        assert panel["options"]["calculate"] is False, "the exporter's buckets, not Grafana's"
        assert all(t.get("format") == "heatmap" for t in panel["targets"])
        assert all("gatekeeper_verdict_seconds_bucket" in t["expr"] for t in panel["targets"])


def test_the_exporter_writes_only_what_the_contract_allows_and_every_closed_value() -> None:
    """The collector as the supervisor builds it (an SPA door, an encrypted-sequence door):
    every series is a contract metric with the contract's labels, every closed label takes
    exactly the contract's values. The live monitoring test checks the same in Prometheus."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from gatekeeper.daemon.commands import CommandRunner
    from gatekeeper.engine.special import SEQUENCE_STAGES, SPA_STAGES
    from gatekeeper.metrics import GatekeeperCollector, Stats

    runner = CommandRunner(workers=1)
    try:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(GatekeeperCollector(
            Stats(), dict, lambda: 1, lambda: ["ssh", "spa", "seq"],
            spa_doors=lambda: {"spa": SPA_STAGES, "seq": SEQUENCE_STAGES},
            commands_dropped=runner.dropped, ruleset=lambda: {4: (True, 0), 6: (True, 0)}))
        text = generate_latest(registry).decode()
    finally:
        runner.shutdown(wait=True)
    seen: dict[tuple[str, str], set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            metric = contract_metric(sample.name)
            if metric is None:
                assert not sample.name.startswith("gatekeeper_"), f"{sample.name} is not in the contract"
                continue
            labels = set(sample.labels) - {"le"}
            assert labels == set(CONTRACT[metric].labels), (sample.name, sorted(labels))
            for label in labels:
                seen.setdefault((metric, label), set()).add(sample.labels[label])
    for (metric, label), values in sorted(seen.items()):
        allowed = CONTRACT[metric].labels[label]
        if allowed is not None and metric != "gatekeeper_cluster_state":  # one state at a time
            assert values == allowed, f"{metric}: {label} = {sorted(values)}, contract {sorted(allowed)}"
