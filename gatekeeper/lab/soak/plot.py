"""soak.png: memory, latency and success over the run."""

from __future__ import annotations

from typing import Any

from gatekeeper.lab.soak.common import (
    MIN_SUCCESS,
    of_kind,
    pct,
)


def plot(by_role: dict[str, list[dict[str, Any]]], summary: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    t0 = float(summary["started"])
    samples = of_kind(by_role.get("gateway", []), "sample")
    attempts = of_kind(by_role.get("client", []), "attempt")
    loops = of_kind(by_role.get("attacker", []), "loop")

    fig = Figure(figsize=(10, 9), dpi=100, layout="constrained")
    ax_mem, ax_lat, ax_ok = fig.subplots(3, 1, sharex=True)
    fig.suptitle(f"gatekeeper soak: {summary['duration_s']:.0f} s, "
                 f"{'PASS' if summary['ok'] else 'FAIL'}")

    mem = [s for s in samples if "rss_kb" in s]
    if mem:
        x = [float(s["t"]) - t0 for s in mem]
        ax_mem.plot(x, [float(s["rss_kb"]) / 1024 for s in mem], label="RSS (supervisor + workers)")
        ax_mem.plot(x, [float(s.get("pss_kb", 0)) / 1024 for s in mem], label="PSS")
        ax_mem.legend(loc="lower right")
    else:
        ax_mem.text(0.01, 0.05, "no memory samples of the daemon", transform=ax_mem.transAxes,
                    fontsize=9, color="tab:gray")
    ax_mem.set_ylabel("memory (MB)")
    ax_mem.set_ylim(bottom=0)
    ax_mem.grid(alpha=0.3)

    lat = [s for s in samples if s.get("p99_us") is not None and float(s["p99_us"]) > 0]
    width = max(2.0, float(summary["duration_s"]) / 40)
    if lat:
        ax_lat.plot([float(s["t"]) - t0 for s in lat], [float(s["p99_us"]) for s in lat], marker=".",
                    label="p99 verdict latency, exporter (per sample interval)")
    else:
        ax_lat.text(0.01, 0.05, "the exporter counted no verdicts: no verdict latency",
                    transform=ax_lat.transAxes, fontsize=9, color="tab:gray")
    connect = [a for a in attempts if a.get("ok") and "connect_ms" in a]
    if connect:
        bins_ms: dict[int, list[float]] = {}
        for a in connect:
            bins_ms.setdefault(int((float(a["t"]) - t0) // width), []).append(1000 * float(a["connect_ms"]))
        xs = [(b + 0.5) * width for b in sorted(bins_ms)]
        ax_lat.plot(xs, [pct(v, 0.99) or 0.0 for _, v in sorted(bins_ms.items())], marker=".",
                    label=f"p99 client knock-to-connected ({width:g} s bins)")
    ax_lat.axhline(100, color="tab:red", linestyle="--", linewidth=1, label="100 us alert threshold")
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency (us, log)")
    ax_lat.legend(loc="lower right", fontsize=8)
    ax_lat.grid(alpha=0.3, which="both")

    if attempts:
        bins: dict[int, list[bool]] = {}
        for a in attempts:
            bins.setdefault(int((float(a["t"]) - t0) // width), []).append(bool(a.get("ok")))
        xs = [(b + 0.5) * width for b in sorted(bins)]
        ys = [100.0 * sum(v) / len(v) for _, v in sorted(bins.items())]
        ax_ok.plot(xs, ys, marker="o", label=f"client success rate ({width:g} s bins)")
        failed = [float(a["t"]) - t0 for a in attempts if not a.get("ok")]
        if failed:
            ax_ok.plot(failed, [0.0] * len(failed), "x", color="tab:red", label="failed attempt")
    bad = [float(lp["t"]) - t0 for lp in loops if int(lp.get("protected_accepted", 0)) > 0]
    if bad:
        ax_ok.plot(bad, [50.0] * len(bad), "v", color="black", label="unauthorised accept")
    ax_ok.axhline(100 * MIN_SUCCESS, color="tab:red", linestyle="--", linewidth=1, label="99 %")
    ax_ok.set_ylim(-5, 105)
    ax_ok.set_ylabel("success (%)")
    ax_ok.set_xlabel("seconds since the start")
    ax_ok.legend(loc="lower right")
    ax_ok.grid(alpha=0.3)
    fig.savefig(path)



