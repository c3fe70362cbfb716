"""The fast header decoder agrees with dpkt (the decoder of record) and never raises.

Packets are built with dpkt; a small reference built on dpkt's parse says what the facts
must be, and :func:`gatekeeper.queue.decode.decode` must return exactly that.
"""

from __future__ import annotations

import dpkt
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gatekeeper.model import ICMP, TCP, UDP
from gatekeeper.queue.decode import ICMPV6, Facts, decode, udp_payload
from tests.fixtures.packets import (
    DST4,
    DST6,
    ESP,
    FAST,
    FRAGMENT,
    HOP,
    SRC4,
    SRC6,
    datagram,
    frag6,
    hop,
    ipv4,
    ipv6,
    packets,
    ping4,
    ping6,
    reference,
    same_rule,
    syn,
    v4,
    v6,
    well_formed,
)

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
    well_formed(facts, pkt)
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
