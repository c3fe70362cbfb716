"""Run a door's start/stop commands off the hot path: argv lists, no shell, a timeout.

Each (address, door) has a lane: its commands run one after another in the order of the
grants and revokes that queued them, so a stop_command never starts before its
start_command has finished, or timed out and been killed with its whole process group
(each command runs in a session of its own: the daemon's signals do not reach it, and a
timeout leaves none of its children behind). Lanes run in parallel on a few threads.

At most ``limit`` commands wait or run at once. Beyond that a new start_command is not
run (``gatekeeper_commands_dropped_total{command="start_command"}``, an error line), and
neither is its stop_command, since there is nothing to undo (counted as well). A
stop_command whose start_command ran, or that has none, is always queued: dropping it
could leave open what the start opened.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass

from gatekeeper.model import Door

log = logging.getLogger(__name__)

COMMANDS = ("start_command", "stop_command", "server_command")
MAX_PENDING = 1024  # commands waiting or running, all lanes together
KILL_WAIT = 1.0  # seconds a killed command's process group gets to die


def substitute(argv: tuple[str, ...], address: str) -> list[str]:
    """knockd's ``%IP%`` placeholder, replaced in every argument."""
    return [arg.replace("%IP%", address) for arg in argv]


@dataclass(frozen=True, slots=True)
class Job:
    what: str  # "start_command" or "stop_command"
    argv: list[str]
    timeout: float
    where: str  # "door=NAME address=ADDRESS", for the log


class CommandRunner:
    def __init__(self, workers: int = 2, limit: int = MAX_PENDING) -> None:
        self._limit = limit
        self._cond = threading.Condition()
        self._lanes: dict[tuple[str, str], deque[Job]] = {}  # scheduled or running lanes
        self._ready: deque[tuple[str, str]] = deque()  # lanes waiting for a thread
        self._pending = 0  # commands waiting or running
        self._refused: set[tuple[str, str]] = set()  # lanes whose start_command was not run
        self._dropped = dict.fromkeys(COMMANDS, 0)
        self._closing = False
        self._workers = max(1, workers)
        # started with the first command (the supervisor forks its first workers without them)
        self._threads: list[threading.Thread] = []
        self._serving = 0  # threads not yet returned

    def start(self, address: str, door: Door) -> None:
        """The door's start_command for a new grant, after what the lane holds."""
        if not door.start_command:
            return
        key, where = (address, door.name), f"door={door.name} address={address}"
        with self._cond:
            if self._pending >= self._limit or self._closing:
                self._refused.add(key)
                self._dropped["start_command"] += 1
                log.error("start_command not run: %s; its stop_command will not run either (%s)",
                          "shutting down" if self._closing else
                          f"{self._pending} commands waiting or running (the limit)", where)
                return
            self._queue(key, Job("start_command", substitute(door.start_command, address),
                                 door.command_timeout, where))

    def stop(self, address: str, door: Door) -> None:
        """The door's stop_command for a grant that ended: never dropped if its start ran."""
        key = (address, door.name)
        with self._cond:
            if key in self._refused:
                self._refused.discard(key)
                if door.stop_command:
                    self._dropped["stop_command"] += 1
                    log.error("stop_command not run: its start_command was not run "
                              "(door=%s address=%s)", door.name, address)
                return
            if door.stop_command:
                self._queue(key, Job("stop_command", substitute(door.stop_command, address),
                                     door.command_timeout, f"door={door.name} address={address}"))

    def server(self, address: str, door: Door, argv: tuple[str, ...]) -> None:
        """An allowed SPA server command (``fwknop --server-cmd``), in the lane of the
        address and door, after what it holds; not run past the limit (counted)."""
        where = f"door={door.name} address={address}"
        with self._cond:
            if self._pending >= self._limit or self._closing:
                self._dropped["server_command"] += 1
                log.error("server_command not run: %s (%s)", "shutting down" if self._closing
                          else f"{self._pending} commands waiting or running (the limit)", where)
                return
            self._queue((address, door.name), Job("server_command", substitute(argv, address),
                                                  door.command_timeout, where))

    def dropped(self) -> dict[str, int]:
        """Commands not run since the start, by kind (the metric)."""
        with self._cond:
            return dict(self._dropped)

    def _queue(self, key: tuple[str, str], job: Job) -> None:
        self._pending += 1
        if not self._serving:  # the first command, or a stop_command after shutdown()
            self._threads = [threading.Thread(target=self._serve, name=f"gk-command-{i}", daemon=True)
                             for i in range(self._workers)]
            self._serving = len(self._threads)
            for thread in self._threads:
                thread.start()
        lane = self._lanes.get(key)
        if lane is not None:  # waiting for a thread, or running: it comes after
            lane.append(job)
            return
        self._lanes[key] = deque([job])
        self._ready.append(key)
        self._cond.notify()

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._ready and not self._closing:
                    self._cond.wait()
                if not self._ready:
                    self._serving -= 1
                    return  # shutting down and nothing left to run
                key = self._ready.popleft()
                job = self._lanes[key].popleft()
            try:
                run(job)
            except Exception:  # never lose the thread, nor the lane behind it
                log.exception("%s %s: failed (%s)", job.what, job.argv[0], job.where)
            finally:
                with self._cond:
                    self._pending -= 1
                    if self._lanes[key]:
                        self._ready.append(key)
                        self._cond.notify()
                    else:
                        del self._lanes[key]

    def shutdown(self, wait: bool = True) -> None:
        """Refuse new start_commands; with ``wait``, return once every queued command ran."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            threads = list(self._threads)
        if wait:
            for thread in threads:
                thread.join()


def run(job: Job) -> None:
    """One command, its failure logged: exit status, cannot run, or killed on timeout."""
    try:
        proc = subprocess.Popen(job.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    except OSError as exc:
        log.error("%s %s: cannot run: %s (%s)", job.what, job.argv[0], exc, job.where)
        return
    try:
        out, err = proc.communicate(timeout=job.timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        log.error("%s %s: killed after %g s with its process group (%s)", job.what, job.argv[0],
                  job.timeout, job.where)
        return
    if proc.returncode != 0:
        detail = (err or out).strip().splitlines()
        log.error("%s %s: exit status %d%s (%s)", job.what, job.argv[0], proc.returncode,
                  f": {detail[-1]}" if detail else "", job.where)


def kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the command's process group and wait (a bounded time) until it is gone."""
    deadline = time.monotonic() + KILL_WAIT
    while True:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        if not group_alive(proc.pid) or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()  # a child that left the group may still hold it: never read on


def group_alive(pgid: int) -> bool:
    """Does a process of group ``pgid`` still run (zombies are dead)?"""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False
