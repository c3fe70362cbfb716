"""The supervisor's workers: one forked process a queue, and the pipes to and from them.

A mixin of :class:`gatekeeper.daemon.supervisor.Supervisor` (the state it uses is declared
below): it forks workers and waits until each has bound its queue, stops them, reaps and
restarts one that died (the kernel drops what was queued to it meanwhile: fail closed),
sends them orders and reads their reports (:mod:`gatekeeper.messages`).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass

from gatekeeper import messages as msg
from gatekeeper.errors import GatekeeperError
from gatekeeper.metrics import Stats
from gatekeeper.model import Config
from gatekeeper.netfilter.install import Installer

log = logging.getLogger("gatekeeper")

READY_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0


@dataclass
class WorkerHandle:
    index: int
    queue: int
    pid: int
    control: int  # write end of its control pipe
    started: float
    ready: bool = False
    error: str | None = None
    adopted: int = 0  # grants of the kernel set it adopted when it started
    down_since: int | None = None  # the queue rule's packet counter when its worker died


class WorkerPool:
    """Forks, stops and restarts the workers; their reports go to :meth:`_on_report`."""

    config: Config
    installer: Installer
    stats: Stats
    workers: dict[int, WorkerHandle]  # by queue number
    _report_r: int
    _report_w: int
    _wake_r: int
    _wake_w: int
    _buffer: bytes
    _running: bool
    _stopping: bool

    def _wait(self, timeout: float) -> None:
        raise NotImplementedError  # the supervisor's loop: reports, control, wake-ups

    def _on_report(self, sender: msg.Sender, message: msg.Message) -> None:
        raise NotImplementedError

    def _spawn(self, index: int, queue: int, config: Config) -> WorkerHandle:
        control_r, control_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(control_w)
                os.close(self._report_r)
                os.close(self._wake_r)
                os.close(self._wake_w)
                for handle in self.workers.values():
                    os.close(handle.control)
                from gatekeeper.queue.process import worker_process

                code = worker_process(index, queue, config, self._report_w, control_r)
            except BaseException:
                log.exception("worker %d crashed", index)
            finally:
                os._exit(code)
        os.close(control_r)
        handle = WorkerHandle(index, queue, pid, control_w, time.monotonic())
        self.workers[queue] = handle
        return handle

    def _start_workers(self, config: Config, queues: list[int]) -> list[WorkerHandle]:
        """Fork a worker per queue and wait until each has bound (or failed to)."""
        started = [self._spawn(config.settings.queues.index(q), q, config) for q in queues]
        deadline = time.monotonic() + READY_TIMEOUT
        while any(not h.ready and h.error is None for h in started):
            if time.monotonic() > deadline:
                self._stop_workers(started)
                raise GatekeeperError("workers did not bind their queues within "
                                      f"{READY_TIMEOUT:g} s")
            self._wait(0.2)
            self._reap(restart=False)
            for h in started:
                if not h.ready and h.error is None and h.queue not in self.workers:
                    h.error = f"worker for NFQUEUE {h.queue} exited during start-up"
        errors = [h.error for h in started if h.error]
        if errors:
            self._stop_workers(started)
            raise GatekeeperError(errors[0])
        return started

    def _stop_workers(self, handles: list[WorkerHandle]) -> None:
        for h in handles:
            try:
                os.kill(h.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT
        for h in handles:
            while True:
                try:
                    pid, _ = os.waitpid(h.pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid:
                    break
                if time.monotonic() > deadline:
                    os.kill(h.pid, signal.SIGKILL)
                    os.waitpid(h.pid, 0)
                    break
                time.sleep(0.01)
            try:
                os.close(h.control)
            except OSError:
                pass
            self._read_reports()  # its last counts, written just before it exited
            self.stats.worker_gone(h.pid, h.queue)
            if self.workers.get(h.queue) is h:
                del self.workers[h.queue]

    def _reap(self, restart: bool = True) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            handle = next((h for h in self.workers.values() if h.pid == pid), None)
            if handle is None:
                continue
            del self.workers[handle.queue]
            os.close(handle.control)
            self._read_reports()
            self.stats.worker_gone(pid, handle.queue)
            if not restart or self._stopping:
                continue
            how = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                   else f"exit status {os.WEXITSTATUS(status)}")
            self.stats.restarts += 1
            log.error("worker %d (pid %d, NFQUEUE %d) died with %s: restarting it; "
                      "packets queued to it meanwhile were dropped", handle.index, pid,
                      handle.queue, how)
            new = self._spawn(handle.index, handle.queue, self.config)
            if self._running:
                new.down_since = self.installer.queue_counters().get(handle.queue, 0)

    def send(self, handle: WorkerHandle, message: msg.Message) -> None:
        try:
            os.write(handle.control, msg.encode(message))
        except OSError as exc:
            log.error("worker %d: cannot send %s: %s", handle.index, message.KIND, exc)

    def _read_reports(self) -> None:
        while True:
            try:
                chunk = os.read(self._report_r, 1 << 16)
            except BlockingIOError:
                break
            self._buffer += chunk
            if len(chunk) < 1 << 16:
                break
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            try:
                sender, message = msg.decode_report(line)
            except msg.MessageError as exc:
                self.stats.bad_reports += 1
                log.error("unreadable report from a worker: %s", exc)
                continue
            self._on_report(sender, message)
