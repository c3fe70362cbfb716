"""Helpers of the lab tests: the real daemon, its log read as it comes, snapshots of what
gatekeeper may touch, probes run in the namespaces (netprobe.py beside this file)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.daemon.control import request
from gatekeeper.lab.netns import CLIENT4, GW4, Lab
from gatekeeper.netfilter.procfs import PROC_QUEUES, parse_queues
from gatekeeper.spa import fwknop

PROBE = str(Path(__file__).parent / "netprobe.py")

ADMIN_RULES_V4 = [
    ["-A", "INPUT", "-s", "198.51.100.0/24", "-j", "ACCEPT"],
    ["-A", "INPUT", "-p", "tcp", "--dport", "2222", "-j", "ACCEPT"],
    ["-A", "FORWARD", "-p", "tcp", "--dport", "25", "-j", "DROP"],
]
ADMIN_RULES_V6 = [["-A", "INPUT", "-s", "2001:db8:2::/64", "-j", "ACCEPT"]]


def snapshot(lab: Lab) -> str:
    """Everything gatekeeper may touch, without counters and timestamps."""
    out = []
    for tool in ("iptables-save", "ip6tables-save"):
        text = lab.run("gw", [tool]).stdout
        out += [re.sub(r"\[\d+:\d+\]", "[0:0]", ln) for ln in text.splitlines()
                if not ln.startswith("#")]
    out += lab.run("gw", ["ipset", "list", "-name"]).stdout.splitlines()
    return "\n".join(out)


class Daemon:
    """The real ``gatekeeper run`` in the gateway namespace, its log read as it comes."""

    def __init__(self, lab: Lab, config: Path, extra_env: dict[str, str] | None = None,
                 argv: list[str] | None = None, host: str = "gw") -> None:
        self.lab = lab
        self.config = config
        env = {**os.environ, **(extra_env or {})}
        argv = argv or [sys.executable, "-m", "gatekeeper", "run", "-c", str(config)]
        self.proc = lab.popen(host, [a.replace("{config}", str(config)) for a in argv],
                              stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
        self.lines: list[str] = []
        self._done = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
        self._done.set()

    def wait_for(self, pattern: str, timeout: float = 10.0, since: int = 0) -> str:
        """The first log line, from line number ``since`` on, that matches; waits for it."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines[since:]:
                if re.search(pattern, line):
                    return line
            if self._done.is_set():
                raise AssertionError(f"daemon exited ({self.proc.wait()}) before /{pattern}/:\n"
                                     + "\n".join(self.lines))
            if time.monotonic() > deadline:
                raise AssertionError(f"no /{pattern}/ within {timeout} s:\n" + "\n".join(self.lines))
            time.sleep(0.01)

    def stop(self, sig: int = 15) -> int:
        return self.lab.stop(self.proc, sig)


def queue_stats(lab: Lab) -> dict[int, dict[str, int]]:
    """/proc/net/netfilter/nfnetlink_queue of the gateway, by queue number."""
    text = lab.run("gw", ["cat", PROC_QUEUES]).stdout
    return {q: stat._asdict() for q, stat in parse_queues(text).items()}


def probe(lab: Lab, host: str, *args: object, timeout: float = 120) -> Any:
    out = lab.run(host, [sys.executable, PROBE, *map(str, args)], timeout=timeout).stdout
    return json.loads(out)


def knock(lab: Lab, host: str, target: str, *steps: str, delay_ms: int = 0) -> None:
    lab.run(host, [sys.executable, "-m", "gatekeeper", "knock", "-d", str(delay_ms), target, *steps])


def is_open(lab: Lab, host: str, target: str, port: int = 22) -> bool:
    return bool(probe(lab, host, "connect", target, port)["ok"])


