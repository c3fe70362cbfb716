"""``gatekeeper soak lab``: the whole scenario in the namespace lab, then the report."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gatekeeper.lab.netns import CLIENT4, GW4, OTHER4, Lab, sigterm_unwinds
from gatekeeper.lab.soak import common
from gatekeeper.lab.soak.common import SoakError, check_duration
from gatekeeper.lab.soak.report import run_report

LAB_PORT = 22
LAB_KNOCK = ("7000:udp", "8000:tcp", "9000:udp")
LAB_OPEN_FOR = 5
START_TIMEOUT = 20.0
ROLE_FILES = ("client.jsonl", "attacker.jsonl", "gateway.jsonl", "lab.jsonl")


def lab_config(control: str) -> str:
    sequence = ", ".join(f'"{s}"' for s in LAB_KNOCK)
    return (
        "# written by gatekeeper soak lab\n"
        "[gatekeeper]\n"
        "workers = 2\n"
        'interfaces = ["eth0"]\n'
        f'control = "{control}"\n'
        "\n[[door]]\n"
        'name = "ssh"\n'
        f"sequence = [{sequence}]\n"
        f'opens = ["{LAB_PORT}:tcp"]\n'
        f"open_for = {LAB_OPEN_FOR}\n"
    )


def run_lab(duration: float, out: str, sources: int = 30, min_success: float = common.MIN_SUCCESS,
            max_growth_mb: float = common.MAX_RSS_GROWTH_MB,
            max_growth_pct: float = common.MAX_RSS_GROWTH_PCT) -> int:
    duration = check_duration(duration)
    if not 0 <= sources <= 100:
        raise SoakError("--sources must be 0-100")
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    strangers = sorted(p.name for p in Path(out).glob("*.jsonl") if p.name not in ROLE_FILES)
    if strangers:
        raise SoakError(f"{out}: holds other .jsonl files ({', '.join(strangers[:3])}), which the "
                        "report would merge; use an empty directory")
    for name in (*ROLE_FILES, common.SUMMARY_FILE, common.PLOT_FILE):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(out, name))

    extra = [f"203.0.113.{100 + i}" for i in range(sources)]
    me = [sys.executable, "-m", "gatekeeper"]
    sequence = ",".join(LAB_KNOCK)
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    print(f"gatekeeper soak lab: {duration:g} s; gateway {GW4} (door ssh {' '.join(LAB_KNOCK)} -> "
          f"{LAB_PORT}:tcp, open_for {LAB_OPEN_FOR} s, 2 workers), client {CLIENT4} + {len(extra)} "
          f"source addresses, attacker {OTHER4}; nothing leaves the lab", flush=True)
    exits: dict[str, int | None] = {}
    daemon_exit: int | None = None
    with sigterm_unwinds(), tempfile.TemporaryDirectory(prefix="gatekeeper-soak-") as tmp, \
            Lab() as lab:
        control = os.path.join(tmp, "control.sock")
        cfg = os.path.join(tmp, "soak.toml")
        with open(cfg, "w", encoding="utf-8") as f:
            f.write(lab_config(control))
        for address in extra:
            lab.add_address("client", address)
        lab.serve_tcp("gw", LAB_PORT)
        log_path = os.path.join(out, "daemon.log")
        with open(log_path, "w", encoding="utf-8") as log:
            daemon = lab.popen("gw", [*me, "run", "-c", cfg], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=log, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while "gatekeeper running" not in Path(log_path).read_text(errors="replace"):
            if daemon.poll() is not None or time.monotonic() > deadline:
                tail = Path(log_path).read_text(errors="replace").strip().splitlines()[-1:]
                raise SoakError(f"the daemon did not start (exit {daemon.poll()}): "
                                f"{tail[0] if tail else 'no output'}")
            time.sleep(0.05)
        print(f"[gw] gatekeeper run -c {cfg}: running (log: {log_path})", flush=True)

        d = f"{duration:g}"
        roles: dict[str, tuple[str, list[str]]] = {
            "gateway": ("gw", ["soak", "gateway", "--duration", d, "--socket", control,
                               "--out", os.path.join(out, "gateway.jsonl")]),
            "client": ("client", ["soak", "client", "--gateway", GW4, "--duration", d,
                                  "--sequence", sequence, "--port", str(LAB_PORT),
                                  *(["--sources", ",".join(extra)] if extra else []),
                                  "--out", os.path.join(out, "client.jsonl")]),
            "attacker": ("other", ["soak", "attacker", "--gateway", GW4, "--duration", d,
                                   "--sequence", sequence, "--port", str(LAB_PORT),
                                   "--out", os.path.join(out, "attacker.jsonl")]),
        }
        procs: dict[str, subprocess.Popen[Any]] = {}
        for name, (host, argv) in roles.items():
            shown = [a if len(a) < 80 else a[:60] + "..." for a in argv]
            print(f"[{host}] gatekeeper {shlex.join(shown)}", flush=True)
            with open(os.path.join(out, f"{name}.log"), "w", encoding="utf-8") as role_log:
                procs[name] = lab.popen(host, [*me, *argv], stdin=subprocess.DEVNULL,
                                        stdout=role_log, stderr=subprocess.STDOUT, env=env)
        until = time.monotonic() + duration + 60
        for name, proc in procs.items():
            try:
                exits[name] = proc.wait(max(1.0, until - time.monotonic()))
            except subprocess.TimeoutExpired:
                Lab.stop(proc, signal.SIGKILL, 5)
                exits[name] = None
            print(f"[{roles[name][0]}] {name} exited {exits[name]}: "
                  f"{_last_line(os.path.join(out, f'{name}.log'))}", flush=True)
        daemon_exit = Lab.stop(daemon, signal.SIGTERM, 15)
        print(f"[gw] daemon stopped with SIGTERM: exit {daemon_exit}", flush=True)
    with open(os.path.join(out, "lab.jsonl"), "w", encoding="utf-8") as f:
        f.write(json.dumps({"role": "lab", "kind": "end", "t": round(time.time(), 4),
                            "daemon_exit": daemon_exit, "role_exits": exits}) + "\n")
    return run_report(out, out, min_success, max_growth_mb, max_growth_pct)


def _last_line(path: str) -> str:
    try:
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"
