"""Fixtures for tests against the real kernel: a namespace lab and the real daemon.

Lab tests need root. Locally without root they are skipped with a reason; under CI
(``CI`` set) a missing privilege is a failure, never a skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gatekeeper import native
from gatekeeper.lab.netns import Lab
from gatekeeper.netfilter.procfs import PROC_QUEUES, parse_queues

TESTS = Path(__file__).parent
PROBE = str(TESTS / "netprobe.py")

ADMIN_RULES_V4 = [
    ["-A", "INPUT", "-s", "198.51.100.0/24", "-j", "ACCEPT"],
    ["-A", "INPUT", "-p", "tcp", "--dport", "2222", "-j", "ACCEPT"],
    ["-A", "FORWARD", "-p", "tcp", "--dport", "25", "-j", "DROP"],
]
ADMIN_RULES_V6 = [["-A", "INPUT", "-s", "2001:db8:2::/64", "-j", "ACCEPT"]]


def pytest_report_header() -> str:
    return f"gatekeeper hot path: {native.describe()}"


def pytest_sessionstart(session: pytest.Session) -> None:
    """The compiled modules win on import: tests of an edited source must not run the old build."""
    old = native.stale()
    if old:
        pytest.exit(f"{', '.join(old)}: the source changed after its mypyc build; rebuild with "
                    "`bash scripts/setup.sh` (or GATEKEEPER_PURE=1 bash scripts/setup.sh)", returncode=4)


def need_tool(tool: str, why: str) -> str:
    """The path of ``tool``. Without it a test fails under CI, whose setup installs it
    (a skip there would hide a missing install step), and is skipped elsewhere."""
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} must be installed in CI ({why})")
        pytest.skip(f"{tool} is not installed ({why})")
    return path


def need_root() -> None:
    if os.geteuid() == 0:
        return
    if os.environ.get("CI"):
        pytest.fail("lab tests must run as root in CI")
    pytest.skip("needs root for network namespaces (CI runs these as root)")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    need_root()
    with Lab(f"gkt{os.getpid() % 10000}") as built:
        for rule in ADMIN_RULES_V4:
            built.run("gw", ["iptables", *rule])
        for rule in ADMIN_RULES_V6:
            built.run("gw", ["ip6tables", *rule])
        built.serve_tcp("gw", 22)
        built.serve_tcp("gw", 8080)
        built.serve_tcp("server", 3389)
        yield built


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


@pytest.fixture
def start_daemon(lab: Lab, tmp_path: Path) -> Iterator[Any]:
    started: list[Daemon] = []

    def start(config_text: str, wait: bool = True, env: dict[str, str] | None = None,
              argv: list[str] | None = None) -> Daemon:
        path = tmp_path / f"gatekeeper{len(started)}.toml"
        if "control =" not in config_text:  # never the system's /run/gatekeeper
            control = tmp_path / f"control{len(started)}.sock"
            config_text = config_text.replace("[gatekeeper]\n", f'[gatekeeper]\ncontrol = "{control}"\n', 1)
        if "state_dir =" not in config_text:  # nor its /var/lib/gatekeeper
            config_text = config_text.replace(
                "[gatekeeper]\n", f'[gatekeeper]\nstate_dir = "{tmp_path / "state"}"\n', 1)
        path.write_text(config_text)
        daemon = Daemon(lab, path, env, argv)
        started.append(daemon)
        if wait:
            daemon.wait_for("gatekeeper running")
        return daemon

    yield start
    for daemon in started:
        daemon.stop()
    # A test that failed half-way must not leave rules for the next one.
    lab.run("gw", [sys.executable, "-c",
                   "from gatekeeper.netfilter.install import Installer; Installer().remove()"],
            check=False)


def queue_stats(lab: Lab) -> dict[int, dict[str, int]]:
    """/proc/net/netfilter/nfnetlink_queue of the gateway, by queue number."""
    text = lab.run("gw", ["cat", PROC_QUEUES]).stdout
    return {q: stat._asdict() for q, stat in parse_queues(text).items()}


def probe(lab: Lab, host: str, *args: object, timeout: float = 120) -> Any:
    out = lab.run(host, [sys.executable, PROBE, *map(str, args)], timeout=timeout).stdout
    return json.loads(out)


def knock(lab: Lab, host: str, target: str, *steps: str, delay_ms: int = 0) -> None:
    lab.run(host, [sys.executable, "-m", "gatekeeper", "knock", "-d", str(delay_ms), target, *steps])
