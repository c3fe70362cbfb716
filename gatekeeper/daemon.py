"""``gatekeeper run``: bind the queue, install the rules, verdict, remove everything on exit.

Start-up order is chosen so that a failure leaves nothing behind: the config is
validated, privileges and tools checked, the queue bound (an error if another program
holds it) and only then are the sets and rules installed, in one transaction per family.
"""

from __future__ import annotations

import logging
import os
import signal
from types import FrameType

from gatekeeper import config as config_mod
from gatekeeper.effects.commands import CommandRunner
from gatekeeper.netfilter.grantset import GrantSets
from gatekeeper.netfilter.install import Installer
from gatekeeper.netfilter.render import render
from gatekeeper.queue.worker import Worker

log = logging.getLogger(__name__)


def run(path: str) -> int:
    config = config_mod.load(path)
    installer = Installer()
    installer.preflight()
    commands = CommandRunner()
    grants = GrantSets()
    worker = Worker(config, grants, commands)
    worker.bind(config.settings.queue)
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    previous_wakeup = signal.set_wakeup_fd(write_fd)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        worker.stop()

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        installer.install(render(config))
        try:
            adopted = worker.adopt([(e.address, e.door, e.timeout) for e in grants.list()])
            if adopted:
                log.info("adopted %d running grant(s) from the kernel set", adopted)
            log.info(
                "gatekeeper running: queue=%d interfaces=%s doors=%s",
                config.settings.queue, ",".join(config.settings.interfaces) or "all but lo",
                ",".join(d.name for d in config.doors),
            )
            worker.serve(read_fd)
        finally:
            installer.remove()
            log.info("rules, chains and sets removed")
    finally:
        worker.unbind()
        grants.close()
        commands.shutdown(wait=True)
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(previous_wakeup)
        os.close(read_fd)
        os.close(write_fd)
    return 0
