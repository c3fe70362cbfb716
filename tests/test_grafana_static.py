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

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.conftest import need_tool

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
PROMETHEUS_DIR = GRAFANA / "prometheus"
DASHBOARD = GRAFANA / "dashboards" / "gatekeeper.json"
DATASOURCE_PROVISIONING = GRAFANA / "provisioning" / "datasources" / "prometheus.yaml"
DASHBOARD_PROVISIONING = GRAFANA / "provisioning" / "dashboards" / "gatekeeper.yaml"


# --- the metric contract ---------------------------------------------------------------


class Metric(NamedTuple):
    kind: str  # "counter", "gauge" or "histogram"
    # Each label with the values it may take, or None when they are open (a door name,
    # a queue number, a version). Never a source address.
    labels: dict[str, frozenset[str] | None]


def _one_of(*values: str) -> frozenset[str]:
    return frozenset(values)


VERDICTS = _one_of("accept", "drop")
REASONS = _one_of("granted", "unauthorised", "knock", "completed", "closed", "wrong", "duplicate",
                  "ignored", "malformed", "error", "scanner", "refused", "locked")
OUTCOMES = _one_of("advanced", "reset", "timeout", "completed", "duplicate", "nothing-to-close",
                   "locked")
CAUSES = _one_of("queue_full", "socket_full", "worker_down")
RELOAD_RESULTS = _one_of("ok", "refused")
LOCKOUT_CAUSES = _one_of("scan", "source_failures", "prefix_failures")
REFUSED_CAUSES = _one_of("prefix_quota", "table_full")
# SPA (fwknop.Stage) and encrypted-sequence (SequenceStage, access, source) stages
SPA_STAGES = _one_of("ok", "size", "hmac", "decrypt", "parse", "digest", "stale", "replay", "access",
                     "source", "hmac_type", "digest_type", "length", "range", "auth")

# What the supervisor exports on 127.0.0.1:9464 (job "gatekeeper"): the only metric names
# the dashboard and the alert rules may use.
CONTRACT: dict[str, Metric] = {
    "gatekeeper_verdict_seconds": Metric("histogram", {}),
    "gatekeeper_packets_total": Metric("counter", {"verdict": VERDICTS, "reason": REASONS}),
    "gatekeeper_knocks_total": Metric("counter", {"door": None, "outcome": OUTCOMES}),
    "gatekeeper_spa_total": Metric("counter", {"door": None, "stage": SPA_STAGES}),
    "gatekeeper_grants_active": Metric("gauge", {"door": None}),
    "gatekeeper_grants_total": Metric("counter", {"door": None}),
    "gatekeeper_queue_dropped_total": Metric("counter", {"queue": None, "cause": CAUSES}),
    "gatekeeper_queue_depth": Metric("gauge", {"queue": None}),
    "gatekeeper_worker_restarts_total": Metric("counter", {}),
    "gatekeeper_workers": Metric("gauge", {}),
    "gatekeeper_config_reloads_total": Metric("counter", {"result": RELOAD_RESULTS}),
    "gatekeeper_build_info": Metric("gauge", {"version": None}),
    "gatekeeper_tracked_sources": Metric("gauge", {}),
    "gatekeeper_lockouts_total": Metric("counter", {"cause": LOCKOUT_CAUSES}),
    "gatekeeper_sources_refused_total": Metric("counter", {"cause": REFUSED_CAUSES}),
    "gatekeeper_sources_evicted_total": Metric("counter", {}),
    "gatekeeper_commands_dropped_total": Metric("counter", {"command": _one_of("start_command",
                                                                                "stop_command")}),
    # [cluster]; exported without it too (state "off", the rest at 0)
    "gatekeeper_cluster_state": Metric("gauge", {"state": _one_of("off", "up", "down")}),
    "gatekeeper_cluster_seconds": Metric("histogram", {}),
    "gatekeeper_cluster_errors_total": Metric("counter", {}),
    "gatekeeper_cluster_fallbacks_total": Metric("counter", {"mode": _one_of("closed", "local")}),
    "gatekeeper_cluster_mirrored_total": Metric("counter", {}),
    "gatekeeper_cluster_bad_messages_total": Metric("counter", {}),
    # each interface named in [gatekeeper] interfaces (no wildcard; none for "all but lo")
    "gatekeeper_interface_present": Metric("gauge", {"interface": None,
                                                     "hotplug": _one_of("true", "false")}),
    "gatekeeper_interface_changes_total": Metric("counter", {
        "interface": None, "change": _one_of("removed", "renamed", "appeared")}),
    # the running ruleset, audited every audit_interval (by address family)
    "gatekeeper_ruleset_intact": Metric("gauge", {"family": _one_of("4", "6")}),
    "gatekeeper_ruleset_repairs_total": Metric("counter", {"family": _one_of("4", "6")}),
}
# The buckets of gatekeeper_verdict_seconds, in seconds (one boundary at the 100 us target).
VERDICT_BUCKETS = (0.000005, 0.00001, 0.000025, 0.00005, 0.000075, 0.0001, 0.00025, 0.0005, 0.001,
                   0.005, 0.025, 0.1)