def worker_pids(daemon: Any) -> dict[int, int]:
    """queue -> pid of its worker, from the supervisor's children."""
    out = subprocess.run(["pgrep", "-P", str(daemon_pid(daemon))], capture_output=True, text=True,
                         check=False).stdout.split()
    pids = {int(p) for p in out}
    by_queue = {}
    for line in daemon.lines:
        m = re.search(r"running: queues=([\d,]+) pids=([\d,]+)", line)
        if m:
            queues, pids_ = m.group(1).split(","), m.group(2).split(",")
            by_queue.update(zip(map(int, queues), map(int, pids_), strict=True))
        m = re.search(r"worker \d+ started: pid (\d+), NFQUEUE (\d+)", line)
        if m:
            by_queue[int(m.group(2))] = int(m.group(1))
    return {q: p for q, p in by_queue.items() if p in pids}


def daemon_pid(daemon: Any) -> int:
    """The supervisor (the child of `ip netns exec`, which execs it: same pid)."""
    return int(daemon.proc.pid)


# The stock fwknop client's keys in the SPA lab tests, and the client itself.
KEYS = fwknop.generate_keys()
K = base64.b64encode(KEYS.encryption).decode()
H = base64.b64encode(KEYS.hmac).decode()
# One SPA door opening 22/tcp with those keys (str.format: key, and extra door lines).
SPA_CONFIG = """
[gatekeeper]
queue = 0
interfaces = ["eth0"]

[[door]]
name = "spa"
spa = true
key_file = "{key}"
opens = ["22:tcp"]
{extra}"""


def spa_config(tmp_path: Path, extra: str = "") -> str:
    """:data:`SPA_CONFIG` with :data:`KEYS` written to a key file (mode 0600) in ``tmp_path``."""
    key = tmp_path / "spa.key"
    key.write_text(fwknop.format_key_file(KEYS))
    os.chmod(key, 0o600)
    return SPA_CONFIG.format(key=key, extra=extra)


def fwknop_send(lab: Lab, home: str, *extra: str, allow: str = CLIENT4, save: str = "",
                key: str = K, hmac_key: str = H, access: str | None = "tcp/22") -> None:
    """The stock client, as the lab's client; ``access`` None: no ``-A`` (``--server-cmd``)."""
    argv = ["env", f"HOME={home}", "fwknop", *(["-A", access] if access else []), "-a", allow,
            "-D", GW4, "--use-hmac", "--key-base64-rijndael", key, "--key-base64-hmac", hmac_key,
            "--no-rc-file", *extra]
    if save:
        argv += ["--save-packet", save]
    lab.run("client", argv)


# The SPA counters and grant lines of a daemon started by the start_daemon fixture.
def control(daemon: Any) -> str:
    text: str = daemon.config.read_text()
    return text.split('control = "', 1)[1].split('"', 1)[0]


def spa_counts(daemon: Any, door: str = "spa") -> dict[str, int]:
    counts: dict[str, int] = request(control(daemon)).get("spa", {}).get(door, {})
    return counts


def wait_count(daemon: Any, stage: str, at_least: int, door: str = "spa") -> dict[str, int]:
    deadline = time.monotonic() + 5
    while True:
        counts = spa_counts(daemon, door)
        if counts.get(stage, 0) >= at_least or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


def grants(daemon: Any, door: str) -> int:
    """Grant lines the daemon has logged for ``door``."""
    return sum(1 for line in daemon.lines if f"grant door={door} " in line)


# Tests that need the stock fwknop client (the fwknop_client fixture: tests/lab/conftest.py).
needs_fwknop = pytest.mark.usefixtures("fwknop_client")


def spa_daemon(start_daemon: Any, tmp_path: Path, doors: dict[str, tuple[str, str]],
               settings: str = "") -> Any:
    """The daemon (2 workers, guarding eth0, ``settings`` lines added) on SPA doors ``name ->
    (key file text, the door's other lines)``, key files 0600 in ``tmp_path``; ``.home`` is
    an empty HOME for the stock client beside them."""
    text = f'[gatekeeper]\nqueue = 0\nworkers = 2\ninterfaces = ["eth0"]\n{settings}'
    for name, (keys, lines) in doors.items():
        path = tmp_path / f"{name}.key"
        path.write_text(keys)
        os.chmod(path, 0o600)
        text += f'\n[[door]]\nname = "{name}"\nspa = true\nkey_file = "{path}"\n{lines}\n'
    home = tmp_path / "home"
    home.mkdir()
    daemon = start_daemon(text)
    daemon.home = str(home)
    return daemon
