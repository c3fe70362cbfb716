"""``gatekeeper soak report``: every role's records merged into a summary, its checks,
summary.json and the plot."""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path
from typing import Any

from gatekeeper import __version__
from gatekeeper.lab.soak.common import (
    MAX_RSS_GROWTH_MB,
    MAX_RSS_GROWTH_PCT,
    MIN_SUCCESS,
    PLOT_FILE,
    SUMMARY_FILE,
    SoakError,
    of_kind,
    pct,
)
from gatekeeper.lab.soak.plot import plot


def load_records(directory: str) -> tuple[dict[str, list[dict[str, Any]]], list[str], int]:
    by_role: dict[str, list[dict[str, Any]]] = {}
    files = sorted(p for p in Path(directory).glob("*.jsonl") if p.is_file())
    bad = 0
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    bad += 1  # a role killed mid-write leaves half a line
                    continue
                if isinstance(record, dict) and isinstance(record.get("role"), str):
                    record["_file"] = path.name
                    by_role.setdefault(record["role"], []).append(record)
                else:
                    bad += 1
    return by_role, [p.name for p in files], bad


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def summarise(by_role: dict[str, list[dict[str, Any]]], files: list[str], bad_lines: int = 0,
              min_success: float = MIN_SUCCESS, max_growth_mb: float = MAX_RSS_GROWTH_MB,
              max_growth_pct: float = MAX_RSS_GROWTH_PCT) -> dict[str, Any]:
    attempts = of_kind(by_role.get("client", []), "attempt")
    loops = of_kind(by_role.get("attacker", []), "loop")
    samples = of_kind(by_role.get("gateway", []), "sample")
    times = [float(r["t"]) for recs in by_role.values() for r in recs if "t" in r]
    t0 = min(times) if times else 0.0
    span = (max(times) - t0) if times else 0.0

    client = _client(attempts)
    attacker = _attacker(loops)
    unauthorised = attacker["unauthorised_accepts"]
    gateway, growth = _gateway(samples)
    rate = client["successes"] / len(attempts) if attempts else None
    checks = _checks(by_role, attacker, rate, len(attempts), growth,
                     (min_success, max_growth_mb, max_growth_pct))
    return {
        "version": __version__,
        "files": files,
        "bad_lines": bad_lines,
        "started": t0,
        "duration_s": round(span, 1),
        "unauthorised_accepts": unauthorised,
        "client": client,
        "attacker": attacker,
        "gateway": gateway,
        "warnings": _warnings(gateway, attacker, bad_lines),
        "checks": checks,
        "ok": all(c["ok"] for c in checks),
    }


