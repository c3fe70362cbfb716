"""The live monitoring test's harness: a real Prometheus in the lab's gateway scraping the daemon,
the traffic programs run in the namespaces (clients, junk, a fetcher), and the PromQL helpers that
fill in Grafana's variables."""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from gatekeeper.lab.netns import Lab
from tests.fixtures.grafana import (
    GRAFANA,
    JOB,
    PROMETHEUS_DIR,
    all_panels,
    load_dashboard,
    parse_promql,
    rule_exprs,
)

PROMETHEUS_LISTEN = "127.0.0.1:9090"
PROMETHEUS_URL = f"http://{PROMETHEUS_LISTEN}"
METRICS_URL = "http://127.0.0.1:9464/metrics"  # the default [metrics] listen
STEP = "1s"  # of range queries: the scrape interval of the test's Prometheus


# Grafana's variables, as the test fills them in (Grafana computes them from the time
# range and the panel's width; any value a few scrape intervals long will do here).
GRAFANA_VARIABLES = {"$__rate_interval": "15s", "$__interval": "5s", "$__range": "1m"}


# The client: knocks every door right and connects (grants), knocks wrong (resets) and
# late (timeouts). Prints what it saw, as JSON.
CLIENT_TRAFFIC = r"""
import json, socket, sys, time
from gatekeeper.client.knock import knock, parse_step, resolve

spec = json.loads(sys.argv[1])
steps = {name: [parse_step(s) for s in spec[name]] for name in ("ssh", "rdp", "ping")}
ssh = steps["ssh"]
wrong_step = parse_step(spec["wrong_step"])
counts = dict.fromkeys(("ssh_ok", "ssh_failed", "rdp_ok", "rdp_failed", "ping_ok", "ping_failed",
                        "v6_ok", "v6_failed", "wrong", "late"), 0)

def connect(host, port, source=None):
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        if source:
            s.bind((source, 0))
        s.settimeout(0.5)
        try:
            s.connect((host, port))
            return True
        except OSError:
            return False

def door(name, host, port, source=None):
    knock(resolve(host, source=source), steps[name])
    counts[name + ("_ok" if connect(host, port, source) else "_failed")] += 1

pending = {}
end = time.monotonic() + spec["seconds"]
i = 0
while time.monotonic() < end:
    good = spec["good"][i % len(spec["good"])]
    door("ssh", spec["gw4"], 22, good)
    if i % 4 == 1:
        door("rdp", spec["server"], 3389, good)
    elif i % 4 == 2:
        door("ping", spec["gw4"], 8080, good)
    elif i % 4 == 3:
        knock(resolve(spec["gw6"]), ssh)
        counts["v6_ok" if connect(spec["gw6"], 22) else "v6_failed"] += 1
    wrong = spec["wrong"][i % len(spec["wrong"])]
    knock(resolve(spec["gw4"], source=wrong), [ssh[0], wrong_step])
    counts["wrong"] += 1
    late = spec["late"][i % len(spec["late"])]
    now = time.monotonic()
    if late not in pending:
        knock(resolve(spec["gw4"], source=late), ssh[:1])
        pending[late] = now
    elif now - pending[late] > spec["late_after"]:
        knock(resolve(spec["gw4"], source=late), ssh[1:2])
        del pending[late]
        counts["late"] += 1
    i += 1
    time.sleep(0.04)
print(json.dumps(counts))
"""


# The other host: junk to random ports, SYNs to the protected ports, and now and then a
# real connect() to one, which must never succeed. Prints its counts, as JSON.
JUNK_TRAFFIC = r"""
import errno, json, random, socket, sys, time

spec = json.loads(sys.argv[1])
gw = spec["gw4"]
rng = random.Random(spec["seed"])
avoid = set(spec["avoid"])
counts = dict.fromkeys(("udp", "syn", "protected", "spa", "connects", "connected"), 0)

def syn(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setblocking(False)
        s.connect_ex((gw, port))

def port():
    while True:
        p = rng.randrange(1024, 65536)
        if p not in avoid:
            return p

def spa_junk():
    udp.sendto(b"not an SPA packet", (gw, spec["spa_port"]))

end = time.monotonic() + spec["seconds"]
i = 0
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
    while time.monotonic() < end:
        for _ in range(4):
            udp.sendto(b"junk", (gw, port()))
            counts["udp"] += 1
            syn(port())
            counts["syn"] += 1
        for p in spec["protected"]:
            syn(p)
            counts["protected"] += 1
        if i % 10 == 0:
            spa_junk()
            counts["spa"] += 1
        if i % 25 == 0:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(0.3)
                counts["connects"] += 1
                counts["connected"] += s.connect_ex((gw, 22)) == 0
        i += 1
        time.sleep(0.02)
print(json.dumps(counts))
"""


# Runs in the gateway namespace: GETs each [path, params] read from stdin from
# Prometheus and prints [{"http": status, "body": parsed JSON}]; with "ready" as the
# second argument it waits (up to the third, in seconds) for /-/ready instead.
FETCH = r"""
import json, sys, time, urllib.error, urllib.parse, urllib.request

base = sys.argv[1]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

def get(path, params):
    url = base + path + ("?" + urllib.parse.urlencode(params, doseq=True) if params else "")
    try:
        with opener.open(url, timeout=15) as r:
            text = r.read().decode()
            status = r.status
    except urllib.error.HTTPError as e:
        text, status = e.read().decode(errors="replace"), e.code
    try:
        return {"http": status, "body": json.loads(text)}
    except ValueError:
        return {"http": status, "body": text}

if len(sys.argv) > 2 and sys.argv[2] == "ready":
    deadline = time.monotonic() + float(sys.argv[3])
    while True:
        try:
            if get("/-/ready", {})["http"] == 200:
                print("ready")
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            print("not ready")
            break
        time.sleep(0.2)
else:
    print(json.dumps([get(path, params) for path, params in json.load(sys.stdin)]))
"""


