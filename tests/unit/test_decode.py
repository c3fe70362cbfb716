"""The fast header decoder agrees with dpkt (the decoder of record) and never raises.

Packets are built with dpkt; a small reference built on dpkt's parse says what the facts
must be, and :func:`gatekeeper.queue.decode.decode` must return exactly that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dpkt
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gatekeeper.model import ICMP, TCP, UDP
from gatekeeper.queue.decode import ICMPV6, Facts, decode, udp_payload

HOP, ROUTING, FRAGMENT, AH, DSTOPTS, ESP = 0, 43, 44, 51, 60, 50
IP6_EXTENSIONS = (HOP, ROUTING, FRAGMENT, AH, DSTOPTS, ESP)

FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Layer4 = tuple[int, bytes]
"""(IP protocol number, the transport bytes that follow the IP header(s))."""


# -- the reference: what dpkt says the facts are ------------------------------------------


def _transport(src: bytes, dst: bytes, proto: int, l4: Any, l4_len: int, family: int) -> Facts | None:
    if proto == TCP:
        if not isinstance(l4, dpkt.tcp.TCP):
            return None
        return (src, dst, TCP, l4.dport, l4.flags & 0xFF)
    if proto == UDP:
        if not isinstance(l4, dpkt.udp.UDP):
            return None
        return (src, dst, UDP, l4.dport, 0)
    icmp_proto, icmp_cls, echo = (ICMP, dpkt.icmp.ICMP, 8) if family == 4 else (
        ICMPV6, dpkt.icmp6.ICMP6, 128
    )
    if proto == icmp_proto:
        if not isinstance(l4, icmp_cls) or l4_len < 8:
            return None
        if l4.type == echo:
            assert isinstance(l4.data, icmp_cls.Echo)
            return (src, dst, ICMP, len(l4.data.data), 0)
        return (src, dst, ICMP, -1, 0)
    return (src, dst, proto, -1, 0)


class _IP6Header(dpkt.Packet):  # type: ignore[misc]
    """dpkt's fixed IPv6 header alone: dpkt.ip6.IP6 itself trips over a fragment header
    followed by another extension header (AttributeError) and over ESP."""

    __hdr__ = dpkt.ip6.IP6.__hdr__
    __bit_fields__ = dpkt.ip6.IP6.__bit_fields__


def parse(pkt: bytes) -> tuple[Facts | None, Any, int]:
    """The facts of a well-formed packet read with dpkt, its transport as dpkt parsed it
    (bytes when dpkt has no parser, None for a fragment) and that transport's length.

    The fragment rule (decode.py's docstring): a fragment, first or later, has no port.
    IPv4: the MF flag or an offset; IPv6: a Fragment header, even an atomic one.
    """
    if pkt[0] >> 4 == 4:
        ip = dpkt.ip.IP(pkt)
        if ip.offset or ip.mf:
            return (ip.src, ip.dst, ip.p, -1, 0), None, 0
        size = ip.len - ip.hl * 4
        return _transport(ip.src, ip.dst, ip.p, ip.data, size, 4), ip.data, size
    ip6 = _IP6Header(pkt)
    buf = ip6.data[: ip6.plen]
    nxt = ip6.nxt
    while nxt in dpkt.ip6.EXT_HDRS:
        if nxt == ESP:  # encrypted from here on: nothing to read
            return (ip6.src, ip6.dst, ESP, -1, 0), None, 0
        ext = dpkt.ip6.EXT_HDRS_CLS[nxt](buf)
        if isinstance(ext, dpkt.ip6.IP6FragmentHeader):
            return (ip6.src, ip6.dst, ext.nxt, -1, 0), None, 0
        buf = buf[ext.length :]
        nxt = ext.nxt
    l4: Any = buf
    try:
        l4 = dpkt.ip6.IP6._protosw[nxt](buf)
    except (KeyError, dpkt.UnpackError):
        pass
    return _transport(ip6.src, ip6.dst, nxt, l4, len(buf), 6), l4, len(buf)


def reference(pkt: bytes) -> Facts | None:
    """The facts of a well-formed packet, read with dpkt."""
    return parse(pkt)[0]


# -- building packets with dpkt -----------------------------------------------------------

ports = st.integers(0, 65535)
payloads = st.one_of(st.binary(max_size=48), st.integers(0, 1600).map(bytes))


@st.composite
def tcp(draw: st.DrawFn, family: int) -> Layer4:
    seg = dpkt.tcp.TCP(
        sport=draw(ports), dport=draw(ports), seq=draw(st.integers(0, 2**32 - 1)),
        flags=draw(st.integers(0, 0x1FF)), win=draw(ports), data=draw(st.binary(max_size=40)),
    )
    return TCP, bytes(seg)


@st.composite
def udp(draw: st.DrawFn, family: int) -> Layer4:
    data = draw(st.binary(max_size=40))
    return UDP, bytes(dpkt.udp.UDP(sport=draw(ports), dport=draw(ports), ulen=8 + len(data), data=data))


@st.composite
def echo(draw: st.DrawFn, family: int) -> Layer4:
    cls = dpkt.icmp.ICMP if family == 4 else dpkt.icmp6.ICMP6
    payload = draw(payloads)
    body = cls.Echo(id=draw(ports), seq=draw(ports), data=payload)
    msg = cls(type=8 if family == 4 else 128, code=draw(st.integers(0, 255)), data=body)
    return (ICMP if family == 4 else ICMPV6), bytes(msg)


@st.composite
def icmp_other(draw: st.DrawFn, family: int) -> Layer4:
    """Any ICMP type but the echo request: echo replies, errors, router adverts..."""
    cls = dpkt.icmp.ICMP if family == 4 else dpkt.icmp6.ICMP6
    echo_type = 8 if family == 4 else 128
    kind = draw(st.integers(0, 255).filter(lambda t: t != echo_type))
    rest = draw(st.binary(min_size=4, max_size=4))
    if kind in cls._typesw and kind not in (0, 129):  # an error quoting the offending packet
        inner = dpkt.ip.IP(src=b"\x01" * 4, dst=b"\x02" * 4, p=UDP) if family == 4 else dpkt.ip6.IP6(
            src=b"\x01" * 16, dst=b"\x02" * 16, nxt=59
        )
        data = rest + bytes(inner)
    else:
        data = rest + draw(st.binary(max_size=32))
    msg = cls(type=kind, code=draw(st.integers(0, 255)), data=data)
    return (ICMP if family == 4 else ICMPV6), bytes(msg)


@st.composite
def cross_icmp(draw: st.DrawFn, family: int) -> Layer4:
    """An ICMPv4 echo request in IPv6 or an ICMPv6 one in IPv4: not an echo knock."""
    other = 6 if family == 4 else 4
    _, data = draw(echo(other))
    return (ICMPV6 if family == 4 else ICMP), data


@st.composite
def other_proto(draw: st.DrawFn, family: int) -> Layer4:
    taken = {TCP, UDP, ICMP, ICMPV6} | (set(IP6_EXTENSIONS) if family == 6 else set())
    # 4 and 41 carry a whole inner IP packet that dpkt would try to parse: keep it empty
    proto = draw(st.integers(0, 255).filter(lambda p: p not in taken))
    data = b"" if proto in (4, 41) else draw(st.binary(max_size=40))
    return proto, data


@st.composite
def truncated_l4(draw: st.DrawFn, family: int) -> Layer4:
    """A transport header cut short, inside an IP packet whose lengths are consistent."""
    proto, data = draw(st.one_of(tcp(family), udp(family), echo(family)))
    minimum = 20 if proto == TCP else 8
    return proto, data[: draw(st.integers(0, minimum - 1))]


def transports(family: int) -> st.SearchStrategy[Layer4]:
    return st.one_of(
        tcp(family), udp(family), echo(family), icmp_other(family), cross_icmp(family),
        other_proto(family), truncated_l4(family),
    )


addresses4 = st.binary(min_size=4, max_size=4)
addresses6 = st.binary(min_size=16, max_size=16)


@st.composite
def ipv4(draw: st.DrawFn, *, fragments: bool = True,
         transport: Callable[[int], st.SearchStrategy[Layer4]] = transports) -> bytes:
    """An IPv4 packet with random options; ``fragments``: sometimes a fragment."""
    proto, data = draw(transport(4))
    options = draw(st.integers(0, 10).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n)))
    offset = draw(st.integers(0, 8191)) if fragments and draw(st.booleans()) else 0
    ip = dpkt.ip.IP(
        src=draw(addresses4), dst=draw(addresses4), p=proto, ttl=draw(st.integers(1, 255)),
        id=draw(ports), tos=draw(st.integers(0, 255)), opts=options, data=data,
    )
    ip.hl = 5 + len(options) // 4
    ip.mf = draw(st.integers(0, 1)) if fragments else 0
    ip.df = draw(st.integers(0, 1))
    ip.offset = offset
    pkt = bytes(ip)
    assert len(pkt) == 20 + len(options) + len(data) == ip.len
    return pkt


def _padn(size: int) -> bytes:
    """Options area of ``size`` bytes (>= 2) filled with one PadN option."""
    return bytes([1, size - 2]) + bytes(size - 2)


@st.composite
def extension(draw: st.DrawFn, kind: int, nxt: int) -> bytes:
    if kind in (HOP, DSTOPTS):
        units = draw(st.integers(0, 3))
        cls = dpkt.ip6.IP6HopOptsHeader if kind == HOP else dpkt.ip6.IP6DstOptsHeader
        return bytes(cls(nxt=nxt, len=units, data=_padn((units + 1) * 8 - 2)))
    if kind == ROUTING:
        hops = draw(st.integers(0, 2))
        addrs = b"".join(draw(addresses6) for _ in range(hops))
        return bytes(
            dpkt.ip6.IP6RoutingHeader(nxt=nxt, len=2 * hops, type=0, segs_left=hops, data=addrs)
        )
    if kind == FRAGMENT:
        frag = dpkt.ip6.IP6FragmentHeader(nxt=nxt, id=draw(st.integers(0, 2**32 - 1)))
        frag.frag_off = draw(st.integers(1, 8191)) if draw(st.booleans()) else 0
        frag.m_flag = draw(st.integers(0, 1))
        return bytes(frag)
    assert kind == AH
    units = draw(st.integers(1, 4))
    auth = draw(st.binary(min_size=(units - 1) * 4, max_size=(units - 1) * 4))
    return bytes(
        dpkt.ip6.IP6AHHeader(nxt=nxt, len=units, spi=draw(st.integers(1, 2**32 - 1)), data=auth)
    )


@st.composite
def ipv6(draw: st.DrawFn, *, fragments: bool = True,
         transport: Callable[[int], st.SearchStrategy[Layer4]] = transports) -> bytes:
    """An IPv6 packet with a random extension chain; ``fragments``: sometimes with a
    Fragment header (first, later or atomic)."""
    proto, data = draw(transport(6))
    kinds = draw(st.lists(st.sampled_from((HOP, ROUTING, FRAGMENT, AH, DSTOPTS) if fragments
                                          else (HOP, ROUTING, AH, DSTOPTS)), max_size=5))
    chain = b""
    nxt = proto
    for kind in reversed(kinds):
        chain = draw(extension(kind, nxt)) + chain
        nxt = kind
    body = chain + data
    ip6 = dpkt.ip6.IP6(
        src=draw(addresses6), dst=draw(addresses6), nxt=nxt, hlim=draw(st.integers(1, 255)),
        plen=len(body), data=body,
    )
    ip6.flow = draw(st.integers(0, 2**20 - 1))
    pkt = bytes(ip6)
    assert len(pkt) == 40 + len(body)
    return pkt


packets = st.one_of(ipv4(), ipv6())


def _well_formed(facts: object, pkt: bytes) -> None:
    """decode()'s contract on any input: None or the five facts with sane types."""
    if facts is None:
        return
    assert isinstance(facts, tuple) and len(facts) == 5
    src, dst, proto, port, flags = facts
    size = 4 if pkt[0] >> 4 == 4 else 16
    assert isinstance(src, bytes) and isinstance(dst, bytes)
    assert len(src) == len(dst) == size
    assert all(type(v) is int for v in (proto, port, flags))
    assert 0 <= proto <= 255 and -1 <= port <= 65535 and 0 <= flags <= 255


def same_rule(pkt: bytes) -> None:
    """On any input, decode's facts are well formed, and udp_payload finds a payload only
    where decode found a UDP port (one walk, one fragment rule)."""
    facts = decode(pkt)
    _well_formed(facts, pkt)
    payload = udp_payload(pkt)
    if payload is not None:
        assert isinstance(payload, bytes)
        assert facts is not None and facts[2] == UDP and facts[3] >= 0


# -- agreement with dpkt ------------------------------------------------------------------


@FAST
@given(ipv4())
def test_ipv4_agrees_with_dpkt(pkt: bytes) -> None:
    assert decode(pkt) == reference(pkt)


@FAST
@given(ipv6())
def test_ipv6_agrees_with_dpkt(pkt: bytes) -> None:
    assert decode(pkt) == reference(pkt)


@FAST
@given(st.one_of(ipv4(fragments=False), ipv6(fragments=False)))
def test_unfragmented_packets_agree_with_dpkt(pkt: bytes) -> None:
    # more examples reach the transport header when no later fragment is drawn
    assert decode(pkt) == reference(pkt)


# -- the same facts spelled out, so the reference itself is checked -----------------------

SRC4, DST4 = bytes([203, 0, 113, 10]), bytes([203, 0, 113, 1])
SRC6 = bytes.fromhex("20010db8000100000000000000000010")
DST6 = bytes.fromhex("20010db8000100000000000000000001")


def v4(proto: int, l4: bytes | dpkt.Packet, *, opts: bytes = b"", offset: int = 0, mf: int = 0) -> bytes:
    ip = dpkt.ip.IP(src=SRC4, dst=DST4, p=proto, opts=opts, data=l4)
    ip.hl = 5 + len(opts) // 4
    ip.offset = offset
    ip.mf = mf
    return bytes(ip)


def v6(nxt: int, body: bytes | dpkt.Packet) -> bytes:
    raw = bytes(body)
    return bytes(dpkt.ip6.IP6(src=SRC6, dst=DST6, nxt=nxt, hlim=64, plen=len(raw), data=raw))


def syn(dport: int, flags: int = dpkt.tcp.TH_SYN) -> bytes:
    return bytes(dpkt.tcp.TCP(sport=40000, dport=dport, flags=flags))


def datagram(dport: int, data: bytes = b"") -> bytes:
    return bytes(dpkt.udp.UDP(sport=40000, dport=dport, ulen=8 + len(data), data=data))


def ping4(size: int, kind: int = 8) -> bytes:
    return bytes(dpkt.icmp.ICMP(type=kind, data=dpkt.icmp.ICMP.Echo(id=1, seq=1, data=bytes(size))))


def ping6(size: int, kind: int = 128) -> bytes:
    return bytes(dpkt.icmp6.ICMP6(type=kind, data=dpkt.icmp6.ICMP6.Echo(id=1, seq=1, data=bytes(size))))


def frag6(nxt: int, offset: int, more: int = 1) -> bytes:
    frag = dpkt.ip6.IP6FragmentHeader(nxt=nxt, id=7)
    frag.frag_off = offset
    frag.m_flag = more
    return bytes(frag)


def hop(nxt: int) -> bytes:
    return bytes(dpkt.ip6.IP6HopOptsHeader(nxt=nxt, len=0, data=_padn(6)))


EXAMPLES: list[tuple[str, bytes, Facts | None]] = [
    ("v4 tcp syn", v4(TCP, syn(22)), (SRC4, DST4, TCP, 22, 0x02)),
    ("v4 tcp syn+ack", v4(TCP, syn(8000, 0x12)), (SRC4, DST4, TCP, 8000, 0x12)),
    ("v4 tcp options", v4(TCP, syn(22), opts=b"\x01" * 40), (SRC4, DST4, TCP, 22, 0x02)),
    ("v4 udp", v4(UDP, datagram(7000, b"x")), (SRC4, DST4, UDP, 7000, 0)),
    ("v4 echo", v4(ICMP, ping4(100)), (SRC4, DST4, ICMP, 100, 0)),
    ("v4 empty echo", v4(ICMP, ping4(0)), (SRC4, DST4, ICMP, 0, 0)),
    ("v4 echo reply", v4(ICMP, ping4(100, kind=0)), (SRC4, DST4, ICMP, -1, 0)),
    ("v4 icmpv6 echo", v4(ICMPV6, ping6(100)), (SRC4, DST4, ICMPV6, -1, 0)),
    ("v4 gre", v4(47, b"\x00" * 8), (SRC4, DST4, 47, -1, 0)),
    ("v4 first fragment", v4(UDP, datagram(7000), mf=1), (SRC4, DST4, UDP, -1, 0)),
    ("v4 first fragment, tcp", v4(TCP, syn(22), mf=1), (SRC4, DST4, TCP, -1, 0)),
    ("v4 first fragment with options", v4(UDP, datagram(7000), opts=b"\x01" * 4, mf=1),
     (SRC4, DST4, UDP, -1, 0)),
    ("v4 later fragment", v4(UDP, datagram(7000), offset=1), (SRC4, DST4, UDP, -1, 0)),
    ("v4 last fragment", v4(TCP, syn(22), offset=8191), (SRC4, DST4, TCP, -1, 0)),
    ("v4 short tcp", v4(TCP, syn(22)[:19]), None),
    ("v4 short udp", v4(UDP, datagram(53)[:7]), None),
    ("v4 short echo", v4(ICMP, ping4(0)[:7]), None),
    ("v6 tcp", v6(TCP, syn(22)), (SRC6, DST6, TCP, 22, 0x02)),
    ("v6 udp", v6(UDP, datagram(9000)), (SRC6, DST6, UDP, 9000, 0)),
    ("v6 echo", v6(ICMPV6, ping6(1200)), (SRC6, DST6, ICMP, 1200, 0)),
    ("v6 echo reply", v6(ICMPV6, ping6(5, kind=129)), (SRC6, DST6, ICMP, -1, 0)),
    ("v6 neighbour solicitation", v6(ICMPV6, bytes(dpkt.icmp6.ICMP6(type=135, data=bytes(20)))),
     (SRC6, DST6, ICMP, -1, 0)),
    ("v6 icmpv4 echo", v6(ICMP, ping4(100)), (SRC6, DST6, ICMP, -1, 0)),
    ("v6 no next header", v6(59, b""), (SRC6, DST6, 59, -1, 0)),
    ("v6 esp", v6(ESP, bytes(16)), (SRC6, DST6, ESP, -1, 0)),
    ("v6 hop-by-hop tcp", v6(HOP, hop(TCP) + syn(22)), (SRC6, DST6, TCP, 22, 0x02)),
    ("v6 first fragment", v6(FRAGMENT, frag6(UDP, 0) + datagram(7000)), (SRC6, DST6, UDP, -1, 0)),
    ("v6 atomic fragment", v6(FRAGMENT, frag6(UDP, 0, 0) + datagram(7000)), (SRC6, DST6, UDP, -1, 0)),
    ("v6 first fragment after hop-by-hop", v6(HOP, hop(FRAGMENT) + frag6(TCP, 0) + syn(22)),
     (SRC6, DST6, TCP, -1, 0)),
    ("v6 later fragment", v6(FRAGMENT, frag6(UDP, 185) + datagram(7000)), (SRC6, DST6, UDP, -1, 0)),
    ("v6 later fragment after hop-by-hop", v6(HOP, hop(FRAGMENT) + frag6(TCP, 1, 0) + syn(22)),
     (SRC6, DST6, TCP, -1, 0)),
    ("v6 short tcp", v6(TCP, syn(22)[:19]), None),
    ("v6 truncated extension", v6(HOP, hop(TCP)[:7]), None),
    ("v6 extension without transport", v6(HOP, hop(TCP)), None),
]


@pytest.mark.parametrize(("pkt", "facts"), [e[1:] for e in EXAMPLES], ids=[e[0] for e in EXAMPLES])
def test_known_packets(pkt: bytes, facts: Facts | None) -> None:
    assert reference(pkt) == facts
    assert decode(pkt) == facts


def test_eight_extension_headers_are_refused() -> None:
    # the chain is capped so a crafted packet cannot make the hot path loop for long
    chain = b"".join(hop(HOP) for _ in range(7)) + hop(TCP)
    assert decode(v6(HOP, chain + syn(22))) is None
    assert decode(v6(HOP, chain[8:] + syn(22))) == (SRC6, DST6, TCP, 22, 0x02)


def test_unknown_version_is_refused() -> None:
    pkt = bytearray(v4(TCP, syn(22)))
    pkt[0] = 0x55
    assert decode(bytes(pkt)) is None


def test_ipv4_total_length_bounds_the_packet() -> None:
    pkt = v4(ICMP, ping4(100))
    # trailing bytes beyond the IP total length (link padding) are not payload
    assert decode(pkt + bytes(30)) == (SRC4, DST4, ICMP, 100, 0)
    assert decode(v4(TCP, syn(22)[:19]) + bytes(30)) is None
    assert decode(v6(UDP, datagram(53)[:7]) + bytes(30)) is None
    bad_ihl = bytearray(pkt)
    bad_ihl[0] = 0x44  # ihl 16 bytes, less than the fixed header
    assert decode(bytes(bad_ihl)) is None


# -- malformed input never raises ---------------------------------------------------------


@FAST
@given(packets)
def test_truncated_packet_returns_none(pkt: bytes) -> None:
    # every strict prefix is shorter than the length its IP header claims: no facts, and
    # no payload (udp_payload reads the headers with the same walk)
    for cut in range(len(pkt)):
        assert decode(pkt[:cut]) is None
        assert udp_payload(pkt[:cut]) is None


@FAST
@given(packets, st.binary(min_size=1, max_size=64))
def test_bytes_after_the_ip_length_are_ignored(pkt: bytes, padding: bytes) -> None:
    # link-layer padding after the datagram is neither payload nor a transport header
    assert decode(pkt + padding) == decode(pkt)


# random bytes, half of them starting like an IPv4 (ihl 5 or 15) or IPv6 header
noise = st.one_of(
    st.binary(max_size=120),
    st.tuples(st.sampled_from([0x45, 0x4F, 0x60]), st.binary(max_size=120)).map(
        lambda t: bytes([t[0]]) + t[1]
    ),
)


@FAST
@given(noise)
def test_random_bytes_never_raise(pkt: bytes) -> None:
    same_rule(pkt)


@FAST
@given(packets, st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6))
def test_mutated_packets_never_raise(pkt: bytes, changes: list[tuple[int, int]]) -> None:
    mutated = bytearray(pkt)
    for where, value in changes:
        mutated[where % len(mutated)] = value
    assume(mutated[0] >> 4 in (4, 6))
    same_rule(bytes(mutated))


@FAST
@given(packets)
def test_facts_are_well_formed(pkt: bytes) -> None:
    facts = decode(pkt)
    _well_formed(facts, pkt)
    if facts is not None:
        addresses = (pkt[12:16], pkt[16:20]) if pkt[0] >> 4 == 4 else (pkt[8:24], pkt[24:40])
        assert facts[:2] == addresses


# -- the packets `gatekeeper bench` sends -------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**16), st.integers(0, 7))
def test_bench_traffic_agrees_with_dpkt(seed: int, round_: int) -> None:
    """The benchmark's mix (knocks, unauthorised SYNs, junk of many protocols, headers
    cut short) built by its own packet builder, not dpkt's: still the facts dpkt reads."""
    from gatekeeper.lab.bench import traffic

    mix = traffic.build(300, round_=round_, seed=seed)
    malformed = 0
    for pkt in mix.packets:
        facts = decode(pkt)
        assert facts == reference(pkt)
        malformed += facts is None
    assert malformed == mix.kinds["malformed"]