def _client(attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """The client's knock-and-connect attempts: success, latency, failures by stage."""
    ok = sum(1 for a in attempts if a.get("ok"))
    connect = [float(a["connect_ms"]) for a in attempts if a.get("ok") and "connect_ms" in a]
    total = [float(a["connect_ms"]) + float(a.get("knock_ms", 0)) + float(a.get("reply_ms", 0))
             for a in attempts if a.get("ok") and "connect_ms" in a]
    failures: dict[str, int] = {}
    for a in attempts:
        if not a.get("ok"):
            key = f"{a.get('stage', '?')}: {a.get('error', '?')}"
            failures[key] = failures.get(key, 0) + 1
    return {
        "attempts": len(attempts), "successes": ok,
        "success_rate": _r(ok / len(attempts) if attempts else None, 5),
        "sources": len({a.get("source", "") for a in attempts}),
        "connect_ms": {"p50": _r(pct(connect, 0.5), 3), "p99": _r(pct(connect, 0.99), 3),
                       "max": _r(max(connect) if connect else None, 3)},
        "knock_to_reply_ms": {"p50": _r(pct(total, 0.5), 3), "p99": _r(pct(total, 0.99), 3)},
        "replies": {k: sum(1 for a in attempts if a.get("reply") == k) for k in ("echo", "banner")},
        "failures": failures,
    }


def _attacker(loops: list[dict[str, Any]]) -> dict[str, Any]:
    """What the attacker tried, and what got through."""
    unauthorised = sum(int(lp.get("protected_accepted", 0)) for lp in loops)
    return {
        "loops": len(loops),
        "protected_connects": sum(int(lp.get("protected_tried", 0)) for lp in loops),
        "unauthorised_accepts": unauthorised,
        "replays": {k: sum(1 for lp in loops if lp.get("replay") == k) for k in ("partial", "wrong")},
        "tcp_probes": sum(int(lp.get("tcp_probes", 0)) for lp in loops),
        "tcp_probes_answered": sum(int(lp.get("tcp_answered", 0)) for lp in loops),
        "udp_junk_sent": sum(int(lp.get("udp_sent", 0)) for lp in loops),
    }


def _gateway(samples: list[dict[str, Any]]) -> tuple[dict[str, Any], tuple[float, float] | None]:
    """The daemon's samples: memory, latency, grants, drops; and its RSS growth (MB, %)."""
    mem = [s for s in samples if "rss_kb" in s]
    gateway: dict[str, Any] = {"samples": len(samples), "memory_samples": len(mem)}
    growth_mb = growth_pct = None
    if mem:
        k = max(1, math.ceil(len(mem) * 0.1))
        first = statistics.median(float(s["rss_kb"]) for s in mem[:k]) / 1024
        last = statistics.median(float(s["rss_kb"]) for s in mem[-k:]) / 1024
        growth_mb = last - first
        growth_pct = 100.0 * growth_mb / first if first else 0.0
        pss = [float(s.get("pss_kb", 0)) / 1024 for s in mem]
        gateway.update(
            rss_mb={"first": _r(first), "last": _r(last),
                    "max": _r(max(float(s["rss_kb"]) for s in mem) / 1024)},
            rss_growth_mb=_r(growth_mb), rss_growth_pct=_r(growth_pct),
            pss_mb={"first": _r(pss[0]), "last": _r(pss[-1]), "max": _r(max(pss))},
            fds={"first": mem[0].get("fds"), "last": mem[-1].get("fds"),
                 "max": max(int(s.get("fds", 0)) for s in mem)},
            procs={"min": min(int(s.get("procs", 0)) for s in mem),
                   "max": max(int(s.get("procs", 0)) for s in mem)},
        )
    p99 = [float(s["p99_us"]) for s in samples if s.get("p99_us") is not None]
    with_metrics = [s for s in samples if "grants_total" in s]
    gateway["p99_verdict_us"] = {"median": _r(statistics.median(p99) if p99 else None),
                                 "max": _r(max(p99) if p99 else None),
                                 "cumulative_last": samples[-1].get("p99_cum_us") if samples else None}
    tracked = [int(s["tracked"]) for s in samples if "tracked" in s]
    gateway["tracked_sources_max"] = max(tracked) if tracked else None
    gateway["grants_active_max"] = max((int(s.get("grants_active", 0)) for s in samples), default=None)
    if with_metrics:
        a, b = with_metrics[0], with_metrics[-1]
        gateway["grants"] = int(b["grants_total"]) - int(a["grants_total"])
        gateway["verdicts"] = int(b.get("verdicts_total", 0)) - int(a.get("verdicts_total", 0))
        gateway["queue_dropped"] = int(b["queue_dropped"]) - int(a["queue_dropped"])
        gateway["worker_restarts"] = int(b.get("worker_restarts", 0)) - int(a.get("worker_restarts", 0))
        gateway["packets"] = {key: int(v) - int(a.get("packets", {}).get(key, 0))
                              for key, v in b.get("packets", {}).items()}
    kq = [s["kernel_queues"] for s in samples if "kernel_queues" in s]
    if kq:
        gateway["kernel_queue"] = {"dropped": int(kq[-1]["dropped"]) - int(kq[0]["dropped"]),
                                   "waiting_max": max(int(q["waiting"]) for q in kq)}
    gateway["errors"] = {
        "status": sum(1 for s in samples if "status_error" in s),
        "metrics": sum(1 for s in samples if "metrics_error" in s),
    }
    growth = None if growth_mb is None or growth_pct is None else (growth_mb, growth_pct)
    return gateway, growth


def _warnings(gateway: dict[str, Any], attacker: dict[str, Any], bad_lines: int) -> list[str]:
    warnings: list[str] = []
    if gateway.get("grants") and not gateway.get("verdicts"):
        warnings.append("the exporter counted no verdicts (gatekeeper_verdict_seconds, "
                        "gatekeeper_packets_total) although grants were made: the workers' counter "
                        "snapshots do not reach the supervisor, so no p99 verdict latency")
    if attacker["tcp_probes_answered"]:
        warnings.append(f"{attacker['tcp_probes_answered']} scan probes to random ports were answered "
                        "(connected or refused): a public port, or a leak")
    kernel_dropped = gateway.get("kernel_queue", {}).get("dropped", 0)
    if gateway.get("queue_dropped") or kernel_dropped:
        warnings.append(f"the kernel dropped queued packets: {gateway.get('queue_dropped', 0)} by the "
                        f"exporter, {kernel_dropped} by /proc/net/netfilter/nfnetlink_queue")
    if bad_lines:
        warnings.append(f"{bad_lines} unreadable line(s) in the .jsonl files")
    return warnings


def _checks(by_role: dict[str, list[dict[str, Any]]], attacker: dict[str, Any], rate: float | None,
            attempts: int, growth: tuple[float, float] | None,
            bounds: tuple[float, float, float]) -> list[dict[str, Any]]:
    """The pass/fail lines of the report."""
    min_success, max_growth_mb, max_growth_pct = bounds
    unauthorised = attacker["unauthorised_accepts"]
    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"name": name, "ok": ok, "detail": detail})

    check("unauthorised accepts", bool(attacker["loops"]) and unauthorised == 0,
          f"{unauthorised} == 0 over {attacker['protected_connects']} connects without a valid knock"
          if attacker["loops"] else "no attacker data")
    check("client success rate", rate is not None and rate >= min_success,
          f"{100 * rate:.2f} % of {attempts} >= {100 * min_success:g} %" if rate is not None
          else "no client attempts")
    if growth is not None:
        growth_mb, growth_pct = growth
        check("RSS growth", growth_mb <= max_growth_mb and growth_pct <= max_growth_pct,
              f"{growth_mb:+.2f} MB ({growth_pct:+.1f} %) between the first and last 10 % of samples; "
              f"bound +{max_growth_mb:g} MB and +{max_growth_pct:g} %")
    else:
        check("RSS growth", False, "no memory samples of the daemon")
    ended = {r["_file"] for recs in by_role.values() for r in recs if r.get("kind") == "end"}
    started = {r["_file"] for recs in by_role.values() for r in recs if r.get("kind") == "start"}
    unfinished = sorted(started - ended)
    check("roles finished", not unfinished,
          "every role wrote its end record" if not unfinished
          else f"no end record in {', '.join(unfinished)}")
    for lab in of_kind(by_role.get("lab", []), "end"):
        code = lab.get("daemon_exit")
        check("daemon stopped cleanly", code == 0, f"gatekeeper run exited {code} on SIGTERM")
        bad = {k: v for k, v in lab.get("role_exits", {}).items() if v != 0}
        check("role processes", not bad, "every role exited 0" if not bad else f"exits: {bad}")
    return checks


