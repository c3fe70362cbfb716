"""The baselines: drop-only loops on gatekeeper's queues and rules.

    python -m gatekeeper.lab.bench.bare CONFIG [--batch]

One process a queue of the config (forked, as gatekeeper forks its workers), each bound
with the same queue length and socket buffer as a gatekeeper worker; then the same rules
are installed, so the same packets reach the same queues. Prints ``ready pids=P,...``
(in queue order) and drops every packet until SIGTERM, then removes the rules.

Without ``--batch`` it is NetfilterQueue's own loop, whose callback does nothing but
``pkt.drop()``: the most a Python program can do a packet at a time, and the
yardstick the speed targets are set against. With ``--batch`` it reads and drops with
gatekeeper's reader (:mod:`gatekeeper.queue._nfq`, batches of the config's
``[gatekeeper] batch``): the floor of the reader the worker uses, deciding nothing.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Any


def _drop(pkt: Any) -> None:
    pkt.drop()


class _Stop(Exception):
    pass


def _on_term(_signum: int, _frame: FrameType | None) -> None:
    raise _Stop


def _drop_batches(nfq: Any, queue: int, size: int) -> None:
    import select

    from gatekeeper.queue._nfq import Batch

    batch = Batch(nfq.get_fd(), queue, size)
    fd = nfq.get_fd()
    read, verdict, none = batch.read, batch.verdict, b""
    while True:
        select.select([fd], [], [])
        while read():
            verdict(none)


def _serve(queue: int, maxlen: int, ready_fd: int, batch: int) -> int:
    """A child: bind ``queue``, say so on ``ready_fd``, drop until SIGTERM."""
    from netfilterqueue import NetfilterQueue

    from gatekeeper.queue.worker import socket_buffer

    nfq = NetfilterQueue()
    try:
        nfq.bind(queue, _drop, max_len=maxlen, sock_len=socket_buffer(maxlen))
    except OSError as exc:
        os.write(ready_fd, f"error {exc}\n".encode())
        return 2
    os.write(ready_fd, f"ok {os.getpid()}\n".encode())
    os.close(ready_fd)
    try:
        if batch:
            _drop_batches(nfq, queue, batch)
        else:
            nfq.run()
    except _Stop:
        pass
    finally:
        nfq.unbind()
    return 0


def main(argv: list[str] | None = None) -> int:
    import gatekeeper.config.load as config_mod
    from gatekeeper.netfilter.install import Installer
    from gatekeeper.netfilter.render import render

    args = sys.argv[1:] if argv is None else argv
    batched = "--batch" in args
    config = config_mod.load(next(a for a in args if a != "--batch"))
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    children: list[int] = []
    installer = Installer()
    installed = False
    try:
        ready_r, ready_w = os.pipe()
        for queue in config.settings.queues:
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    os.close(ready_r)
                    code = _serve(queue, config.settings.queue_maxlen, ready_w,
                                  config.settings.batch if batched else 0)
                finally:
                    os._exit(code)
            children.append(pid)
        os.close(ready_w)
        with os.fdopen(ready_r) as ready:
            answers = [ready.readline().split(maxsplit=1) for _ in children]
        if any(not a or a[0] != "ok" for a in answers):
            errors = [a[1].strip() for a in answers if a and a[0] == "error"]
            print(f"bind failed: {errors[0] if errors else 'a child exited'}", flush=True)
            return 2
        installer.install(render(config))
        installed = True
        print(f"ready pids={','.join(map(str, children))}", flush=True)
        while True:
            signal.pause()
    except _Stop:
        return 0
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        if installed:
            installer.remove()


if __name__ == "__main__":
    sys.exit(main())
