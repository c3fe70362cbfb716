"""fwknop's NAT access (``fwknop -N HOST:PORT``, message types 2 and 4): which target a
request is granted with. Pure: texts and numbers in, a decision out."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Sequence

NatTarget = tuple[str, int]  # ("198.51.100.20", 22): an internal host (IP text) and port
ACCESS_TYPES = frozenset({1, 3})  # access, access with a client timeout
FORWARD_NAT_TYPES = frozenset({2, 4})  # NAT access, with a client timeout (5/6: local NAT)
_PORT = re.compile(r"[0-9]{1,5}\Z")


def nat_target(text: str) -> NatTarget | None:
    """The ``HOST,PORT`` of a NAT access field (``fwknop -N HOST:PORT``) as an IP text and a
    port, or None: not that form, or a host name (gatekeeper resolves no names)."""
    host, comma, port = text.partition(",")
    if not comma or not _PORT.match(port) or not 1 <= int(port) <= 65535:
        return None
    try:
        return str(ipaddress.ip_address(host)), int(port)
    except ValueError:
        return None


def nat_decision(kind: int, access: Sequence[tuple[str, int]], field: str | None,
                 nat: Collection[NatTarget], force_nat: NatTarget | None) -> tuple[bool, NatTarget | None]:
    """Whether an access message (its ports allowed) may be granted, and the NAT target it
    is granted with (None: the ports themselves). A NAT grant takes exactly one tcp or udp
    port (the gateway's, which the client then connects to; fwknopd uses the first).
    With ``force_nat`` every access request is NAT to it; else a type 2/4 message needs its
    own target in ``nat``. Local NAT (types 5/6, ``--nat-local``) is never granted."""
    if kind not in ACCESS_TYPES and kind not in FORWARD_NAT_TYPES:
        return False, None
    if force_nat is None and kind in ACCESS_TYPES:
        return True, None
    one_port = len(access) == 1 and access[0][0] in ("tcp", "udp")
    if force_nat is not None:
        return one_port, force_nat
    target = nat_target(field or "")
    return one_port and target is not None and target in nat, target
