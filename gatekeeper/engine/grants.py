"""The engine's grant table: which source may reach which door's ports, until when.

A grant is held per door and port: the key of door ``i`` and step key ``k``
(``proto << 16 | port``, 24 bits at most) is ``i << SLOT | k``. The engine's hot path
reads :attr:`GrantTable.by_source` directly; everything else goes through the methods.

Compiled with mypyc with the engine (``gatekeeper.native``): see "Compiled modules" in
README.md.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator

from gatekeeper.engine.events import Granted, Knocked, Outcome, Revoked
from gatekeeper.model import Config, Door, Port

SLOT = 24


def slot_step(slot: int) -> Port:
    return Port(slot >> 16 & 0xFF, slot & 0xFFFF)


def address(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


class GrantTable:
    """Source (packed) -> grant slot (door and port, see :data:`SLOT`) -> expiry."""

    def __init__(self, config: Config) -> None:
        self.doors = config.doors
        self.by_source: dict[bytes, dict[int, float]] = {}

    def grant(self, src: bytes, door_index: int, now: float, steps: Iterable[Port] | None,
              open_for: float, locked: bool) -> Granted | Knocked:
        """See :meth:`gatekeeper.engine.Engine.grant`; ``locked``: the source may not
        complete a sequence now (a LOCKED Knocked event, no grant)."""
        door = self.doors[door_index]
        if steps is None:
            granted = door.opens
        else:
            wanted = set(steps)
            granted = tuple(s for s in door.opens if s in wanted)
            if not granted:
                raise ValueError(f"door {door.name} opens none of {sorted(map(str, wanted))}")
        if locked:
            return Knocked(door.name, Outcome.LOCKED)
        grants = self.by_source.get(src)
        if grants is None:
            grants = self.by_source[src] = {}
        renewed = any(slot >> SLOT == door_index and expires > now for slot, expires in grants.items())
        seconds = min(open_for, door.open_for) if open_for > 0 else door.open_for
        expires = now + seconds
        base = door_index << SLOT
        for step in granted:
            grants[base | step.key] = expires
        return Granted(door, address(src), expires, renewed, granted)

    def revoke(self, src: bytes, door_index: int) -> tuple[Port, ...]:
        """Forget every port of door ``door_index`` granted to ``src``; the ports that were."""
        grants = self.by_source.get(src)
        if grants is None:
            return ()
        steps = tuple(slot_step(slot) for slot in grants if slot >> SLOT == door_index)
        for step in steps:
            del grants[door_index << SLOT | step.key]
        if not grants:
            del self.by_source[src]
        return steps

    def closed(self, src: bytes, door: Door, steps: tuple[Port, ...]) -> Revoked:
        """The Revoked event of a close of ``steps`` of ``door`` (already revoked): with
        the ports of them that other doors still grant ``src``."""
        kept: list[tuple[Door, Port, float]] = []
        grants = self.by_source.get(src)
        if grants is not None:
            for slot, expires in grants.items():
                step = slot_step(slot)
                if step in steps:
                    kept.append((self.doors[slot >> SLOT], step, expires))
        return Revoked(door, address(src), "closed", steps, tuple(kept))

    def expire(self, now: float) -> list[Revoked]:
        """Forget the grants whose time is up: a Revoked event a source and door."""
        expired: list[Revoked] = []
        by_source = self.by_source
        for src in [s for s, g in by_source.items() if min(g.values()) <= now]:
            grants = by_source[src]
            ended: dict[int, list[Port]] = {}  # door index -> its ports that expired
            for slot in [slot for slot, expires in grants.items() if expires <= now]:
                del grants[slot]
                ended.setdefault(slot >> SLOT, []).append(slot_step(slot))
            text = address(src)
            for door_index, steps in ended.items():
                expired.append(Revoked(self.doors[door_index], text, "expired", tuple(steps)))
            if not grants:
                del by_source[src]
        return expired

    def restore(self, text: str, door_name: str, expires: float, steps: Iterable[Port] | None) -> bool:
        """See :meth:`gatekeeper.engine.Engine.restore_grant`."""
        for i, door in enumerate(self.doors):
            if door.name == door_name:
                wanted = None if steps is None else set(steps)
                keys = [s.key for s in door.opens if wanted is None or s in wanted]
                if not keys:
                    return False
                src = ipaddress.ip_address(text).packed
                grants = self.by_source.setdefault(src, {})
                for key in keys:
                    slot = i << SLOT | key
                    grants[slot] = max(expires, grants.get(slot, 0.0))
                return True
        return False

    def entries(self) -> Iterator[tuple[str, str, Port, float]]:
        """Active grants, a port at a time: (address, door name, port, expiry)."""
        for src, grants in self.by_source.items():
            text = address(src)
            for slot, expires in grants.items():
                yield text, self.doors[slot >> SLOT].name, slot_step(slot), expires