JOB = "gatekeeper"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
SCRAPE_SERIES = frozenset({"up"})  # made by Prometheus itself for every target
TARGET_LABELS = frozenset({"job", "instance"})  # added by Prometheus to every scraped series
ALERTS = frozenset({"GatekeeperDown", "GatekeeperQueueDropping", "GatekeeperVerdictLatencyHigh",
                    "GatekeeperClusterStoreDown", "GatekeeperInterfaceMissing",
                    "GatekeeperInterfaceRenamed",
                    "GatekeeperRulesetBypassed", "GatekeeperRulesetRepaired",
                    "GatekeeperKnockBruteForce", "GatekeeperWorkerRestartLoop"})


def contract_metric(series: str) -> str | None:
    """The contract metric a series name belongs to (``_bucket``, ``_sum`` and ``_count``
    to their histogram), or None."""
    if series in CONTRACT:
        return series
    for suffix in HISTOGRAM_SUFFIXES:
        base = series.removesuffix(suffix)
        if base != series and CONTRACT.get(base, Metric("", {})).kind == "histogram":
            return base
    return None


# --- a small PromQL reader: enough for selectors, matchers and grouping labels ------------

_RANGE = re.compile(r"\[[^\]]*\]")  # [5m], [$__rate_interval], [1h:1m]
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:]|\s*\()")  # not a function call
_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
                       "or", "unless", "offset", "inf", "nan", "atan2"})
_LITERALS = re.compile(r"[\w-]+(?:\|[\w-]+)*")  # "a" or "a|b|c": a regex matcher of plain values


class Selector(NamedTuple):
    name: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, operator, value)


class Parsed(NamedTuple):
    names: frozenset[str]
    selectors: tuple[Selector, ...]
    grouping: frozenset[str]


def parse_promql(expr: str) -> Parsed:
    text = _RANGE.sub(" ", expr)
    grouping = frozenset(
        label.strip() for labels in _GROUPING.findall(text) for label in labels.split(",") if label.strip()
    )
    text = _GROUPING.sub(" ", text)
    selectors = []
    for name, body in _SELECTOR.findall(text):
        matchers = tuple(_MATCHER.findall(body))
        assert "".join(m.group(0) for m in _MATCHER.finditer(body)).strip() == body.strip(), (
            f"cannot read the label matchers {{{body}}} in {expr!r}")
        if not name:
            name = next((v for lbl, op, v in matchers if lbl == "__name__" and op == "="), "")
        assert name, f"a selector without a metric name in {expr!r}"
        selectors.append(Selector(name, matchers))
    # What is left: bare metric names (selectors without matchers), functions, keywords.
    text = _STRING.sub(" ", _SELECTOR.sub(" ", text))
    selectors += [Selector(n, ()) for n in _NAME.findall(text) if n.lower() not in _KEYWORDS]
    return Parsed(frozenset(s.name for s in selectors), tuple(selectors), grouping)