def format_summary(s: dict[str, Any]) -> str:
    c, a, g = s["client"], s["attacker"], s["gateway"]

    def num(v: Any, fmt: str = ".1f") -> str:
        return "n/a" if v is None else format(v, fmt)

    rate = c["success_rate"]
    lines = [
        f"gatekeeper soak report: {s['duration_s']:.0f} s of records from {', '.join(s['files'])}",
        f"client    {c['attempts']} attempts from {c['sources']} source address(es), {c['successes']} ok "
        f"({'n/a' if rate is None else format(100 * rate, '.2f') + ' %'}); connect on the first SYN "
        f"p50 {num(c['connect_ms']['p50'], '.2f')} ms, p99 {num(c['connect_ms']['p99'], '.2f')} ms, "
        f"max {num(c['connect_ms']['max'], '.2f')} ms; knock to reply p50 "
        f"{num(c['knock_to_reply_ms']['p50'], '.2f')} ms",
        "          failures: " + (", ".join(f"{k} x{v}" for k, v in c["failures"].items()) or "none"),
        f"attacker  {a['loops']} loops: {a['protected_connects']} connects to the protected port without "
        f"a valid knock ({a['replays']['partial']} after a partial replay, {a['replays']['wrong']} "
        f"after one with a wrong last step): unauthorised accepts {a['unauthorised_accepts']}",
        f"          {a['tcp_probes']} scan probes to random ports, {a['tcp_probes_answered']} answered; "
        f"{a['udp_junk_sent']} udp junk datagrams",
    ]
    if "rss_mb" in g:
        lines.append(
            f"gateway   {g['samples']} samples: RSS {g['rss_mb']['first']:.1f} -> "
            f"{g['rss_mb']['last']:.1f} MB "
            f"({g['rss_growth_mb']:+.2f} MB, {g['rss_growth_pct']:+.1f} %; max {g['rss_mb']['max']:.1f}), "
            f"PSS {g['pss_mb']['first']:.1f} -> {g['pss_mb']['last']:.1f} MB, fds {g['fds']['first']} -> "
            f"{g['fds']['last']}, processes {g['procs']['min']}-{g['procs']['max']}")
    else:
        lines.append(f"gateway   {g['samples']} samples, none with the daemon's memory")
    lines.append(
        f"          p99 verdict latency per second: median {num(g['p99_verdict_us']['median'])} us, "
        f"max {num(g['p99_verdict_us']['max'])} us (whole run {num(g['p99_verdict_us']['cumulative_last'])} "
        f"us); grants {g.get('grants', 'n/a')}; verdicts {g.get('verdicts', 'n/a')}; tracked sources max "
        f"{g['tracked_sources_max']}; queue drops {g.get('queue_dropped', 'n/a')} (kernel "
        f"{g.get('kernel_queue', {}).get('dropped', 'n/a')}); worker restarts "
        f"{g.get('worker_restarts', 'n/a')}")
    if g["errors"]["status"] or g["errors"]["metrics"]:
        lines.append(f"          sampling errors: status {g['errors']['status']}, "
                     f"metrics {g['errors']['metrics']}")
    for warning in s["warnings"]:
        lines.append(f"warning   {warning}")
    for ch in s["checks"]:
        lines.append(f"check     {'PASS' if ch['ok'] else 'FAIL'} {ch['name']}: {ch['detail']}")
    lines.append(f"result    {'PASS' if s['ok'] else 'FAIL'}")
    return "\n".join(lines)


def run_report(in_dir: str, out_dir: str, min_success: float = MIN_SUCCESS,
               max_growth_mb: float = MAX_RSS_GROWTH_MB, max_growth_pct: float = MAX_RSS_GROWTH_PCT) -> int:
    if not os.path.isdir(in_dir):
        raise SoakError(f"{in_dir}: no such directory")
    by_role, files, bad = load_records(in_dir)
    if not files:
        raise SoakError(f"{in_dir}: no .jsonl files")
    summary = summarise(by_role, files, bad, min_success, max_growth_mb, max_growth_pct)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, SUMMARY_FILE), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    plot(by_role, summary, os.path.join(out_dir, PLOT_FILE))
    print(format_summary(summary), flush=True)
    print(f"wrote {os.path.join(out_dir, SUMMARY_FILE)} and {os.path.join(out_dir, PLOT_FILE)}", flush=True)
    return 0 if summary["ok"] else 1
