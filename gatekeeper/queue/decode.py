"""Read just the header fields the engine needs from a raw IPv4/IPv6 packet.

This is the hot path: no objects, no copies beyond the two address slices. dpkt stays
the decoder of record for anything richer (payloads, pcap replay, tests), and
``tests/test_decode.py`` checks that the two agree on random and malformed packets.
"""

from __future__ import annotations

ICMP = 1
TCP = 6
UDP = 17
ICMPV6 = 58

# IPv6 extension headers that may sit between the fixed header and the transport.
_HOP, _ROUTING, _FRAGMENT, _AH, _DSTOPTS = 0, 43, 44, 51, 60
_MAX_EXTENSIONS = 8

Facts = tuple[bytes, bytes, int, int, int]
"""(src, dst, proto, port, tcp_flags). ``port`` is -1 when there is no port to knock on;
for an ICMP or ICMPv6 echo request, ``proto`` is 1 and ``port`` is its payload length."""


def decode(pkt: bytes) -> Facts | None:
    """Return the packet's facts, or None when its headers cannot be read."""
    n = len(pkt)
    if n < 20:
        return None
    version = pkt[0] >> 4
    if version == 4:
        ihl = (pkt[0] & 0x0F) << 2
        total = pkt[2] << 8 | pkt[3]
        if ihl < 20 or total < ihl or total > n:
            return None
        src = pkt[12:16]
        dst = pkt[16:20]
        proto = pkt[9]
        if (pkt[6] & 0x1F) or pkt[7]:  # a later fragment carries no transport header
            return (src, dst, proto, -1, 0)
        off = ihl
        end = total
    elif version == 6:
        if n < 40:
            return None
        end = 40 + (pkt[4] << 8 | pkt[5])
        if end > n:
            return None
        src = pkt[8:24]
        dst = pkt[24:40]
        proto = pkt[6]
        off = 40
        for _ in range(_MAX_EXTENSIONS):
            if proto not in (_HOP, _ROUTING, _FRAGMENT, _DSTOPTS, _AH):
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
    else:
        return None
    if proto == TCP:
        if off + 20 > end:
            return None
        return (src, dst, TCP, pkt[off + 2] << 8 | pkt[off + 3], pkt[off + 13])
    if proto == UDP:
        if off + 8 > end:
            return None
        return (src, dst, UDP, pkt[off + 2] << 8 | pkt[off + 3], 0)
    if proto == (ICMP if version == 4 else ICMPV6):  # ICMPv4 in IPv6 (or v6 in v4) is no echo
        if off + 8 > end:
            return None
        echo = pkt[off] == (8 if version == 4 else 128)
        return (src, dst, ICMP, end - off - 8 if echo else -1, 0)
    return (src, dst, proto, -1, 0)
