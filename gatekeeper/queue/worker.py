"""The NFQUEUE worker: every queued packet gets exactly one verdict, inline.

decode -> engine.decide -> (grant into the kernel set) -> verdict. A grant is written
to the kernel set before the completing knock is verdicted, so the client's first SYN
is accepted by the kernel. Commands and logging of grants happen off the hot path.
"""

from __future__ import annotations

import logging
import select
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from gatekeeper.config import Config, Door
from gatekeeper.effects.commands import CommandRunner
from gatekeeper.engine import Engine, Event, Granted, Knocked, Reason, Revoked, Verdict
from gatekeeper.errors import GatekeeperError
from gatekeeper.queue.decode import decode

log = logging.getLogger(__name__)

TICK_SECONDS = 0.5
QUEUE_MAXLEN = 4096


class Grants(Protocol):
    def add(self, address: str, door: Door, seconds: float) -> int: ...
    def remove(self, address: str, door: Door) -> None: ...


class _Stop(Exception):
    """Raised from the callback, after the verdict, to leave NetfilterQueue.run()."""


class Worker:
    def __init__(
        self,
        config: Config,
        grants: Grants,
        commands: CommandRunner,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = Engine(config)
        self.grants = grants
        self.commands = commands
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self._nfq: Any = None
        self._stopping = False
        self._next_tick = 0.0

    # -- queue --------------------------------------------------------------------------

    def bind(self, queue: int) -> None:
        from netfilterqueue import NetfilterQueue

        nfq = NetfilterQueue()
        try:
            nfq.bind(queue, self.on_packet, max_len=QUEUE_MAXLEN)
        except OSError as exc:
            raise GatekeeperError(
                f"NFQUEUE {queue}: cannot bind ({exc}); another program (another gatekeeper?) "
                "may hold it: choose another [gatekeeper] queue, or stop that program"
            ) from None
        self._nfq = nfq

    def unbind(self) -> None:
        if self._nfq is not None:
            self._nfq.unbind()
            self._nfq = None

    def stop(self) -> None:
        self._stopping = True

    def serve(self, wakeup_fd: int | None = None) -> None:
        """Verdict packets until :meth:`stop`; ``wakeup_fd`` becomes readable on a signal."""
        fds = [self._nfq.get_fd()] + ([wakeup_fd] if wakeup_fd is not None else [])
        while not self._stopping:
            now = self.clock()
            if now >= self._next_tick:
                self.tick(now)
            ready, _, _ = select.select(fds, [], [], max(0.0, self._next_tick - self.clock()))
            if fds[0] in ready:
                try:
                    self._nfq.run(block=False)
                except _Stop:
                    break
            if wakeup_fd is not None and wakeup_fd in ready:
                try:
                    import os

                    os.read(wakeup_fd, 512)
                except BlockingIOError:
                    pass

    # -- the hot path -------------------------------------------------------------------

    def on_packet(self, pkt: Any) -> None:
        """NetfilterQueue callback: never returns without a verdict on ``pkt``."""
        try:
            now = self.clock()
            facts = decode(pkt.get_payload())
            if facts is None:
                self.counts["malformed"] += 1
                pkt.drop()
                return
            verdict, reason, events = self.engine.decide(*facts, now)
            if events:
                self.apply(events, now)
            if verdict is Verdict.ACCEPT:
                pkt.accept()
            else:
                pkt.drop()
            self.counts[reason.name.lower()] += 1
        except Exception:
            self.counts[Reason.ERROR.name.lower()] += 1
            log.exception("worker failed on a packet; dropped it")
            try:
                pkt.drop()
            except RuntimeError:  # the verdict was already given
                pass
        if self._stopping:
            raise _Stop
        if now >= self._next_tick:
            self.tick(now)

    # -- effects ------------------------------------------------------------------------

    def apply(self, events: tuple[Event, ...] | list[Revoked], now: float) -> None:
        for event in events:
            if isinstance(event, Knocked):
                continue
            if isinstance(event, Granted):
                self._grant(event, now)
            elif isinstance(event, Revoked):
                self._revoke(event, now)

    def _grant(self, event: Granted, now: float) -> None:
        door = event.door
        try:
            self.grants.add(event.address, door, event.expires - now)
        except Exception as exc:  # the engine still admits the address from the queue
            log.error("grant %s for %s: kernel set not updated: %s", door.name, event.address, exc)
        log.info(
            "grant door=%s address=%s open_for=%ds opens=%s%s%s",
            door.name, event.address, door.open_for, ",".join(map(str, door.opens)),
            f" host={door.host}" if door.host else "", " renewed" if event.renewed else "",
        )
        if not event.renewed:
            self.commands.submit("start_command", door.start_command, event.address,
                                 door.command_timeout)

    def _revoke(self, event: Revoked, now: float) -> None:
        door = event.door
        if event.cause == "closed":
            try:
                self.grants.remove(event.address, door)
                # Another door may still cover some of the same ports for this address.
                for address, name, expires in self.engine.grants():
                    if address == event.address:
                        other = next(d for d in self.engine.config.doors if d.name == name)
                        self.grants.add(address, other, expires - now)
            except Exception as exc:
                log.error("revoke %s for %s: kernel set not updated: %s", door.name,
                          event.address, exc)
        log.info("revoke door=%s address=%s cause=%s", door.name, event.address, event.cause)
        self.commands.submit("stop_command", door.stop_command, event.address, door.command_timeout)

    def tick(self, now: float) -> None:
        self._next_tick = now + TICK_SECONDS
        expired = self.engine.tick(now)
        if expired:
            self.apply(expired, now)

    def adopt(self, entries: list[tuple[str, str, int]]) -> int:
        """Take over grants found in the kernel set: (address, door, seconds left)."""
        now = self.clock()
        adopted = 0
        for address, door, seconds in entries:
            if seconds > 0 and self.engine.restore_grant(address, door, now + seconds):
                adopted += 1
        return adopted