def contract_problems(expr: str) -> list[str]:
    """What in one query goes beyond the contract: unknown metrics or labels, label values
    the exporter never produces, a selector that does not pick job="gatekeeper"."""
    parsed = parse_promql(expr)
    problems = []
    known_labels = set(TARGET_LABELS)
    for name in sorted(parsed.names):
        metric = contract_metric(name)
        if metric is None and name not in SCRAPE_SERIES:
            problems.append(f"metric {name} is not in the contract")
        elif metric is not None:
            known_labels |= CONTRACT[metric].labels.keys()
            if name.endswith("_bucket"):
                known_labels.add("le")
    for sel in parsed.selectors:
        metric = contract_metric(sel.name)
        labels = dict(CONTRACT[metric].labels) if metric else {}
        if sel.name.endswith("_bucket"):
            labels["le"] = None
        if ("job", "=", JOB) not in sel.matchers:
            problems.append(f'{sel.name}: the selector does not pick job="{JOB}"')
        for label, op, value in sel.matchers:
            if label in TARGET_LABELS or label == "__name__":
                continue
            if label not in labels:
                problems.append(f"{sel.name}: no label {label} in the contract")
                continue
            allowed = labels[label]
            if allowed is None or op in ("!=", "!~"):
                continue
            if op == "=~" and not _LITERALS.fullmatch(value):
                problems.append(f"{sel.name}: cannot check the regex {label}=~{value!r}")
                continue
            unknown = set(value.split("|")) - allowed
            if unknown:
                problems.append(f"{sel.name}: {label} never takes the value(s) {sorted(unknown)}")
    for label in sorted(parsed.grouping - known_labels):
        problems.append(f"grouping by {label}, which none of its metrics has")
    return problems


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


def rule_exprs() -> dict[str, str]:
    """alert name -> expr, from alerts.yml (plain, quoted or block-scalar exprs)."""
    lines = (PROMETHEUS_DIR / "alerts.yml").read_text().splitlines()
    exprs: dict[str, str] = {}
    alert = None
    for i, line in enumerate(lines):
        if found := re.match(r"\s*-\s+(alert|record):\s*(\S+)", line):
            alert = found.group(2)
        elif (found := re.match(r"(\s*)expr:\s*(.*?)\s*$", line)) and alert is not None:
            value = found.group(2)
            if value and value[0] in "|>":
                indent = len(found.group(1))
                block = []
                for following in lines[i + 1:]:
                    if following.strip() and len(following) - len(following.lstrip()) <= indent:
                        break
                    block.append(following.strip())
                value = " ".join(b for b in block if b)
            elif value[:1] in "'\"":
                value = value[1:-1]
            assert alert not in exprs, f"{alert} twice in alerts.yml"
            exprs[alert] = value
    return exprs


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


def load_dashboard() -> dict[str, Any]:
    with DASHBOARD.open() as f:
        dashboard: dict[str, Any] = json.load(f)
    return dashboard


def provisioned_datasource() -> dict[str, str]:
    text = DATASOURCE_PROVISIONING.read_text()
    found = {key: re.search(rf"^\s*-?\s*{key}:\s*(\S+)\s*$", text, re.M) for key in ("type", "uid", "url")}
    assert all(found.values()), f"type, uid and url in {DATASOURCE_PROVISIONING}"
    return {key: m.group(1) for key, m in found.items() if m}


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))  # a collapsed row holds its panels


def all_exprs(node: Any) -> Iterator[str]:
    """Every PromQL expression in the dashboard (targets, annotations)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from all_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from all_exprs(item)


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
