"""Grant entries in the kernel sets, written over netlink (pyroute2) in microseconds.

The worker adds a grant here *before* it verdicts the knock that completed the
sequence, so the client's first SYN already matches the set in the kernel.
Each entry carries the door's name as its ipset comment, so a restarted worker can
adopt the grants that are still running.
"""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass

from pyroute2 import IPSet
from pyroute2.ipset import PortEntry

from gatekeeper.config import Door
from gatekeeper.netfilter.render import SET_FWD, SET_IN


@dataclass(frozen=True)
class SetEntry:
    address: str
    door: str
    timeout: int


def _family(address: str) -> int:
    return 6 if ":" in address else 4


class GrantSets:
    def __init__(self) -> None:
        self._ipset = IPSet()

    def close(self) -> None:
        self._ipset.close()

    def _entries(self, address: str, door: Door) -> list[tuple[str, tuple[object, ...], str, int]]:
        family = _family(address)
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        out: list[tuple[str, tuple[object, ...], str, int]] = []
        for step in door.opens:
            port = PortEntry(step.port, protocol=step.proto)
            if door.host is None:
                out.append((SET_IN[family], (address, port), "ip,port", af))
            elif door.host.version == family:
                out.append((SET_FWD[family], (address, port, str(door.host)), "ip,port,ip", af))
        return out

    def add(self, address: str, door: Door, seconds: float) -> int:
        """Add or refresh the door's entries for ``address``; returns how many."""
        timeout = max(1, math.ceil(seconds))
        entries = self._entries(address, door)
        for name, entry, etype, af in entries:
            self._ipset.add(
                name, entry, etype=etype, family=af, timeout=timeout, exclusive=False,
                comment=door.name,
            )
        return len(entries)

    def remove(self, address: str, door: Door) -> None:
        for name, entry, etype, af in self._entries(address, door):
            try:
                self._ipset.delete(name, entry, etype=etype, family=af, exclusive=False)
            except Exception:  # pyroute2 raises NetlinkError when the entry has expired already
                continue

    def list(self) -> list[SetEntry]:
        """Entries in the grant sets with their remaining seconds (for adoption and status)."""
        found: list[SetEntry] = []
        for name in (*SET_IN.values(), *SET_FWD.values()):
            for msg in self._ipset.list(name):
                adt = msg.get_attr("IPSET_ATTR_ADT")
                if adt is None:
                    continue
                for data in adt.get_attrs("IPSET_ATTR_DATA"):
                    ip = data.get_attr("IPSET_ATTR_IP_FROM")
                    address = ip.get_attr("IPSET_ATTR_IPADDR_IPV4") or ip.get_attr(
                        "IPSET_ATTR_IPADDR_IPV6"
                    )
                    comment = data.get_attr("IPSET_ATTR_COMMENT") or ""
                    timeout = data.get_attr("IPSET_ATTR_TIMEOUT") or 0
                    found.append(SetEntry(address, comment, int(timeout)))
        return found
