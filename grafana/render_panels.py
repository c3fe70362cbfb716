#!/usr/bin/env python3
"""Render the key panels of the gatekeeper dashboard into one PNG, from a live Prometheus.

    python3 grafana/render_panels.py --url http://127.0.0.1:9090 --out DIR [--minutes 60]
    python3 grafana/render_panels.py --url ... --out DIR --start UNIX --end UNIX --scrape-interval 1s

It shows what an operator sees in Grafana without running Grafana: each panel's queries,
legends, threshold lines and fixed colours are read from the dashboard itself
(``dashboards/gatekeeper.json`` next to this script, panels found by title) and evaluated
with Prometheus' ``/api/v1/query_range``. Grafana's variables are filled in the way Grafana
does: ``$__interval`` is the step, ``$__rate_interval`` is max(step + scrape interval,
4 x scrape interval), ``$__range`` the whole range. Worker restarts and config reloads are
drawn as vertical lines, like the dashboard's annotations. Prometheus is queried directly,
never through an HTTP proxy.

Writes ``DIR/dashboard.png``. Needs matplotlib; does not import gatekeeper.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parent / "dashboards" / "gatekeeper.json"
OUTPUT_NAME = "dashboard.png"
MAX_POINTS = 400  # Grafana's maxDataPoints is about the panel's width in pixels
TIMEOUT = 20.0


@dataclass(frozen=True)
class Key:
    """A dashboard panel to draw, by title, and how to label its y axis."""

    title: str
    ylabel: str
    scale: float = 1.0  # e.g. 1e6: seconds drawn as microseconds
    log: bool = False  # a logarithmic y axis (Grafana's is linear: noted in the title)
    hide_zero: bool = False  # leave out series that stay at zero (many outcomes never occur)


KEY_PANELS = (
    Key("Verdicts by verdict", "packets/s"),
    Key("Verdicts by reason", "packets/s", hide_zero=True),
    Key("Verdict latency", "µs", scale=1e6, log=True),
    Key("Knock outcomes by door", "knocks/s", hide_zero=True),
    Key("Active grants by door", "grants"),
    Key("Kernel queue depth", "packets waiting"),
    Key("Kernel queue drops by cause", "packets/s"),
    Key("Workers", "workers, restarts"),
)
# Events drawn on every panel, as the dashboard's annotations mark them (same colours).
MARKERS = (
    ('sum(gatekeeper_worker_restarts_total{job="gatekeeper"})', "worker restart", "tab:red"),
    ('sum(gatekeeper_config_reloads_total{job="gatekeeper"})', "config reload", "tab:blue"),
)
COLOURS = {"green": "tab:green", "red": "tab:red", "blue": "tab:blue", "orange": "tab:orange",
           "yellow": "gold", "purple": "tab:purple"}


class RenderError(Exception):
    pass


def parse_duration(text: str) -> float:
    """Prometheus-style duration (``15s``, ``1m``, ``500ms``) or plain seconds."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text.strip())
    if not found:
        raise argparse.ArgumentTypeError(f"{text!r}: expected e.g. 15s, 1m or 500ms")
    factor = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}[found.group(2)]
    return float(found.group(1)) * factor


