"""One header walk, one fragment rule: the verdict facts (:func:`decode`) and the SPA
payload (:func:`udp_payload`) agree with each other and with dpkt on every packet.

The rule (decode.py's docstring): a fragment, first or later, IPv4 (MF or an offset) or
IPv6 (a Fragment header, even an atomic one), has no port, so it is never a knock nor an
SPA packet and the engine drops it; its payload is None.
"""

from __future__ import annotations

import ipaddress

import dpkt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.lab.netns import GW4 as GW4_LAB
from gatekeeper.model import DEFAULT_SPA_PORT, Config
from gatekeeper.queue.decode import _decode, decode, udp_payload
from gatekeeper.queue.worker import Worker
from tests.fixtures.doors import CLIENT, WALL, spa_packet
from tests.fixtures.fakes import FakeGrants
from tests.fixtures.packets import (
    DST4,
    DST6,
    FAST,
    FRAGMENT,
    HOP,
    SRC4,
    SRC6,
    TCP,
    UDP,
    Layer4,
    datagram,
    frag6,
    hop,
    ipv4,
    ipv6,
    parse,
    ports,
    same_rule,
    syn,
    transports,
    v4,
    v6,
)

# -- the reference payload: what dpkt says the UDP payload is ------------------------------


def reference_payload(pkt: bytes) -> bytes | None:
    """The UDP payload of a well-formed, whole datagram as dpkt reads it: the bytes the
    UDP length field covers, None when that length is short of the header or runs past
    the IP packet, or when the packet is no whole UDP datagram."""
    facts, l4, size = parse(pkt)
    if facts is None or facts[2] != UDP or facts[3] < 0:
        return None
    assert isinstance(l4, dpkt.udp.UDP)
    if not 8 <= l4.ulen <= size:
        return None
    data: bytes = l4.data
    return data[: l4.ulen - 8]


@st.composite
def udp_any_length(draw: st.DrawFn, family: int) -> Layer4:
    """A UDP datagram whose length field says anything: short, exact, past the end."""
    data = draw(st.binary(max_size=40))
    ulen = draw(st.one_of(st.just(8 + len(data)), st.integers(0, 60)))
    return UDP, bytes(dpkt.udp.UDP(sport=draw(ports), dport=draw(ports), ulen=ulen, data=data))


def with_udp(family: int) -> st.SearchStrategy[Layer4]:
    return st.one_of(udp_any_length(family), transports(family))


datagrams = st.one_of(
    ipv4(transport=with_udp), ipv6(transport=with_udp),
    ipv4(fragments=False, transport=udp_any_length), ipv6(fragments=False, transport=udp_any_length),
)


@FAST
@given(datagrams)
def test_udp_payload_agrees_with_dpkt(pkt: bytes) -> None:
    assert udp_payload(pkt) == reference_payload(pkt)


@FAST
@given(datagrams)
def test_facts_agree_with_dpkt_on_udp_of_any_length(pkt: bytes) -> None:
    assert decode(pkt) == parse(pkt)[0]


@FAST
@given(datagrams)
def test_payload_and_facts_follow_one_rule(pkt: bytes) -> None:
    same_rule(pkt)
    # and the other way: a whole UDP datagram with a sound length has its payload
    facts = decode(pkt)
    if facts is not None and facts[2] == UDP and facts[3] >= 0 and reference_payload(pkt) is not None:
        assert udp_payload(pkt) is not None


@FAST
@given(st.one_of(ipv4(), ipv6()))
def test_the_common_packet_path_is_the_walk(pkt: bytes) -> None:
    # decode() reads the common packet (no IPv4 options, no IPv6 extension header) in
    # one struct call; the general walk must say the same of it
    assert decode(pkt) == _decode(pkt, len(pkt))


# -- fragments, spelled out -----------------------------------------------------------------

SPA = spa_packet()  # random salt: made once, so it can be compared


def _spa_datagram() -> bytes:
    return datagram(DEFAULT_SPA_PORT, SPA)


# Each holds a UDP header and a payload that would be read whole if the packet were not
# a fragment: first fragments (MF), atomic and first IPv6 fragments, later fragments.
FRAGMENTS: list[tuple[str, bytes]] = [
    ("v4 first fragment", v4(UDP, _spa_datagram(), mf=1)),
    ("v4 first fragment, options", v4(UDP, _spa_datagram(), opts=b"\x01" * 8, mf=1)),
    ("v4 later fragment", v4(UDP, _spa_datagram(), offset=3)),
    ("v4 last fragment", v4(UDP, _spa_datagram(), offset=3, mf=0)),
    ("v6 first fragment", v6(FRAGMENT, frag6(UDP, 0, 1) + _spa_datagram())),
    ("v6 atomic fragment", v6(FRAGMENT, frag6(UDP, 0, 0) + _spa_datagram())),
    ("v6 later fragment", v6(FRAGMENT, frag6(UDP, 9, 0) + _spa_datagram())),
    ("v6 first fragment after hop-by-hop", v6(HOP, hop(FRAGMENT) + frag6(UDP, 0, 1) + _spa_datagram())),
]


