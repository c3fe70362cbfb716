"""Engine tests as tables of packets in and decisions out, in the manner of mitmproxy's
playbooks (test/mitmproxy/proxy/tutils.py): each row is a packet and what the engine must
say to it, spelled so that a table reads as the story of a knock.

    play(engine, [
        # time  source  packet      verdict  reason   events
        (0.0,   A,      "7000:udp", "drop",  "knock", ["ssh advanced"]),
        (0.2,   A,      "9000:udp", "drop",  "completed", ["ssh completed", "granted ssh 22:tcp"]),
        (0.3,   A,      "22:tcp",   "accept", "granted", []),
    ])

Events are spelled ``"DOOR OUTCOME"`` (Knocked), ``"granted DOOR PORT..."`` (Granted, to
the row's source) and ``"revoked DOOR CAUSE PORT..."`` (Revoked, of the row's source). A
packet is ``PORT:PROTO`` (no protocol: tcp); a TCP packet carries ``flags`` (SYN unless
:func:`play` is given others). A row that differs fails with the row's number and the
decision as the engine spelled it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from gatekeeper.engine import Engine, Granted, Knocked, Revoked
from gatekeeper.model import PROTO_NUMBERS, TCP

SYN = 0x02
GATEWAY = ipaddress.ip_address("203.0.113.1").packed

Row = tuple[float, bytes, str, str, str, Sequence[str]]


def spell(event: Any, src: bytes) -> str:
    """One event as a playbook spells it."""
    if isinstance(event, Knocked):
        return f"{event.door} {event.outcome}"
    if not isinstance(event, (Granted, Revoked)):
        return repr(event)
    ports = " ".join(map(str, event.steps))
    if event.address != str(ipaddress.ip_address(src)):
        ports = f"{ports} (to {event.address})"
    if isinstance(event, Granted):
        return f"granted {event.door.name} {ports}"
    return f"revoked {event.door.name} {event.cause} {ports}"


def packet(text: str) -> tuple[int, int]:
    """``"7000:udp"`` -> (proto, port); no protocol: tcp."""
    port, _, proto = text.partition(":")
    return PROTO_NUMBERS[proto or "tcp"], int(port)


def play(engine: Engine, rows: Sequence[Row], dst: bytes = GATEWAY, flags: int = SYN) -> None:
    """Send each row's packet at its time; its decision must be the row's, to the letter."""
    for n, (now, src, what, verdict, reason, events) in enumerate(rows):
        proto, port = packet(what)
        got_verdict, got_reason, got_events = engine.decide(src, dst, proto, port,
                                                            flags if proto == TCP else 0, now)
        got = (got_verdict.name.lower(), got_reason.name.lower(), [spell(e, src) for e in got_events])
        want = (verdict, reason, list(events))
        assert got == want, f"row {n} ({now}, {what}): the engine said {got}, the playbook {want}"