def prom_duration(seconds: float) -> str:
    ms = max(1, round(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(self, path: str, params: dict[str, str]) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with self.opener.open(url, timeout=TIMEOUT) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            raise RenderError(f"{path} {params.get('query', '')}: HTTP {exc.code}: "
                              f"{exc.read().decode(errors='replace')[:300]}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise RenderError(f"cannot reach Prometheus at {self.url}: {exc}") from None
        if body.get("status") != "success":
            raise RenderError(f"{path} {params.get('query', '')}: {body.get('error', body)}")
        return body["data"]

    def query_range(self, query: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query_range", {"query": query, "start": f"{start:.3f}",
                                                "end": f"{end:.3f}", "step": prom_duration(step)})
        result: list[dict[str, Any]] = data["result"]
        return result


@dataclass
class Window:
    start: float
    end: float
    step: float
    scrape: float

    def variables(self) -> dict[str, str]:
        rate = max(self.step + self.scrape, 4 * self.scrape)
        return {"$__rate_interval": prom_duration(rate), "$__interval": prom_duration(self.step),
                "$__range": prom_duration(self.end - self.start)}

    def fill(self, expr: str) -> str:
        # longest names first, so that no variable is taken for the start of another
        for name, value in sorted(self.variables().items(), key=lambda kv: -len(kv[0])):
            expr = expr.replace(name, value)
        if "$" in expr:
            raise RenderError(f"a Grafana variable this script does not know in {expr!r}")
        return expr


def legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt) or \
        (",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "value")


def find_panel(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    stack = list(dashboard.get("panels", []))
    while stack:
        panel = stack.pop(0)
        if panel.get("title") == title:
            found: dict[str, Any] = panel
            return found
        stack.extend(panel.get("panels", []))
    raise RenderError(f"no panel titled {title!r} in the dashboard")


def thresholds(panel: dict[str, Any]) -> list[tuple[float, str]]:
    """The dashed or solid threshold lines a time series panel draws: (value, colour)."""
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    style = defaults.get("custom", {}).get("thresholdsStyle", {}).get("mode", "off")
    if style not in ("dashed", "line", "line+area", "dashed+area"):
        return []
    return [(float(s["value"]), COLOURS.get(s.get("color", ""), "tab:red"))
            for s in defaults.get("thresholds", {}).get("steps", []) if s.get("value") is not None]


def fixed_colours(panel: dict[str, Any]) -> dict[str, str]:
    out = {}
    for override in panel.get("fieldConfig", {}).get("overrides", []):
        matcher = override.get("matcher", {})
        if matcher.get("id") != "byName":
            continue
        for prop in override.get("properties", []):
            colour = prop.get("value", {}) if prop.get("id") == "color" else {}
            if isinstance(colour, dict) and colour.get("mode") == "fixed":
                out[str(matcher.get("options"))] = COLOURS.get(colour.get("fixedColor", ""), "black")
    return out


Series = tuple[str, list[float], list[float]]  # legend, unix times, values


def panel_series(prom: Prometheus, window: Window, panel: dict[str, Any], scale: float) -> list[Series]:
    out: list[Series] = []
    for target in panel.get("targets", []):
        if target.get("hide"):
            continue
        rows = prom.query_range(window.fill(target["expr"]), window.start, window.end, window.step)
        for row in sorted(rows, key=lambda r: sorted(r["metric"].items())):
            times = [float(t) for t, _ in row["values"]]
            values = [float(v) * scale for _, v in row["values"]]
            out.append((legend(target.get("legendFormat", ""), row["metric"]), times, values))
    return out


def event_times(prom: Prometheus, window: Window, query: str) -> list[float]:
    """When a counter went up (the first sample that shows the increase)."""
    times = []
    for row in prom.query_range(query, window.start, window.end, window.step):
        last = None
        for t, v in row["values"]:
            value = float(v)
            if last is not None and value > last:
                times.append(float(t))
            last = value
    return times


def render(prom: Prometheus, window: Window, dashboard: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    events = [(t, name, colour) for query, name, colour in MARKERS
              for t in event_times(prom, window, query)]
    cols = 2
    rows = math.ceil(len(KEY_PANELS) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(16, 4.4 * rows + 1.0), squeeze=False)
    start, end = (datetime.fromtimestamp(t) for t in (window.start, window.end))
    fig.suptitle(f"gatekeeper - key dashboard panels, live Prometheus data "
                 f"{start:%Y-%m-%d %H:%M:%S} - {end:%H:%M:%S} {time.strftime('%Z')} "
                 f"(step {window.variables()['$__interval']}, "
                 f"$__rate_interval {window.variables()['$__rate_interval']})", fontsize=14)
    for ax, key in zip(axes.flat, KEY_PANELS, strict=False):
        panel = find_panel(dashboard, key.title)
        series = panel_series(prom, window, panel, key.scale)
        colours = fixed_colours(panel)
        hidden = 0
        for name, times, values in series:
            if key.hide_zero and all(v == 0 or math.isnan(v) for v in values):
                hidden += 1
                continue
            ax.plot([datetime.fromtimestamp(t) for t in times], values, label=name, linewidth=1.6,
                    color=colours.get(name))
        unit = "" if key.scale == 1.0 else f" ({key.ylabel}{', log scale' if key.log else ''})"
        for value, colour in thresholds(panel):
            ax.axhline(value * key.scale, color=colour, linestyle="--", linewidth=1.2,
                       label=f"threshold {value * key.scale:g}" + (f" {key.ylabel}" if unit else ""))
        for t, _name, colour in events:
            ax.axvline(datetime.fromtimestamp(t), color=colour, linestyle=":", linewidth=1.2)
        ax.set_title(f"{key.title}{unit}", fontsize=12, loc="left")
        ax.set_ylabel(key.ylabel)
        if key.log:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.set_xlim(start, end)
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))  # type: ignore[no-untyped-call]
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ax.legend(handles, labels, fontsize=8, loc="best", ncol=2 if len(labels) > 5 else 1,
                      title=f"{hidden} all-zero series not shown" if hidden else None,
                      title_fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
    for ax in list(axes.flat)[len(KEY_PANELS):]:
        ax.set_visible(False)
    if events:
        names = sorted({(name, colour) for _, name, colour in events})
        fig.text(0.01, 0.005, "dotted vertical lines: " + ", ".join(f"{n} ({c.removeprefix('tab:')})"
                                                                    for n, c in names), fontsize=10)
    fig.tight_layout(rect=(0, 0.015, 1, 0.97))
    out.mkdir(parents=True, exist_ok=True)
    path = out / OUTPUT_NAME
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default="http://127.0.0.1:9090", help="Prometheus base URL")
    parser.add_argument("--out", required=True, type=Path, help="directory for dashboard.png")
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD, help="the dashboard JSON")
    parser.add_argument("--minutes", type=float, default=60.0, help="the last N minutes (default 60)")
    parser.add_argument("--start", type=float, help="unix time; overrides --minutes")
    parser.add_argument("--end", type=float, help="unix time (default: now)")
    parser.add_argument("--scrape-interval", type=parse_duration, default=5.0,
                        help="Prometheus' scrape interval for the job (default 5s, as prometheus.yml)")
    args = parser.parse_args(argv)
    end = args.end if args.end is not None else time.time()
    start = args.start if args.start is not None else end - 60.0 * args.minutes
    if not 0 < end - start <= 31 * 86400:
        parser.error("the range must be positive and at most 31 days")
    step = max(args.scrape_interval, math.ceil((end - start) / MAX_POINTS))
    window = Window(start, end, step, args.scrape_interval)
    try:
        dashboard = json.loads(args.dashboard.read_text(encoding="utf-8"))
        path = render(Prometheus(args.url), window, dashboard, args.out)
    except (RenderError, OSError, ValueError) as exc:
        print(f"render_panels: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
