"""The supervisor's record of grants: one log line each, commands, expiry.

Workers make grants inline and tell the supervisor; the book outlives any worker,
so a worker crash loses no grant and no stop_command.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gatekeeper.config import Config, Door
from gatekeeper.effects.commands import CommandRunner

log = logging.getLogger("gatekeeper")


@dataclass
class Entry:
    door: Door
    expires: float


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

    def adopt(self, address: str, door_name: str, seconds: float, now: float) -> bool:
        door = self.doors.get(door_name)
        if door is None or seconds <= 0:
            return False
        self.entries[(address, door_name)] = Entry(door, now + seconds)
        return True

    def granted(self, address: str, door_name: str, seconds: float, now: float,
                error: str | None = None, mirrored: bool = False) -> None:
        door = self.doors.get(door_name)
        if door is None:
            return
        key = (address, door_name)
        renewed = key in self.entries
        self.entries[key] = Entry(door, now + seconds)
        if error:
            log.error("grant door=%s address=%s: kernel set not updated (%s); "
                      "the worker admits it from the queue", door.name, address, error)
        log.info("grant door=%s address=%s open_for=%ds opens=%s%s%s%s", door.name, address,
                 door.open_for, ",".join(map(str, door.opens)),
                 f" host={door.host}" if door.host else "", " renewed" if renewed else "",
                 " mirrored" if mirrored else "")
        if not renewed:
            self.commands.submit("start_command", door.start_command, address, door.command_timeout)

    def revoked(self, address: str, door_name: str, cause: str, error: str | None = None) -> None:
        entry = self.entries.pop((address, door_name), None)
        if entry is None:
            return
        if error:
            log.error("revoke door=%s address=%s: kernel set not updated (%s)", door_name, address, error)
        self._end(address, entry.door, cause)

    def expire(self, now: float) -> None:
        for key in [k for k, e in self.entries.items() if e.expires <= now]:
            entry = self.entries.pop(key)
            self._end(key[0], entry.door, "expired")

    def _end(self, address: str, door: Door, cause: str) -> None:
        log.info("revoke door=%s address=%s cause=%s", door.name, address, cause)
        self.commands.submit("stop_command", door.stop_command, address, door.command_timeout)

    def active(self, now: float) -> list[tuple[str, str, float]]:
        return sorted((a, d, e.expires - now) for (a, d), e in self.entries.items() if e.expires > now)
