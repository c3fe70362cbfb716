"""The programs the bench drains: ``gatekeeper run`` (its workers found from the
supervisor's status, on its control socket) or the bare loop (:mod:`gatekeeper.lab.bench.bare`,
which says its pids itself), started in the gateway and stopped again."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

from gatekeeper.config.load import load
from gatekeeper.daemon.control import request
from gatekeeper.errors import GatekeeperError
from gatekeeper.lab.netns import Lab
from gatekeeper.lab.status import worker_pids
from gatekeeper.queue.worker import TIMING_ENV

START_TIMEOUT = 30.0


class BenchFailure(Exception):
    """Something in the lab did not behave; one line for the user."""


class Reader:
    """Reads a child's output lines in a thread; lets the bench wait for one."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self.closed = False
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                with self._cond:
                    self.lines.append(line.rstrip("\n"))
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str] | None:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    m = regex.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    return None
                self._cond.wait(left)

    def tail(self, n: int = 3) -> str:
        with self._cond:
            return " | ".join(self.lines[-n:]) or "no output"


@dataclass
class Target:
    """A program verdicting the gateway's queues: ``gatekeeper run`` or the bare loop."""

    name: str
    proc: subprocess.Popen[str]
    log: Reader
    pids: dict[int, int]  # queue -> pid of the process reading it

    @property
    def netns_pid(self) -> int:
        return self.proc.pid  # `ip netns exec` execs: the same pid, inside the gateway


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("JOURNAL_STREAM", "INVOCATION_ID", "NOTIFY_SOCKET", TIMING_ENV)}
    env.update(extra or {})
    return env


def _await_ready(proc: subprocess.Popen[str], notify: socket.socket, log: Reader) -> None:
    """Until the supervisor says READY=1 on its NOTIFY_SOCKET (sd_notify), as systemd hears it."""
    deadline = time.monotonic() + START_TIMEOUT
    while (left := deadline - time.monotonic()) > 0 and proc.poll() is None:
        ready, _, _ = select.select([notify], [], [], min(left, 0.1))
        if ready and "READY=1" in notify.recv(4096).decode(errors="replace").split("\n"):
            return
    Lab.stop(proc)
    raise BenchFailure(f"gatekeeper run did not start: {log.tail()}")


def start_gatekeeper(lab: Lab, config: str, env: dict[str, str] | None = None) -> Target:
    """``gatekeeper run -c config`` in the gateway, once it is ready; its workers (a pid a
    queue) from the supervisor's status, asked on the config's control socket."""
    settings = load(config).settings
    control = settings.control
    if not control:
        raise BenchFailure(f"{config}: the bench needs a control socket ([gatekeeper] control)")
    with tempfile.TemporaryDirectory(prefix="gatekeeper-bench-notify-") as tmp, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(os.path.join(tmp, "notify"))
        proc: subprocess.Popen[str] = lab.popen(
            "gw", [sys.executable, "-m", "gatekeeper", "run", "-c", config],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=_env({**(env or {}), "NOTIFY_SOCKET": os.path.join(tmp, "notify")}),
        )
        assert proc.stderr is not None
        log = Reader(proc.stderr)
        _await_ready(proc, notify, log)
    queues = sorted(settings.queues)
    try:
        pids = worker_pids(request(control))
    except (GatekeeperError, ValueError) as exc:
        Lab.stop(proc)
        raise BenchFailure(f"the status of gatekeeper run: {exc}") from None
    if sorted(pids) != queues:
        Lab.stop(proc)
        raise BenchFailure(f"the status names workers for queues {sorted(pids)}, not {queues}")
    return Target("gatekeeper", proc, log, pids)


def start_bare(lab: Lab, config: str, queues: Sequence[int], batched: bool = False) -> Target:
    proc: subprocess.Popen[str] = lab.popen(
        "gw", [sys.executable, "-m", "gatekeeper.lab.bench.bare", config, *(["--batch"] if batched else [])],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env(),
    )
    assert proc.stdout is not None
    log = Reader(proc.stdout)
    m = log.wait_for(r"ready pids=([\d,]+)", START_TIMEOUT)
    if m is None:
        Lab.stop(proc)
        raise BenchFailure(f"the bare NetfilterQueue loop did not start: {log.tail()}")
    pids = [int(p) for p in m.group(1).split(",")]
    return Target("bare", proc, log, dict(zip(queues, pids, strict=True)))


def stop(target: Target) -> None:
    for pid in target.pids.values():  # never leave one stopped, whatever happened
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    code = Lab.stop(target.proc, signal.SIGTERM, 20)
    if code not in (0, -signal.SIGTERM):
        raise BenchFailure(f"{target.name} exited with {code}: {target.log.tail()}")