@pytest.mark.parametrize("pkt", [f[1] for f in FRAGMENTS], ids=[f[0] for f in FRAGMENTS])
def test_a_fragment_has_neither_port_nor_payload(pkt: bytes) -> None:
    facts = decode(pkt)
    assert facts is not None and facts[2] == UDP and facts[3] == -1
    assert udp_payload(pkt) is None


def test_whole_datagrams_have_port_and_payload() -> None:
    # the same datagrams unfragmented: so the test above fails if the walk reads nothing
    for pkt, src, dst in ((v4(UDP, _spa_datagram()), SRC4, DST4),
                          (v6(UDP, _spa_datagram()), SRC6, DST6),
                          (v6(HOP, hop(UDP) + _spa_datagram()), SRC6, DST6)):
        assert decode(pkt) == (src, dst, UDP, DEFAULT_SPA_PORT, 0)
        assert udp_payload(pkt) == SPA


# -- what a fragment does to the worker's verdicts -------------------------------------------

GW4 = ipaddress.ip_address(GW4_LAB).packed
CLIENT4 = ipaddress.ip_address(CLIENT).packed


def _ip4(l4: bytes, proto: int, *, mf: int = 0) -> bytes:
    ip = dpkt.ip.IP(src=CLIENT4, dst=GW4, p=proto, data=l4)
    ip.mf = mf
    return bytes(ip)


def _ip6(l4: bytes, proto: int, *, fragment: int | None = None) -> bytes:
    src = bytes.fromhex("20010db8000000000000000000000010")
    dst = bytes.fromhex("20010db8000000000000000000000001")
    body = l4 if fragment is None else frag6(proto, 0, fragment) + l4
    nxt = proto if fragment is None else FRAGMENT
    return bytes(dpkt.ip6.IP6(src=src, dst=dst, nxt=nxt, hlim=64, plen=len(body), data=body))


KNOCKS = ((UDP, 7000), (TCP, 8000), (UDP, 9000))  # the "ssh" door of tests/fixtures/doors.py


def _knock(proto: int, port: int) -> bytes:
    return datagram(port) if proto == UDP else syn(port)


def _build(family: int, proto: int, l4: bytes, frag: str) -> bytes:
    if family == 4:
        return _ip4(l4, proto, mf=1 if frag == "first" else 0)
    return _ip6(l4, proto, fragment={"first": 1, "atomic": 0}.get(frag))


@pytest.mark.parametrize(("family", "frag"), [(4, "first"), (6, "first"), (6, "atomic")])
def test_knocks_in_fragments_open_nothing(cfg: Config, family: int, frag: str) -> None:
    grants = FakeGrants()
    worker = Worker(cfg, grants, lambda _m: None, clock=lambda: 5.0, wall=lambda: WALL)
    for i, (proto, port) in enumerate(KNOCKS):
        assert not worker.on_packet(_build(family, proto, _knock(proto, port), frag), 5.0 + i * 0.01)
    assert grants.added == []
    assert not worker.on_packet(_build(family, TCP, syn(2222), "none"), 5.1)
    # the same knocks whole open the door: the fragments were what kept it shut
    for i, (proto, port) in enumerate(KNOCKS):
        worker.on_packet(_build(family, proto, _knock(proto, port), "none"), 6.0 + i * 0.01)
    assert [door for _, door in grants.added] == ["ssh"]
    assert worker.on_packet(_build(family, TCP, syn(2222), "none"), 6.1)


@pytest.mark.parametrize(("family", "frag"), [(4, "first"), (6, "first"), (6, "atomic")])
def test_spa_in_a_fragment_opens_nothing(cfg: Config, family: int, frag: str) -> None:
    grants = FakeGrants()
    worker = Worker(cfg, grants, lambda _m: None, clock=lambda: 5.0, wall=lambda: WALL)
    address = CLIENT if family == 4 else "2001:db8::10"
    spa = datagram(DEFAULT_SPA_PORT, spa_packet(address=address))
    assert not worker.on_packet(_build(family, UDP, spa, frag), 5.0)
    assert grants.added == []
    assert not worker.on_packet(_build(family, UDP, spa, "none"), 5.0)
    assert grants.added == [(address, "spa")]
