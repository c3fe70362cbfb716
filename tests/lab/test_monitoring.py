"""Monitoring, live: Debian's real Prometheus scrapes the real daemon in the namespace lab.

The daemon runs in the gateway namespace with its metrics on (the default,
127.0.0.1:9464); ``prometheus`` runs beside it, in the same namespace, with a copy of
grafana/prometheus/prometheus.yml and alerts.yml that scrapes and evaluates every second.
The config has three knock doors and an SPA door (gatekeeper_spa_total has series only
for SPA doors). While knocks that succeed (grants, on every knock door, IPv4 and IPv6),
wrong knocks (resets), late knocks (timeouts), junk to random ports and to the SPA port,
and unauthorised connects flow, one worker is killed with SIGKILL (so it is restarted)
and the config is reloaded (SIGHUP). Then,
through Prometheus' HTTP API, from inside the gateway namespace:

* every query of the dashboard (each panel target, each annotation), with Grafana's
  variables replaced by :data:`GRAFANA_VARIABLES`, succeeds and returns series that carry
  every label the panel's legend (or the annotation's tags) uses, with numbers in them;
* every alert rule's expression, its comparison taken off, returns series with the labels
  the rule groups by and its annotations print; ``/api/v1/rules`` reports every rule
  evaluated with health ``ok``;
* every metric of the contract (tests/unit/test_grafana_static.py) is in Prometheus, and so is
  every metric name written anywhere under grafana/: a name the exporter does not export
  fails. Every gatekeeper series is in the contract, with exactly its labels and values;
* the figures tell what happened: one restart, one reload, grants as many as the log's
  grant lines, resets, timeouts and completed knocks per door, unauthorised drops;
* grafana/render_panels.py draws the key panels from that Prometheus into a PNG
  (``GATEKEEPER_DASHBOARD_PNG=docs/dashboard.png`` keeps a copy: how docs/dashboard.png
  is made).

Without Debian's ``prometheus`` the test is skipped with a reason; under CI (``CI`` set)
that is a failure. Everything is bounded in time; the daemon, Prometheus and the traffic
are stopped whatever happens.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.lab.netns import GW4, GW6, SERVER4, Lab
from gatekeeper.model import DEFAULT_SPA_PORT
from tests.fixtures.configs import SSH, config
from tests.fixtures.formats import PNG
from tests.fixtures.grafana import (
    ALERTS,
    CONTRACT,
    DASHBOARD,
    GRAFANA,
    JOB,
    all_panels,
    contract_metric,
    load_dashboard,
    rule_exprs,
)
from tests.fixtures.needs import need_tool
from tests.lab.monitoring import (
    CLIENT_TRAFFIC,
    JUNK_TRAFFIC,
    METRICS_URL,
    PROMETHEUS_URL,
    STEP,
    Prometheus,
    finite,
    legend_labels,
    names_written_in_grafana,
    stop_quietly,
    substitute,
    without_comparison,
)

TRAFFIC_SECONDS = 16.0
KILL_AT, RELOAD_AT = 4.0, 8.0  # seconds into the traffic
# What each alert's expression, its comparison taken off, must return labels for: the
# labels it groups by, and job and instance, which the annotations print.
ALERT_LABELS = {
    "GatekeeperDown": {"job", "instance"},
    "GatekeeperQueueDropping": {"job", "instance", "queue", "cause"},
    "GatekeeperVerdictLatencyHigh": {"job", "instance"},
    "GatekeeperKnockBruteForce": {"job", "instance", "door"},
    "GatekeeperWorkerRestartLoop": {"job", "instance"},
    "GatekeeperClusterStoreDown": {"job", "instance"},
    "GatekeeperInterfaceMissing": {"job", "instance", "interface"},
    "GatekeeperInterfaceRenamed": {"job", "instance", "interface"},
    "GatekeeperRulesetBypassed": {"job", "instance", "family"},
    "GatekeeperRulesetRepaired": {"job", "instance", "family"},
}
DOORS = {"ssh", "rdp", "ping", "spa"}
KNOCK_DOORS = ("ssh", "rdp", "ping")
# Open label values other than DOORS and the queues, and closed ones of which a
# gateway exports only some: gatekeeper_spa_total has series for SPA doors alone, with
# the stages of an SPA door (an encrypted-sequence door has others).
LABEL_VALUES = {("gatekeeper_spa_total", "door"): {"spa"}}
SOME_OF = {("gatekeeper_spa_total", "stage"), ("gatekeeper_interface_present", "hotplug")}
# The lab's three doors, sequences 2 s (LATE knocks time out sooner), and an SPA door.
CONFIG = config(**{"sequence_timeout = 3": "sequence_timeout = 2"}) + """
[[door]]
name = "spa"
spa = true
key_file = "{spa_key}"
opens = ["22:tcp"]
"""

RDP = ["4001", "4002:udp", "4003"]
PING = ["64:icmp", "128:icmp"]
GOOD = [f"203.0.113.{i}" for i in range(100, 120)]  # knock right, then connect
WRONG = [f"203.0.113.{i}" for i in range(120, 130)]  # first step, then a port of no door
LATE = [f"203.0.113.{i}" for i in range(130, 140)]  # first step, second after the timeout

# --- Prometheus ----------------------------------------------------------------------------


@pytest.fixture
def prometheus(lab: Lab, tmp_path: Path) -> Iterator[Prometheus]:
    binary = need_tool("prometheus", "apt-get install prometheus; scripts/setup.sh does")
    home = tmp_path / "prometheus"
    home.mkdir()
    server = Prometheus(lab, binary, home)
    try:
        yield server
    finally:
        server.stop()


# --- helpers -------------------------------------------------------------------------------


# --- the checks: each returns what is wrong ------------------------------------------------


def check_dashboard(prometheus: Prometheus, start: str, end: str) -> list[str]:
    """Every panel target and annotation: data, with the labels its legend or tags use."""
    dashboard = load_dashboard()
    queries: list[tuple[str, str, dict[str, str], set[str]]] = []  # (what, path, params, labels)
    for panel in all_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            what = f"panel {panel['title']!r} {target['refId']}: {target['expr']}"
            expr = substitute(target["expr"])
            labels = legend_labels(target.get("legendFormat", ""))
            if target.get("instant"):
                queries.append((what, "/api/v1/query", {"query": expr, "time": end}, labels))
            else:
                queries.append((what, "/api/v1/query_range",
                                {"query": expr, "start": start, "end": end, "step": STEP}, labels))
    for annotation in dashboard["annotations"]["list"]:
        if annotation.get("expr"):
            tags = {t.strip() for t in annotation.get("tagKeys", "").split(",") if t.strip()}
            queries.append((f"annotation {annotation['name']!r}: {annotation['expr']}", "/api/v1/query_range",
                            {"query": substitute(annotation["expr"]), "start": start, "end": end,
                             "step": STEP}, tags | legend_labels(annotation.get("titleFormat", ""))))
    assert len(queries) >= 20, "the dashboard's queries were found"
    failures = []
    answers = prometheus.api(*((path, params) for _, path, params, _ in queries))
    for (what, _, _, labels), answer in zip(queries, answers, strict=True):
        body = answer["body"]
        if answer["http"] != 200 or not isinstance(body, dict) or body.get("status") != "success":
            failures.append(f"{what}: {answer}")
            continue
        result = body["data"]["result"]
        if not result:
            failures.append(f"{what}: no data")
            continue
        for series in result:
            missing = labels - set(series["metric"])
            if missing:
                failures.append(f"{what}: a series without {sorted(missing)}: {series['metric']}")
        if not finite([v for s in result for v in (s.get("values") or [s["value"]])]):
            failures.append(f"{what}: no number in {len(result)} series (all NaN)")
    return failures


def check_alerts(prometheus: Prometheus, end: str) -> list[str]:
    """Every rule loaded and evaluated with health ok; its expression without the
    comparison gives data with the labels it groups by and its annotations print."""
    rules = rule_exprs()
    assert set(rules) == ALERTS == set(ALERT_LABELS)
    loaded = {r["name"]: r for g in prometheus.data("/api/v1/rules", {})["groups"] for r in g["rules"]}
    assert set(loaded) == ALERTS, f"Prometheus loaded {sorted(loaded)}"
    failures = []
    for name, rule in sorted(loaded.items()):
        if rule["health"] != "ok" or rule.get("lastError") or rule["lastEvaluation"].startswith("0001"):
            failures.append(f"rule {name}: health {rule['health']}, last error {rule.get('lastError')!r}, "
                            f"last evaluated {rule['lastEvaluation']}")
    stripped = {name: without_comparison(expr) for name, expr in rules.items()}
    answers = prometheus.api(*(("/api/v1/query", {"query": q, "time": end}) for q in stripped.values()))
    for (name, query), answer in zip(stripped.items(), answers, strict=True):
        what = f"alert {name}: {query}"
        body = answer["body"]
        if answer["http"] != 200 or body.get("status") != "success":
            failures.append(f"{what}: {answer}")
            continue
        result = body["data"]["result"]
        printed = set(re.findall(r"\$labels\.(\w+)", json.dumps(loaded[name].get("annotations", {}))))
        want = ALERT_LABELS[name] | printed
        if not result:
            failures.append(f"{what}: no data")
        for series in result:
            missing = want - set(series["metric"])
            if missing:
                failures.append(f"{what}: a series without {sorted(missing)}")
        if result and not finite([s["value"] for s in result]):
            failures.append(f"{what}: NaN only")
    states = {a["labels"]["alertname"]: a["state"] for a in prometheus.data("/api/v1/alerts", {})["alerts"]}
    print(f"alerts pending or firing: {states or 'none'}")
    if states.get("GatekeeperDown") == "firing":  # (pending after one scrape slower than 1 s)
        failures.append("alert GatekeeperDown fires, yet the exporter was up")
    if "GatekeeperWorkerRestartLoop" in states:
        failures.append(f"alert GatekeeperWorkerRestartLoop is {states['GatekeeperWorkerRestartLoop']}: "
                        "one worker restarted, once")
    return failures


def check_names(prometheus: Prometheus) -> list[str]:
    """The contract's metrics, and every name written under grafana/, are in Prometheus;
    every gatekeeper_* name in Prometheus is in the contract."""
    names = set(prometheus.data("/api/v1/label/__name__/values", {}))
    failures = []
    for metric, spec in sorted(CONTRACT.items()):
        wanted = ([f"{metric}{suffix}" for suffix in ("_bucket", "_sum", "_count")]
                  if spec.kind == "histogram" else [metric])
        failures += [f"contract metric {n} is not in Prometheus" for n in wanted if n not in names]
    failures += [f"{n} is used in grafana/ but the exporter does not export it"
                 for n in sorted(names_written_in_grafana())
                 if n not in names and f"{n}_bucket" not in names]  # a histogram by its own name
    failures += [f"{n} is exported but not in the contract" for n in sorted(names)
                 if n.startswith("gatekeeper_") and contract_metric(n) is None]
    return failures


def check_series(prometheus: Prometheus, start: str, end: str, queues: set[str]) -> list[str]:
    """Every gatekeeper series has exactly the contract's labels; every value the contract
    allows is exported (from the start: rate() needs the zeros), and the open ones are the
    config's doors and the workers' queues."""
    failures = []
    seen: dict[tuple[str, str], set[str]] = {}
    for series in prometheus.data("/api/v1/series", {"match[]": f'{{job="{JOB}"}}', "start": start,
                                                       "end": end}):
        name: str = series["__name__"]
        metric = contract_metric(name)
        if metric is None:
            continue  # up and scrape_*; a gatekeeper_* one is reported by check_names
        labels = set(series) - {"__name__", "job", "instance"}
        if name.endswith("_bucket"):
            labels.discard("le")
        if labels != set(CONTRACT[metric].labels):
            failures.append(f"{name}: labels {sorted(labels)}, the contract says "
                            f"{sorted(CONTRACT[metric].labels)}")
            continue
        for label in labels:
            seen.setdefault((metric, label), set()).add(series[label])
    for (metric, label), values in sorted(seen.items()):
        allowed = CONTRACT[metric].labels[label]
        expected = LABEL_VALUES.get((metric, label)) or allowed or {"door": DOORS, "queue": queues}.get(label)
        if expected is None:
            continue  # the version
        if (metric, label) in SOME_OF and values <= expected:
            continue
        if values != expected:
            failures.append(f"{metric}: {label} takes {sorted(values)}, expected {sorted(expected)}")
    return failures


def check_facts(prometheus: Prometheus, since: float, at: float, workers: int) -> list[str]:
    """The figures tell what happened in the lab."""
    sel = f'job="{JOB}"'

    def value(query: str) -> float:
        return prometheus.value(query, at)

    window = f"{max(1, round(at - since))}s"
    print(f"scrapes: up {value(f'avg_over_time(up{{{sel}}}[{window}])'):.3f} of the time, slowest "
          f"{value(f'max_over_time(scrape_duration_seconds{{{sel}}}[{window}])') * 1000:.0f} ms")
    facts = {
        "scraped (share of the scrapes that worked)": (value(f"avg_over_time(up{{{sel}}}[{window}])"),
                                                       ">= 0.9"),
        "workers running": (value(f"gatekeeper_workers{{{sel}}}"), f"== {workers}"),
        "worker restarts": (value(f"gatekeeper_worker_restarts_total{{{sel}}}"), "== 1"),
        "reloads ok": (value(f'gatekeeper_config_reloads_total{{{sel}, result="ok"}}'), "== 1"),
        "reloads refused": (value(f'gatekeeper_config_reloads_total{{{sel}, result="refused"}}'), "== 0"),
        "build info": (value(f"gatekeeper_build_info{{{sel}}}"), "== 1"),
        "active grants": (value(f"sum(gatekeeper_grants_active{{{sel}}})"), f">= {len(GOOD)}"),
        "verdicts timed": (value(f"gatekeeper_verdict_seconds_count{{{sel}}}"), "> 1000"),
    }
    for reason in ("knock", "completed", "wrong", "unauthorised"):
        facts[f"packets {reason}"] = (value(f'sum(gatekeeper_packets_total{{{sel}, reason="{reason}"}})'),
                                      "> 0")
    for door in KNOCK_DOORS:
        facts[f"{door} completed"] = (
            value(f'gatekeeper_knocks_total{{{sel}, door="{door}", outcome="completed"}}'), "> 0")
    for outcome in ("reset", "timeout"):
        facts[f"ssh {outcome}"] = (
            value(f'gatekeeper_knocks_total{{{sel}, door="ssh", outcome="{outcome}"}}'), "> 0")
    failures = []
    for what, (number, test) in facts.items():
        op, bound = test.split()
        ok = {"==": number == float(bound), ">": number > float(bound), ">=": number >= float(bound)}[op]
        if not ok:
            failures.append(f"{what}: {number:g}, expected {test}")
    # Every verdict is counted once by reason and timed once into the histogram; a
    # snapshot a worker sends from inside its callback misses the one verdict being timed.
    packets = value(f"sum(gatekeeper_packets_total{{{sel}}})")
    timed = value(f"gatekeeper_verdict_seconds_count{{{sel}}}")
    if not 0 <= packets - timed <= workers:
        failures.append(f"packets counted {packets:g} but verdicts timed {timed:g}")
    return failures


def check_rendering(lab: Lab, out_dir: Path, start: str, end: str) -> list[str]:
    """grafana/render_panels.py, run in the gateway namespace, draws the key panels."""
    done = lab.run("gw", [sys.executable, str(GRAFANA / "render_panels.py"), "--url", PROMETHEUS_URL,
                          "--out", str(out_dir), "--dashboard", str(DASHBOARD), "--start", start,
                          "--end", end, "--scrape-interval", STEP], timeout=120, check=False)
    if done.returncode != 0:
        return [f"render_panels.py failed: {done.stderr.strip()[-2000:]}"]
    png = out_dir / "dashboard.png"
    data = png.read_bytes()
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:8] != PNG or data[12:16] != b"IHDR" or len(data) < 50_000 \
            or width < 1000 or height < 1000:
        return [f"{png}: not a PNG of the panels ({len(data)} bytes, {width}x{height})"]
    keep = os.environ.get("GATEKEEPER_DASHBOARD_PNG")
    if keep:
        shutil.copy(png, keep)
    return []


# --- the test ------------------------------------------------------------------------------


def test_prometheus_scrapes_the_live_daemon_and_every_query_has_data(
        lab: Lab, start_daemon: Any, prometheus: Prometheus, tmp_path: Path) -> None:
    for address in GOOD + WRONG + LATE:
        lab.add_address("client", address)
    spa_key = tmp_path / "spa.key"
    spa_key.write_text(f"KEY_BASE64: {base64.b64encode(os.urandom(32)).decode()}\n"
                       f"HMAC_KEY_BASE64: {base64.b64encode(os.urandom(64)).decode()}\n")
    spa_key.chmod(0o600)
    daemon = start_daemon(CONFIG.replace("{spa_key}", str(spa_key)))
    running = daemon.wait_for(r"gatekeeper running: ")
    found = re.search(r"queues=([\d,]+) pids=([\d,]+)", running)
    assert found, running
    queues = set(found.group(1).split(","))
    workers = [int(p) for p in found.group(2).split(",")]
    assert len(workers) == 2 and f"metrics={METRICS_URL}" in running, running
    supervisor = daemon.proc.pid  # `ip netns exec` execs: the daemon's own pid
    assert "gatekeeper" in Path(f"/proc/{supervisor}/cmdline").read_text()

    prometheus.start()
    deadline = time.monotonic() + 15
    while prometheus.value(f'up{{job="{JOB}"}}', time.time()) != 1.0:
        assert time.monotonic() < deadline, f"no successful scrape of {METRICS_URL}:\n{prometheus.tail()}"
        time.sleep(0.5)

    # -- traffic, a worker killed, a reload ----------------------------------------------------
    t0 = time.time()
    client_spec = {"seconds": TRAFFIC_SECONDS, "gw4": GW4, "gw6": GW6, "server": SERVER4, "ssh": SSH,
                   "rdp": RDP, "ping": PING, "wrong_step": "7001:udp", "good": GOOD, "wrong": WRONG,
                   "late": LATE, "late_after": 2.6}
    junk_spec = {"seconds": TRAFFIC_SECONDS, "gw4": GW4, "seed": 7, "protected": [22, 3389, 8080],
                 "spa_port": DEFAULT_SPA_PORT,
                 "avoid": [22, 80, 3389, 4001, 4002, 4003, 7000, 8000, 8080, 9000, DEFAULT_SPA_PORT]}
    traffic = [lab.popen(host, [sys.executable, "-c", code, json.dumps(spec)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for host, code, spec in (("client", CLIENT_TRAFFIC, client_spec),
                                        ("other", JUNK_TRAFFIC, junk_spec))]
    try:
        time.sleep(KILL_AT)
        since = len(daemon.lines)
        os.kill(workers[0], signal.SIGKILL)
        daemon.wait_for(rf"\(pid {workers[0]}, NFQUEUE \d+\) died with signal 9", since=since)
        daemon.wait_for(r"worker \d+ started: pid \d+", since=since)
        time.sleep(max(0.0, t0 + RELOAD_AT - time.time()))
        since = len(daemon.lines)
        os.kill(supervisor, signal.SIGHUP)
        daemon.wait_for(r"reloaded .*doors=ssh,rdp,ping,spa", since=since)
        outputs = []
        for proc in traffic:
            out, err = proc.communicate(timeout=TRAFFIC_SECONDS + 30)
            assert proc.returncode == 0, err
            outputs.append(json.loads(out))
    finally:
        stop_quietly(lab, traffic)
    client, junk = outputs
    print(f"\nclient: {client}\nother host: {junk}")
    assert junk["connected"] == 0 and junk["connects"] > 0, "nothing unauthorised gets through"
    for door in ("ssh", "rdp", "ping", "v6"):
        assert client[f"{door}_ok"] >= 1, client
    assert client["ssh_ok"] >= 0.8 * (client["ssh_ok"] + client["ssh_failed"]), client

    # Everything the workers counted reaches Prometheus (a snapshot every 0.5 s, a scrape
    # every second): wait, bounded, until the grants agree with the log's grant lines.
    grant_lines = {d: sum(1 for ln in daemon.lines if re.search(rf"grant door={d} address=\S+ open_for=", ln))
                   for d in DOORS}
    deadline = time.monotonic() + 15
    while True:
        grants = {d: prometheus.value(f'gatekeeper_grants_total{{job="{JOB}", door="{d}"}}', time.time())
                  for d in DOORS}
        if grants == {d: float(n) for d, n in grant_lines.items()}:
            break
        assert time.monotonic() < deadline, f"grants in Prometheus {grants}, in the log {grant_lines}"
        time.sleep(1)
    time.sleep(2)  # a couple more evaluations of the rules
    t1 = time.time()
    start, end = f"{t0 - 5:.3f}", f"{t1:.3f}"

    failures = check_dashboard(prometheus, start, end)
    failures += check_alerts(prometheus, end)
    failures += check_names(prometheus)
    failures += check_series(prometheus, start, end, queues)
    failures += check_facts(prometheus, t0, t1, len(workers))
    failures += check_rendering(lab, tmp_path / "render", f"{t0:.0f}", f"{t1:.0f}")
    assert not failures, "\n".join(failures) + f"\n--- prometheus log:\n{prometheus.tail(10)}"
    assert daemon.proc.poll() is None, "the daemon still runs"