class Prometheus:
    """Debian's prometheus in the gateway namespace, on 127.0.0.1:9090."""

    def __init__(self, lab: Lab, binary: str, home: Path) -> None:
        self.lab = lab
        self.binary = binary
        self.home = home
        self.log = home / "prometheus.log"
        self.proc: subprocess.Popen[Any] | None = None

    def write_config(self) -> Path:
        """The shipped prometheus.yml and alerts.yml, scraping and evaluating every second."""
        text = (PROMETHEUS_DIR / "prometheus.yml").read_text()
        for key in ("scrape_interval", "evaluation_interval"):
            text, n = re.subn(rf"^(\s*{key}:\s*)\S+", rf"\g<1>{STEP}", text, flags=re.M)
            assert n == 1, f"one {key} in prometheus.yml"
        assert re.search(rf"job_name:\s*{JOB}\s*$", text, re.M) and '"127.0.0.1:9464"' in text
        assert re.search(r"^rule_files:\s*\n\s*-\s*alerts\.yml\s*$", text, re.M), "the rule file"
        config = self.home / "prometheus.yml"
        config.write_text(text)
        shutil.copy(PROMETHEUS_DIR / "alerts.yml", self.home / "alerts.yml")  # relative to it
        return config

    def start(self) -> None:
        config = self.write_config()
        with self.log.open("w") as log:
            self.proc = self.lab.popen("gw", [
                self.binary, f"--config.file={config}", f"--storage.tsdb.path={self.home / 'data'}",
                f"--web.listen-address={PROMETHEUS_LISTEN}", "--log.level=info",
            ], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        out = self.lab.run("gw", [sys.executable, "-c", FETCH, PROMETHEUS_URL, "ready", "30"],
                           timeout=45).stdout.strip()
        assert out == "ready", f"prometheus not ready within 30 s:\n{self.tail()}"

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is not None:
            self.lab.stop(self.proc)
            self.proc = None

    def api(self, *requests: tuple[str, dict[str, str]]) -> list[Any]:
        """GET each (path, params) from inside the gateway namespace; the JSON answers."""
        assert self.proc is not None and self.proc.poll() is None, f"prometheus exited:\n{self.tail()}"
        done = self.lab.run("gw", [sys.executable, "-c", FETCH, PROMETHEUS_URL],
                            input=json.dumps(requests), timeout=60)
        answers: list[Any] = json.loads(done.stdout)
        return answers

    def data(self, path: str, params: dict[str, str]) -> Any:
        """One API call that must succeed: its ``data``."""
        (answer,) = self.api((path, params))
        body = answer["body"]
        assert answer["http"] == 200 and isinstance(body, dict) and body.get("status") == "success", (
            f"{path} {params}: {answer}")
        return body["data"]

    def instant(self, query: str, at: float) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.data("/api/v1/query", {"query": query, "time": f"{at:.3f}"})[
            "result"]
        return result

    def value(self, query: str, at: float) -> float:
        """The one number a query returns (0 for no series)."""
        result = self.instant(query, at)
        assert len(result) <= 1, f"{query}: {len(result)} series"
        return float(result[0]["value"][1]) if result else 0.0


def substitute(expr: str) -> str:
    """Grafana's variables replaced by GRAFANA_VARIABLES (longest name first)."""
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    assert "$" not in expr, f"a Grafana variable the test does not fill in: {expr}"
    return expr


def legend_labels(fmt: str) -> set[str]:
    return set(re.findall(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}", fmt))


_COMPARISON = re.compile(r"\s*(?:==|!=|>=|<=|>|<)\s*(?:bool\s+)?[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def without_comparison(expr: str) -> str:
    """The expression up to its first comparison with a number outside any brackets:
    ``x > 0.0001`` gives ``x``; ``up == 0 or absent(up)`` gives ``up``."""
    depth, quote = 0, ""
    for i, char in enumerate(expr):
        if quote:
            quote = "" if char == quote and expr[i - 1] != "\\" else quote
        elif char in "\"'`":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0 and char in "=!<>" and _COMPARISON.match(expr, i):
            return expr[:i].strip()
    raise AssertionError(f"no comparison with a number in {expr!r}")


def finite(values: list[Any]) -> bool:
    return any(math.isfinite(float(v)) for _, v in values)


def names_written_in_grafana() -> set[str]:
    """Every metric name under grafana/: parsed from the dashboard's and the rules'
    queries, and every gatekeeper_* word in any of its files (README, unit tests of the
    rules, the rendering script)."""
    names: set[str] = set()
    dashboard = load_dashboard()
    exprs = [t["expr"] for p in all_panels(dashboard["panels"]) for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"] if a.get("expr")]
    exprs += list(rule_exprs().values())
    for expr in exprs:
        names |= parse_promql(expr).names
    for path in sorted(GRAFANA.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".yml", ".yaml", ".md", ".py"):
            names |= set(re.findall(r"\bgatekeeper_[a-z0-9_]*[a-z0-9]", path.read_text(errors="replace")))
    return names


def stop_quietly(lab: Lab, procs: list[subprocess.Popen[Any]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            lab.stop(proc, signal.SIGKILL, 5)
