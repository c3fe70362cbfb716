"""Read just the header fields the engine needs from a raw IPv4/IPv6 packet.

This is the hot path. For the common packet (IPv4 without options, IPv6 without
extension headers) one ``struct`` call reads every field the engine needs; any other
packet takes the general path, :func:`_walk`, which walks options and extension headers
and is also the walk :func:`udp_payload` and :func:`spa_payload` read the SPA payload
with. Nothing is built but the two address bytes and the result. dpkt stays the decoder of record for anything
richer (pcap replay, tests), and ``tests/unit/test_decode.py`` and
``tests/unit/test_decode_props.py`` check that the two agree on random and malformed packets.

One fragment rule for both families and both functions: a fragment, first or later,
has no port and no payload. IPv4: the MF flag or a fragment offset (``_IPV4_FRAGMENT``);
IPv6: a Fragment header anywhere in the chain, even an atomic one (offset 0, no M
flag). Such a packet is never a knock nor an SPA packet, and the engine drops it (port
-1). Nothing is lost by that: gatekeeper's rules match conntrack state, and conntrack's
defragmentation (in PREROUTING, before any filter rule) reassembles every datagram and
takes the IPv6 Fragment header off, atomic fragments included. A fragment that reaches
the queue skipped that, and the rest of its datagram is unread: fail closed rather than
judge part of a datagram.

Compiled with mypyc at install time (setup.py; ``gatekeeper.native`` says whether it is):
keep it mypy-strict, never patch its classes or functions at run time (compiled callers
would not see it), give class-level constants ``Final``; see "Compiled modules" in README.md.
"""

from __future__ import annotations

from struct import Struct
from typing import Final

from gatekeeper.model import ICMP, TCP, UDP

ICMPV6 = 58

# IPv6 extension headers that may sit between the fixed header and the transport.
_HOP, _ROUTING, _FRAGMENT, _AH, _DSTOPTS = 0, 43, 44, 51, 60
_EXTENSIONS = frozenset((_HOP, _ROUTING, _FRAGMENT, _AH, _DSTOPTS))
_MAX_EXTENSIONS = 8
# IPv4's MF flag and fragment offset: either makes the packet a fragment.
_IPV4_FRAGMENT: Final = 0x3FFF
# _walk's start offset for a fragment, and for headers that cannot be read.
_FRAGMENTED: Final = -1
_UNREADABLE: Final = -2
_NOTHING: Final[tuple[bytes, bytes, int, int, int]] = (b"", b"", -1, _UNREADABLE, 0)

# The common packet: its IP header, then the transport header's first byte (the ICMP
# type) and its bytes 2-3 (the TCP or UDP destination port). IPv4: total length, flags
# and fragment offset, protocol, source, destination; IPv6: payload length, next header,
# source, destination. The TCP flags, at the transport's byte 13, are read apart.
_IPV4_COMMON = Struct("!2xH2xH1xB2x4s4sB1xH").unpack_from
_IPV6_COMMON = Struct("!4xHB1x16s16sB1xH").unpack_from
# The general path: the IP header alone, then the transport header where it starts.
_IPV4 = Struct("!2xH2xH1xB2x4s4s").unpack_from
# IPv6: payload length, next header, source, destination.
_IPV6 = Struct("!4xHB1x16s16s").unpack_from
# TCP: destination port and flags. UDP: destination port.
_TCP = Struct("!2xH9xB").unpack_from
_UDP = Struct("!2xH").unpack_from

Facts = tuple[bytes, bytes, int, int, int]
"""(src, dst, proto, port, tcp_flags). ``port`` is -1 when there is no port to knock on;
for an ICMP or ICMPv6 echo request, ``proto`` is 1 and ``port`` is its payload length."""


def decode(pkt: bytes) -> Facts | None:
    """Return the packet's facts, or None when its headers cannot be read.

    The common packet is read here, the walk's first step unrolled into one ``struct``
    call under the same fragment rule; every other packet goes to :func:`_walk`
    (``tests/unit/test_decode_props.py`` holds the two to the same answers).
    """
    n = len(pkt)
    if n >= 24 and pkt[0] == 0x45:  # IPv4, no options: the transport starts at 20
        total, fragment, proto, src, dst, kind, port = _IPV4_COMMON(pkt)
        if total > n or total < 20:
            return None
        if fragment & _IPV4_FRAGMENT:
            return (src, dst, proto, -1, 0)
        return _first(pkt, src, dst, proto, port, kind, 20, total, ICMP, 8)
    if n >= 44 and pkt[0] >> 4 == 6:
        length, proto, src, dst, kind, port = _IPV6_COMMON(pkt)
        if proto not in _EXTENSIONS:  # the transport starts at 40
            end = 40 + length
            if end > n:
                return None
            return _first(pkt, src, dst, proto, port, kind, 40, end, ICMPV6, 128)
    return _decode(pkt, n)


def _first(pkt: bytes, src: bytes, dst: bytes, proto: int, port: int, kind: int, off: int,
           end: int, icmp: int, echo: int) -> Facts | None:
    """The facts of the common packet's transport header at ``off`` (its port and ICMP
    type already unpacked), in a datagram that ends at ``end``; ``icmp`` and ``echo``:
    the family's ICMP protocol and echo-request type."""
    if proto == TCP:
        return (src, dst, TCP, port, pkt[off + 13]) if end >= off + 20 else None
    if proto == UDP:
        return (src, dst, UDP, port, 0) if end >= off + 8 else None
    if proto == icmp:
        return (src, dst, ICMP, end - off - 8 if kind == echo else -1, 0) if end >= off + 8 else None
    return (src, dst, proto, -1, 0)


