"""The worker process: a forked child of the supervisor around one :class:`Worker`.

It binds its NFQUEUE, adopts the grants of the kernel set, reports ready and verdicts
until SIGTERM; it reports to the supervisor over the shared pipe and takes its orders
from its control pipe, in the vocabulary of :mod:`gatekeeper.messages`. Not on the hot
path (the packet loop is :meth:`Worker.serve`), so not compiled.
"""

from __future__ import annotations

import logging
import os
import signal
from array import array
from typing import Any

import gatekeeper.config.load as config_mod
from gatekeeper import messages as msg
from gatekeeper.errors import GatekeeperError
from gatekeeper.model import Config
from gatekeeper.queue.worker import TIMING_ENV, Worker

log = logging.getLogger("gatekeeper.queue.worker")


def _send(fd: int, message: msg.Message, sender: msg.Sender) -> None:
    data = msg.encode(message, sender)
    try:
        os.write(fd, data)  # under PIPE_BUF: one atomic write
    except OSError:
        pass  # the supervisor is gone; it will not restart us either


def _make_worker(config: Config, grants: Any, report: Any) -> Worker:
    """The worker, its cluster gate ([cluster]) and its replay journals (state_dir)."""
    worker = Worker(config, grants, report)
    worker.report_stats = True
    if config.cluster is not None:
        from gatekeeper.cluster.gate import ClusterGate, node_name

        worker.cluster = ClusterGate(config, worker.engine, node_name(os.getppid()), worker.apply)
        worker.share_replays()
    try:
        worker.journal_replays(config.settings.state_dir)
    except OSError as exc:
        log.error("state_dir %s: %s; SPA replay caches kept in memory only",
                  config.settings.state_dir, exc.strerror)
    if os.environ.get(TIMING_ENV):
        worker.samples = array("q")
    return worker


def _obey(worker: Worker, order: msg.Message, report: Any) -> None:
    """Carry out one order of the supervisor."""
    if isinstance(order, msg.Reload):
        new = config_mod.loads(order.text, order.path)
        worker.reload(new)
        try:
            worker.journal_replays(new.settings.state_dir)
        except OSError as exc:
            log.error("state_dir %s: %s", new.settings.state_dir, exc.strerror)
        report(msg.Reloaded())
    elif isinstance(order, msg.Forget):  # closed on another gateway (mirrored)
        worker.forget(order.address, order.door)
    elif isinstance(order, msg.CountsRequest):
        report(msg.Counts(worker.counts, worker.engine.tracked_sources))


def worker_process(index: int, queue: int, config: Config, report_fd: int, control_fd: int) -> int:
    """Entry point of a forked worker: bind, report ready, serve until SIGTERM."""
    from gatekeeper.netfilter.grantset import GrantSets

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor orders the shutdown
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    sender = msg.Sender(index, queue, os.getpid())

    def report(message: msg.Message) -> None:
        _send(report_fd, message, sender)

    grants = GrantSets()
    worker = _make_worker(config, grants, report)

    def on_term(_signum: int, _frame: Any) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, on_term)
    try:
        worker.bind(queue, config.settings.queue_maxlen, config.settings.batch)
    except GatekeeperError as exc:
        report(msg.Failed(str(exc)))
        return 2
    try:
        entries = grants.list()
    except Exception:  # the sets do not exist yet: a fresh start has nothing to adopt
        entries = []
    adopted = worker.adopt((e.address, e.door, e.timeout, e.step) for e in entries)
    if worker.cluster is not None:  # connected, scripts loaded; or the breaker open (logged)
        worker.cluster.warm(worker.clock())
    report(msg.Ready(adopted))

    buffer = b""

    def on_control() -> None:
        nonlocal buffer
        chunk = os.read(control_fd, 1 << 16)
        if not chunk:
            worker.stop()  # the supervisor died: stop, the kernel then drops (fail closed)
            return
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            try:
                order = msg.decode_order(line)
            except msg.MessageError as exc:
                log.error("worker %d: unreadable order from the supervisor: %s", index, exc)
                continue
            _obey(worker, order, report)

    def on_wake() -> None:
        os.read(wake_r, 512)

    try:
        worker.serve({control_fd: on_control, wake_r: on_wake})
    finally:
        worker.unbind()
        grants.close()
        report(worker.snapshot())  # the last counts, before the supervisor folds them
        timing = os.environ.get(TIMING_ENV)
        if timing and worker.samples is not None:
            with open(os.path.join(timing, f"latency-{os.getpid()}.bin"), "wb") as f:
                worker.samples.tofile(f)
    return 0
