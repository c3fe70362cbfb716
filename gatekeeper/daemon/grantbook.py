"""The supervisor's record of grants: one log line each, commands, expiry.

Workers make grants inline and tell the supervisor; the book outlives any worker,
so a worker crash loses no grant and no stop_command.

A grant is an address and a door, and within it the ports granted (all of the door's
``opens`` for a knock sequence, those asked for for SPA and encrypted sequences), each
with its own expiry: the start_command runs when the first port opens, the
stop_command when the last one closes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from gatekeeper.daemon.commands import CommandRunner
from gatekeeper.model import Config, Door

log = logging.getLogger("gatekeeper")


@dataclass
class Entry:
    door: Door
    ports: dict[str, float] = field(default_factory=dict)  # "22:tcp" -> expiry

    @property
    def expires(self) -> float:
        return max(self.ports.values(), default=0.0)


class GrantBook:
    def __init__(self, config: Config, commands: CommandRunner) -> None:
        self.commands = commands
        self.doors = {d.name: d for d in config.doors}
        self.entries: dict[tuple[str, str], Entry] = {}

    def set_config(self, config: Config) -> None:
        self.doors = {d.name: d for d in config.doors}
        for key, entry in self.entries.items():
            if key[1] in self.doors:
                entry.door = self.doors[key[1]]

    def _ports(self, door: Door, opens: list[str] | None) -> list[str]:
        return [str(s) for s in door.opens] if opens is None else list(opens)

    def adopt(self, address: str, door_name: str, seconds: float, now: float,
              port: str | None = None) -> bool:
        """A kernel set entry found at start-up: ``port`` ("22:tcp"; None: all the door's)."""
        door = self.doors.get(door_name)
        if door is None or seconds <= 0:
            return False
        entry = self.entries.setdefault((address, door_name), Entry(door))
        for name in self._ports(door, None if port is None else [port]):
            entry.ports[name] = max(now + seconds, entry.ports.get(name, 0.0))
        return True

    def granted(self, address: str, door_name: str, seconds: float, now: float,
                error: str | None = None, opens: list[str] | None = None,
                mirrored: bool = False) -> None:
        """A worker granted ``opens`` ("22:tcp", ...; None: all of the door's ports);
        ``mirrored``: another gateway did, and this one copied it into its kernel set."""
        door = self.doors.get(door_name)
        if door is None:
            return
        key = (address, door_name)
        entry = self.entries.get(key)
        renewed = entry is not None
        if entry is None:
            entry = self.entries[key] = Entry(door)
        ports = self._ports(door, opens)
        for name in ports:
            entry.ports[name] = now + seconds
        if error:  # a NAT grant ("22:tcp->HOST:PORT") lives in the kernel sets alone
            log.error("grant door=%s address=%s: kernel set not updated (%s); %s", door.name,
                      address, error, "nothing is forwarded" if "->" in "".join(ports)
                      else "the worker admits it from the queue")
        log.info("grant door=%s address=%s open_for=%ds opens=%s%s%s%s", door.name, address,
                 round(seconds), ",".join(ports),
                 f" host={door.host}" if door.host else "", " renewed" if renewed else "",
                 " mirrored" if mirrored else "")
        if not renewed:
            self.commands.start(address, door)

    def revoked(self, address: str, door_name: str, cause: str, error: str | None = None,
                opens: list[str] | None = None) -> None:
        """A worker revoked ``opens`` (None: the whole grant)."""
        key = (address, door_name)
        entry = self.entries.get(key)
        if entry is None:
            return
        if error:
            log.error("revoke door=%s address=%s: kernel set not updated (%s)", door_name, address, error)
        for name in entry.door.opens if opens is None else opens:
            entry.ports.pop(str(name), None)
        if opens is None or not entry.ports:
            del self.entries[key]
            self._end(address, entry.door, cause)

    def expire(self, now: float) -> None:
        for key in [k for k, e in self.entries.items() if min(e.ports.values(), default=0.0) <= now]:
            entry = self.entries[key]
            ended = [name for name, expires in entry.ports.items() if expires <= now]
            for name in ended:
                del entry.ports[name]
            if entry.ports:
                log.info("expire door=%s address=%s opens=%s (still open: %s)", key[1], key[0],
                         ",".join(ended), ",".join(entry.ports))
            else:
                del self.entries[key]
                self._end(key[0], entry.door, "expired")

    def end_all(self, cause: str) -> None:
        """Every grant ends with the daemon (its kernel sets are gone): each one's
        stop_command is queued, so what a start_command opened does not stay open."""
        entries, self.entries = self.entries, {}
        for (address, _), entry in sorted(entries.items()):
            self._end(address, entry.door, cause)

    def _end(self, address: str, door: Door, cause: str) -> None:
        log.info("revoke door=%s address=%s cause=%s", door.name, address, cause)
        self.commands.stop(address, door)

    def active(self, now: float) -> list[tuple[str, str, tuple[str, ...], float]]:
        """Running grants: (address, door, ports still open, seconds left of the last)."""
        return sorted(
            (a, d, tuple(p for p, x in e.ports.items() if x > now), e.expires - now)
            for (a, d), e in self.entries.items() if e.expires > now
        )
