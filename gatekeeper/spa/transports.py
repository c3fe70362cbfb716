"""Where an SPA door's packets may arrive, by its ``spa_transports``: the special keys
(``proto << 16 | port``, as decode reports a packet) the worker hands to the door.

* ``udp``: UDP to ``spa_port``. The one *strict* key: every packet to it is the door's,
  counted at the stage it fails (``size`` included) and dropped.
* ``tcpraw`` (``fwknop -P tcpraw``): a TCP segment to ``spa_port``;
* ``udp-any`` (``fwknop --rand-port``): UDP to any port of ``SPA_ANY_PORTS``;
* ``icmp`` (``fwknop -P icmp``): an ICMP or ICMPv6 echo request, which decode reports
  with its payload length for a port (every length an SPA packet can have), and an echo
  reply, the client's default type, which has no port (:data:`NO_PORT`): the door reads
  its payload and takes it by its length as a request's.

The last three are *loose* keys: other traffic shares them (a SYN to the SPA port, a
plain knock on a high UDP port, a ping), so a packet there that is not SPA-shaped
(:func:`spa_shaped`: shorter than any SPA packet, or not base64 text) is not SPA: it is
not counted for the door and goes on to the engine as any packet.
"""

from __future__ import annotations

from gatekeeper.model import ICMP, SPA_ANY_PORTS, SPA_MIN_PAYLOAD, TCP, UDP, SpaDoor, port_key
from gatekeeper.spa.fwknop import MAX_PACKET

NO_PORT = -1  # the key of every packet without a port (decode's port -1)
# udp-any's keys, looked up as a range (55,536 dict entries would cost a worker ~9 MB and
# a reload ~140 ms)
ANY_KEYS = range(port_key(UDP, SPA_ANY_PORTS[0]), port_key(UDP, SPA_ANY_PORTS[1]) + 1)
# verify() takes up to twice fwknop's ceiling before it strips surrounding whitespace
ICMP_LENGTHS = range(SPA_MIN_PAYLOAD, 2 * MAX_PACKET + 1)


def door_keys(spa: SpaDoor) -> tuple[list[int], list[int]]:
    """The door's (strict, loose) keys, but udp-any's: :data:`ANY_KEYS`."""
    strict = [port_key(UDP, spa.port)] if "udp" in spa.transports else []
    loose: list[int] = []
    if "tcpraw" in spa.transports:
        loose.append(port_key(TCP, spa.port))
    if "icmp" in spa.transports:
        loose += [port_key(ICMP, n) for n in ICMP_LENGTHS]
        loose.append(NO_PORT)
    return strict, loose


# what an SPA packet is written in: base64 (fwknop drops the padding; a sender may keep
# it) and the whitespace verify() strips around it
_SPA_TEXT = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \t\r\n"


def spa_shaped(payload: bytes) -> bool:
    """Whether a payload on a loose key may be an SPA packet: as long as the shortest
    (SPA_MIN_PAYLOAD) and nothing but base64 text. Cheap (in C), so that a ping or junk
    costs no HMAC there."""
    return len(payload) >= SPA_MIN_PAYLOAD and not payload.translate(None, _SPA_TEXT)


def echo_key(proto: int, payload: bytes) -> int:
    """The key a packet without a port is taken by: an echo reply's (its payload read,
    ``payload`` not empty), as an echo request of that length; else :data:`NO_PORT`."""
    return port_key(ICMP, len(payload)) if proto == ICMP and payload else NO_PORT
