"""Read just the header fields the engine needs from a raw IPv4/IPv6 packet.

This is the hot path. For the common packet (IPv4 without options, IPv6 without
extension headers) one ``struct`` call reads every field the engine needs; any other
packet takes the general path, which walks options and extension headers. Nothing is
built but the two address bytes and the result. dpkt stays the decoder of record for
anything richer (payloads, pcap replay, tests), and ``tests/test_decode.py`` checks that
the two agree on random and malformed packets.

Compiled with mypyc at install time (setup.py; ``gatekeeper.native`` says whether it is):
keep it mypy-strict, never patch its classes or functions at run time (compiled callers
would not see it), give class-level constants ``Final``; see "Compiled modules" in README.md.
"""

from __future__ import annotations

from struct import Struct

ICMP = 1
TCP = 6
UDP = 17
ICMPV6 = 58

# IPv6 extension headers that may sit between the fixed header and the transport.
_HOP, _ROUTING, _FRAGMENT, _AH, _DSTOPTS = 0, 43, 44, 51, 60
_EXTENSIONS = frozenset((_HOP, _ROUTING, _FRAGMENT, _AH, _DSTOPTS))
_MAX_EXTENSIONS = 8

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
    """Return the packet's facts, or None when its headers cannot be read."""
    n = len(pkt)
    if n >= 24 and pkt[0] == 0x45:  # IPv4, no options: the transport starts at 20
        total, fragment, proto, src, dst, kind, port = _IPV4_COMMON(pkt)
        if total > n or total < 20:
            return None
        if fragment & 0x1FFF:
            return (src, dst, proto, -1, 0)
        if proto == TCP:
            return (src, dst, TCP, port, pkt[33]) if total >= 40 else None
        if proto == UDP:
            return (src, dst, UDP, port, 0) if total >= 28 else None
        if proto == ICMP:
            return (src, dst, ICMP, total - 28 if kind == 8 else -1, 0) if total >= 28 else None
        return (src, dst, proto, -1, 0)
    if n >= 44 and pkt[0] >> 4 == 6:
        length, proto, src, dst, kind, port = _IPV6_COMMON(pkt)
        if proto not in _EXTENSIONS:  # the transport starts at 40
            end = 40 + length
            if end > n:
                return None
            if proto == TCP:
                return (src, dst, TCP, port, pkt[53]) if end >= 60 else None
            if proto == UDP:
                return (src, dst, UDP, port, 0) if end >= 48 else None
            if proto == ICMPV6:
                return (src, dst, ICMP, end - 48 if kind == 128 else -1, 0) if end >= 48 else None
            return (src, dst, proto, -1, 0)
    return _decode(pkt, n)


def _decode(pkt: bytes, n: int) -> Facts | None:
    """The general path: IPv4 options, IPv6 extension headers, short packets."""
    if n < 20:
        return None
    first = pkt[0]
    if first >> 4 == 4:
        total, fragment, proto, src, dst = _IPV4(pkt)
        off = (first & 0x0F) << 2
        if off < 20 or total < off or total > n:
            return None
        if fragment & 0x1FFF:  # a later fragment carries no transport header
            return (src, dst, proto, -1, 0)
        end = total
        icmp, echo = ICMP, 8
    elif first >> 4 == 6:
        if n < 40:
            return None
        length, proto, src, dst = _IPV6(pkt)
        end = 40 + length
        if end > n:
            return None
        off = 40
        if proto in _EXTENSIONS:
            for _ in range(_MAX_EXTENSIONS):
                if proto not in _EXTENSIONS:
                    break
                if off + 8 > end:
                    return None
                nxt = pkt[off]
                if proto == _FRAGMENT:
                    if (pkt[off + 2] << 8 | pkt[off + 3]) & 0xFFF8:
                        return (src, dst, nxt, -1, 0)
                    off += 8
                elif proto == _AH:
                    off += (pkt[off + 1] + 2) << 2
                else:
                    off += (pkt[off + 1] + 1) << 3
                proto = nxt
            else:
                return None
        icmp, echo = ICMPV6, 128  # (an ICMPv4 header in IPv6, or v6 in v4, is no echo)
    else:
        return None
    if proto == TCP:
        if off + 20 > end:
            return None
        port, flags = _TCP(pkt, off)
        return (src, dst, TCP, port, flags)
    if proto == UDP:
        if off + 8 > end:
            return None
        return (src, dst, UDP, _UDP(pkt, off)[0], 0)
    if proto == icmp:
        if off + 8 > end:
            return None
        return (src, dst, ICMP, end - off - 8 if pkt[off] == echo else -1, 0)
    return (src, dst, proto, -1, 0)


def udp_payload(pkt: bytes) -> bytes | None:
    """The UDP payload of an unfragmented IPv4 or IPv6 packet, or None.

    Not on the hot path: the worker calls it only for a datagram to an SPA port. The
    payload ends where the UDP length field says (never past the IP packet's end).
    """
    n = len(pkt)
    if n < 20:
        return None
    first = pkt[0]
    if first >> 4 == 4:
        total, fragment, proto, _, _ = _IPV4(pkt)
        off = (first & 0x0F) << 2
        if off < 20 or total < off or total > n or fragment & 0x3FFF:  # MF or an offset
            return None
        end = total
    elif first >> 4 == 6:
        if n < 40:
            return None
        length, proto, _, _ = _IPV6(pkt)
        end = 40 + length
        if end > n:
            return None
        off = 40
        for _ in range(_MAX_EXTENSIONS):
            if proto not in _EXTENSIONS:
                break
            if off + 8 > end:
                return None
            nxt = pkt[off]
            if proto == _FRAGMENT:
                return None  # a fragment: not reassembled here
            off += (pkt[off + 1] + 2) << 2 if proto == _AH else (pkt[off + 1] + 1) << 3
            proto = nxt
        else:
            return None
    else:
        return None
    if proto != UDP or off + 8 > end:
        return None
    udp_len = pkt[off + 4] << 8 | pkt[off + 5]
    if udp_len < 8 or off + udp_len > end:
        return None
    return pkt[off + 8 : off + udp_len]