def _decode(pkt: bytes, n: int) -> Facts | None:
    """The general path (IPv4 options, IPv6 extension headers, short packets): the
    walk, then the transport header where it says."""
    src, dst, proto, off, end = _walk(pkt, n)
    if off < 0:
        return None if off == _UNREADABLE else (src, dst, proto, -1, 0)
    if proto == TCP:
        if off + 20 > end:
            return None
        port, flags = _TCP(pkt, off)
        return (src, dst, TCP, port, flags)
    if proto == UDP:
        if off + 8 > end:
            return None
        return (src, dst, UDP, _UDP(pkt, off)[0], 0)
    # (an ICMPv4 header in IPv6, or v6 in v4, is no echo)
    icmp, echo = (ICMP, 8) if len(src) == 4 else (ICMPV6, 128)
    if proto == icmp:
        if off + 8 > end:
            return None
        return (src, dst, ICMP, end - off - 8 if pkt[off] == echo else -1, 0)
    return (src, dst, proto, -1, 0)


def udp_payload(pkt: bytes) -> bytes | None:
    """The UDP payload of a whole IPv4 or IPv6 datagram, or None (a fragment too).

    Not on the hot path: the worker calls it only for a datagram to an SPA port. The
    headers are read by the same walk as :func:`decode`'s, so a packet has a payload
    only if decode gave it a UDP port. The payload ends where the UDP length field says
    (never past the IP packet's end).
    """
    _, _, proto, off, end = _walk(pkt, len(pkt))
    return _udp(pkt, off, end) if proto == UDP else None


def spa_payload(pkt: bytes) -> bytes | None:
    """What an SPA packet carries, on any of its transports (a door's ``spa_transports``),
    or None (a fragment, an unreadable header, another protocol or ICMP type too).

    Read on the one walk, as :func:`udp_payload`: a UDP datagram's payload; a TCP
    segment's, after its data offset (``fwknop -P tcpraw``); an ICMP or ICMPv6 echo
    request's or reply's, after its 8-byte header (``fwknop -P icmp`` sends a reply
    unless told ``--icmp-type 8``). Not on the hot path: the worker calls it only for a
    packet to a key of an SPA door.
    """
    src, _, proto, off, end = _walk(pkt, len(pkt))
    if off < 0:
        return None
    if proto == UDP:
        return _udp(pkt, off, end)
    if proto == TCP:
        if off + 20 > end:
            return None
        data = off + (pkt[off + 12] >> 4 << 2)
        return pkt[data:end] if off + 20 <= data <= end else None
    icmp, echo = (ICMP, (0, 8)) if len(src) == 4 else (ICMPV6, (128, 129))
    if proto == icmp and off + 8 <= end and pkt[off] in echo:
        return pkt[off + 8:end]
    return None


def _udp(pkt: bytes, off: int, end: int) -> bytes | None:
    """The payload of the UDP header at ``off`` (the walk's start: < 0 for none)."""
    if off < 0 or off + 8 > end:
        return None
    udp_len = pkt[off + 4] << 8 | pkt[off + 5]
    if udp_len < 8 or off + udp_len > end:
        return None
    return pkt[off + 8 : off + udp_len]


def _walk(pkt: bytes, n: int) -> tuple[bytes, bytes, int, int, int]:
    """The one header walk: ``(src, dst, proto, start, end)``.

    ``proto`` is the transport's protocol after any IPv4 options and IPv6 extension
    headers (hop-by-hop, routing, destination options, AH; seven at most), ``start``
    where its header begins and ``end`` where the datagram ends (the IP length, never
    the captured length). ``start`` is ``_FRAGMENTED`` for a fragment (see the module
    docstring) and ``_UNREADABLE`` when the headers cannot be read.
    """
    if n < 20:
        return _NOTHING
    first = pkt[0]
    if first >> 4 == 4:
        total, fragment, proto, src, dst = _IPV4(pkt)
        off = (first & 0x0F) << 2
        if off < 20 or total < off or total > n:
            return _NOTHING
        if fragment & _IPV4_FRAGMENT:
            return (src, dst, proto, _FRAGMENTED, total)
        return (src, dst, proto, off, total)
    if first >> 4 != 6 or n < 40:
        return _NOTHING
    length, proto, src, dst = _IPV6(pkt)
    end = 40 + length
    if end > n:
        return _NOTHING
    off = 40
    if proto in _EXTENSIONS:
        for _ in range(_MAX_EXTENSIONS):
            if proto not in _EXTENSIONS:
                break
            if off + 8 > end:
                return _NOTHING
            nxt = pkt[off]
            if proto == _FRAGMENT:
                return (src, dst, nxt, _FRAGMENTED, end)
            off += (pkt[off + 1] + 2) << 2 if proto == _AH else (pkt[off + 1] + 1) << 3
            proto = nxt
        else:
            return _NOTHING
    return (src, dst, proto, off, end)
