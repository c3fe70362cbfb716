"""SPA over the stock client's other transports (spa_transports): -P tcpraw, -P icmp and
--rand-port, without a kernel: the config, the payload on the one header walk, the special
doors and the worker, and the ruleset that routes them. (In the lab: test_spa_transports_lab.py.)"""

from __future__ import annotations

import base64
import ipaddress
import re
import tomllib
from pathlib import Path

import dpkt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper import cli
from gatekeeper.config import ConfigError
from gatekeeper.config.load import loads
from gatekeeper.engine import Engine, Reason, Verdict
from gatekeeper.engine.special import SpecialDoors
from gatekeeper.importers.fwknop import convert
from gatekeeper.lab.bench import junk
from gatekeeper.model import SPA_DIGEST_TYPES, SPA_MIN_PAYLOAD, Config
from gatekeeper.netfilter.prefilter import spa_matches
from gatekeeper.netfilter.render import render
from gatekeeper.queue.decode import decode, spa_payload, udp_payload
from gatekeeper.queue.worker import Worker
from gatekeeper.spa import fwknop
from gatekeeper.spa.cipher import Suite
from tests.fixtures.configs import one_door
from tests.fixtures.doors import CLIENT, CLIENT_B, GW_B, KEYS, WALL, spa_packet, udp, write_key
from tests.fixtures.fakes import FakeGrants
from tests.fixtures.packets import (
    FAST,
    ICMPV6,
    SRC6,
    TCP,
    UDP,
    ipv4,
    ipv6,
    parse,
    ping4,
    ping6,
    v4,
    v6,
)

ICMP = 1
KEY, HMAC = base64.b64encode(KEYS.encryption).decode(), base64.b64encode(KEYS.hmac).decode()
OTHER = fwknop.SpaKeys(bytes(range(1, 33)), bytes(range(2, 66)), "other")


def config(tmp_path: Path, transports: str = '["udp", "tcpraw", "icmp", "udp-any"]',
           extra: str = "", workers: int = 1, prefilter: bool = False) -> str:
    key = write_key(tmp_path / "spa.key", fwknop.format_key_file(KEYS))
    return one_door(f'name = "spa"\nspa = true\nkey_file = "{key}"\nopens = ["22"]\n'
                    f"spa_transports = {transports}\n{extra}",
                    f"workers = {workers}", f"prefilter = {'true' if prefilter else 'false'}")


def load(tmp_path: Path, *args: object, **kwargs: object) -> Config:
    return loads(config(tmp_path, *args, **kwargs), "t.toml")  # type: ignore[arg-type]


# -- the config ---------------------------------------------------------------------------


def test_default_is_udp_and_every_transport_can_be_named(tmp_path: Path) -> None:
    plain = loads(config(tmp_path).replace('spa_transports = ["udp", "tcpraw", "icmp", "udp-any"]', ""))
    assert plain.doors[0].spa is not None and plain.doors[0].spa.transports == ("udp",)
    door = load(tmp_path).doors[0]
    assert door.spa is not None and door.spa.transports == ("udp", "tcpraw", "icmp", "udp-any")


@pytest.mark.parametrize(("value", "message"), [
    ('["tcp"]', "spa_transports[0]: 'tcp': fwknop -P tcp needs a listening TCP server"),
    ('["udp", "http"]', "spa_transports[1]: 'http': fwknop -P http needs a listening TCP server"),
    ('["udp", "sctp"]', "spa_transports[1]: 'sctp': use one of udp, tcpraw, icmp, udp-any"),
    ("[]", "spa_transports: must name each transport once, at least one"),
    ('["icmp", "icmp"]', "spa_transports: must name each transport once"),
    ('"udp"', "spa_transports: must be a list"),
])
def test_bad_transports_are_one_clear_line(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"t\.toml: door\[0\] \(spa\)\.") as info:
        load(tmp_path, value)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_an_icmp_knock_step_as_long_as_spa_is_refused_with_icmp_spa(tmp_path: Path) -> None:
    knock = '[[door]]\nname = "ping"\nsequence = ["{n}:icmp", "7000"]\nopens = ["80"]\n'
    with pytest.raises(ConfigError, match=r"door\[1\] \(ping\)\.sequence: knock step 96:icmp is as "
                                          r"long as an SPA packet, and door 'spa' takes SPA over ICMP"):
        load(tmp_path, extra=knock.format(n=SPA_MIN_PAYLOAD))
    load(tmp_path, extra=knock.format(n=SPA_MIN_PAYLOAD - 1))
    load(tmp_path, '["udp", "tcpraw"]', extra=knock.format(n=500))  # no SPA over ICMP


def test_a_tcpraw_spa_port_is_no_public_or_knock_port(tmp_path: Path) -> None:
    text = config(tmp_path, '["tcpraw"]').replace("[metrics]", 'public = ["62201:tcp"]\n[metrics]')
    with pytest.raises(ConfigError, match=r"spa_port: 62201:tcp is public"):
        loads(text, "t.toml")
    loads(text.replace('"62201:tcp"', '"62201:udp"'), "t.toml")  # no udp transport: free


def test_check_names_each_transport(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gk.toml"
    path.write_text(config(tmp_path))
    assert cli.main(["check", "-c", str(path)]) == 0
    assert "spa (spa on 62201:udp, 62201:tcpraw, icmp echo, 10000-65535:udp -> 22:tcp)" \
        in capsys.readouterr().out


def test_spa_transports_only_on_an_spa_door(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"door\[1\] \(k\)\.spa_transports: only for a door with spa"):
        load(tmp_path, extra='[[door]]\nname = "k"\nsequence = ["1"]\nopens = ["2"]\n'
                             'spa_transports = ["udp"]\n')


def test_no_spa_packet_of_any_suite_is_shorter_than_the_floor() -> None:
    shortest = min(fwknop.min_text(Suite("cbc", None, frozenset({d}))) for d in SPA_DIGEST_TYPES)
    assert shortest >= SPA_MIN_PAYLOAD
    assert len(spa_packet()) > SPA_MIN_PAYLOAD


# -- the payload, on the one walk ---------------------------------------------------------


def tcp_seg(payload: bytes, dport: int = 62201, opts: bytes = b"") -> bytes:
    seg = dpkt.tcp.TCP(sport=0, dport=dport, flags=dpkt.tcp.TH_SYN, opts=opts, data=payload)
    seg.off = 5 + len(opts) // 4
    return bytes(seg)


def echo4(payload: bytes, kind: int) -> bytes:
    return bytes(dpkt.icmp.ICMP(type=kind, data=dpkt.icmp.ICMP.Echo(id=9, seq=1, data=payload)))


def test_spa_payload_of_each_transport() -> None:
    data = spa_packet()
    assert spa_payload(udp(data)) == udp_payload(udp(data)) == data
    assert spa_payload(v4(TCP, tcp_seg(data))) == data
    assert spa_payload(v4(TCP, tcp_seg(data, opts=b"\x01\x01\x01\x01"))) == data
    assert spa_payload(v6(6, tcp_seg(data))) == data
    assert spa_payload(v4(ICMP, echo4(data, 0))) == data  # fwknop -P icmp: an echo reply
    assert spa_payload(v4(ICMP, echo4(data, 8))) == data  # --icmp-type 8
    assert spa_payload(v6(ICMPV6, bytes(dpkt.icmp6.ICMP6(
        type=129, data=dpkt.icmp6.ICMP6.Echo(id=1, seq=1, data=data))))) == data
    assert spa_payload(v4(ICMP, echo4(data, 3))) is None  # an error quotes a datagram: no SPA
    assert spa_payload(v4(ICMP, ping6(len(data)))) is None  # ICMPv6 in IPv4
    assert spa_payload(v4(TCP, tcp_seg(data), mf=1)) is None  # a fragment
    assert spa_payload(v4(TCP, tcp_seg(data))[:39]) is None  # a header cut short
    bad = bytearray(v4(TCP, tcp_seg(data)))
    bad[32] = 0xF0  # a data offset of 60 bytes, past the segment's end
    assert spa_payload(bytes(bad[:80])) is None
    assert decode(v4(ICMP, echo4(data, 0)))[3] == -1  # type: ignore[index]  # no port: the hot path


def reference_spa(pkt: bytes) -> bytes | None:
    """What dpkt says the SPA payload is: UDP's (within its length field), TCP's after
    its data offset, an echo request's or reply's after its 8 bytes."""
    facts, l4, size = parse(pkt)
    if facts is None or l4 is None or isinstance(l4, bytes):
        return None
    family = 4 if pkt[0] >> 4 == 4 else 6
    if isinstance(l4, dpkt.udp.UDP):
        return bytes(l4.data)[: l4.ulen - 8] if 8 <= l4.ulen <= size else None
    if isinstance(l4, dpkt.tcp.TCP):
        return bytes(l4.data) if 20 <= l4.off * 4 <= size else None
    echo = {4: (dpkt.icmp.ICMP, (0, 8)), 6: (dpkt.icmp6.ICMP6, (128, 129))}[family]
    if isinstance(l4, echo[0]) and l4.type in echo[1] and size >= 8 and facts[2] == ICMP:
        return bytes(l4.data.data)
    return None


@FAST
@given(st.one_of(ipv4(), ipv6()))
def test_spa_payload_agrees_with_dpkt(pkt: bytes) -> None:
    assert spa_payload(pkt) == reference_spa(pkt)
    if spa_payload(pkt) is not None:  # one walk, one fragment rule: decode read it too
        facts = decode(pkt)
        assert facts is not None and facts[2] in (TCP, UDP, ICMP)


# -- the special doors and the worker -----------------------------------------------------


def worker(cfg: Config) -> tuple[Worker, FakeGrants]:
    grants = FakeGrants()
    return Worker(cfg, grants, lambda m: None, clock=lambda: 5.0, wall=lambda: WALL), grants


def packets(data: bytes) -> dict[str, bytes]:
    return {"udp": udp(data), "tcpraw": v4(TCP, tcp_seg(data)), "udp-any": udp(data, 40123),
            "icmp": v4(ICMP, echo4(data, 0)), "icmp request": v4(ICMP, echo4(data, 8))}


def v4_from(raw: bytes) -> bytes:
    """The packet from CLIENT (the fixtures' v4() sends from 203.0.113.10 too)."""
    assert raw[12:16] == CLIENT_B
    return raw


@pytest.mark.parametrize("transport", ["udp", "tcpraw", "udp-any", "icmp", "icmp request"])
def test_each_transport_grants_before_its_verdict_and_is_dropped(tmp_path: Path, transport: str) -> None:
    w, grants = worker(load(tmp_path))
    assert not w.on_packet(v4_from(packets(spa_packet())[transport]), 5.0), "the SPA packet is dropped"
    assert grants.added == [(CLIENT, "spa")]
    assert w.spa_counts == {("spa", "ok"): 1}


@pytest.mark.parametrize("transport", ["tcpraw", "udp-any", "icmp"])
def test_a_transport_the_door_does_not_take_is_not_spa(tmp_path: Path, transport: str) -> None:
    w, grants = worker(load(tmp_path, '["udp"]'))
    assert not w.on_packet(packets(spa_packet())[transport], 5.0)
    assert grants.added == [] and w.spa_counts == {}  # nothing for the door: the engine's drop


@pytest.mark.parametrize("transport", ["udp", "tcpraw", "udp-any", "icmp"])
def test_a_wrong_key_is_counted_on_every_transport(tmp_path: Path, transport: str) -> None:
    w, grants = worker(load(tmp_path))
    assert not w.on_packet(packets(spa_packet(keys=OTHER))[transport], 5.0)
    assert grants.added == [] and w.spa_counts == {("spa", "hmac"): 1}


def test_what_is_not_spa_sized_on_a_loose_key_is_any_packet(tmp_path: Path) -> None:
    """A SYN to the SPA port, a plain knock on a high UDP port, a ping: not counted for
    the door, decided by the engine (a knock step of another door still advances)."""
    knock = '[[door]]\nname = "k"\nsequence = ["40123:udp", "50:icmp", "62201:udp"]\nopens = ["80"]\n'
    cfg = load(tmp_path, '["tcpraw", "icmp", "udp-any"]', extra=knock)
    w, grants = worker(cfg)
    for raw in (udp(b"", 40123), v4(ICMP, ping4(50)), udp(b"x", 62201)):
        w.on_packet(raw, 5.0)
    assert grants.added == [(CLIENT, "k")] and w.spa_counts == {}
    assert not w.on_packet(v4(TCP, tcp_seg(b"")), 5.0)  # a SYN to the SPA port
    assert not w.on_packet(v4(ICMP, echo4(b"pong", 0)), 5.0)  # a stray echo reply
    assert not w.on_packet(v4(ICMP, echo4(bytes(1000), 8)), 5.0)  # ping -s 1000: no base64 text
    assert not w.on_packet(udp(bytes(range(200)), 40000), 5.0)  # junk of SPA size, not base64
    assert w.spa_counts == {} and w.counts[Reason.ERROR] == 0
    assert not w.on_packet(v4(TCP, tcp_seg(spa_packet() + b"\r\n")), 5.0)  # a newline after it
    assert grants.added[-1] == (CLIENT, "spa")


def test_a_udp_any_door_shares_another_doors_spa_port_in_config_order(tmp_path: Path) -> None:
    other = write_key(tmp_path / "other.key", fwknop.format_key_file(OTHER))
    extra = (f'[[door]]\nname = "any"\nspa = true\nkey_file = "{other}"\nopens = ["22"]\n'
             'spa_transports = ["udp-any"]\n')
    w, grants = worker(load(tmp_path, '["udp"]', extra=extra))
    w.on_packet(udp(spa_packet(keys=OTHER)), 5.0)  # to 62201: "spa" tries first, then "any"
    assert grants.added == [(CLIENT, "any")]
    assert w.spa_counts == {("spa", "hmac"): 1, ("any", "ok"): 1}
    w.on_packet(udp(spa_packet(keys=KEYS), 40000), 5.0)  # a random port: "any" alone
    assert grants.added == [(CLIENT, "any")] and w.spa_counts[("any", "hmac")] == 1


def test_with_a_cluster_what_the_spa_doors_leave_goes_to_the_cluster(tmp_path: Path) -> None:
    class Cluster:
        def __init__(self) -> None:
            self.calls: list[int] = []

        def decide(self, src: bytes, dst: bytes, proto: int, port: int, flags: int,
                   now: float) -> tuple[Verdict, Reason, tuple[()]]:
            self.calls.append(port)
            return (Verdict.DROP, Reason.KNOCK, ())

    w, _ = worker(load(tmp_path, '["udp", "udp-any"]'))
    w.cluster = Cluster()
    w.on_packet(udp(b"", 40123), 5.0)  # not SPA-shaped: the cluster's knock, not the engine's
    assert w.cluster.calls == [40123] and w.counts[Reason.KNOCK] == 1


def test_the_udp_spa_port_counts_every_packet_as_before(tmp_path: Path) -> None:
    w, _ = worker(load(tmp_path))
    w.on_packet(udp(b"junk"), 5.0)
    w.on_packet(udp(b"junk", 40000), 5.0)  # udp-any: not SPA-sized, not counted
    assert w.spa_counts == {("spa", "size"): 1}


def test_a_replay_on_another_transport_is_a_replay(tmp_path: Path) -> None:
    w, grants = worker(load(tmp_path))
    data = spa_packet()
    for raw in packets(data).values():
        w.on_packet(raw, 5.0)
    assert len(grants.added) == 1 and w.spa_counts == {("spa", "ok"): 1, ("spa", "replay"): 4}


def test_an_echo_reply_of_no_spa_length_never_knocks(tmp_path: Path) -> None:
    """An echo reply has no port: taken by its length for SPA only, never as a knock step."""
    knock = '[[door]]\nname = "k"\nsequence = ["50:icmp", "7000"]\nopens = ["80"]\n'
    cfg = load(tmp_path, '["icmp"]', extra=knock)
    engine = Engine(cfg)
    doors = SpecialDoors(cfg, engine)
    assert doors.handle(CLIENT_B, GW_B, ICMP, -1, 0, bytes(50), 5.0, WALL) is None
    assert doors.handle(CLIENT_B, GW_B, ICMP, -1, 0, bytes(SPA_MIN_PAYLOAD), 5.0, WALL) is None
    decision = doors.handle(CLIENT_B, GW_B, ICMP, -1, 0, spa_packet(), 5.0, WALL)
    assert decision is not None and decision[0] is Verdict.DROP and decision[1] is Reason.COMPLETED


def test_ipv6_echo_request_and_tcpraw(tmp_path: Path) -> None:
    address = str(ipaddress.ip_address(SRC6))
    w, grants = worker(load(tmp_path))
    data = spa_packet(address=address)
    assert not w.on_packet(v6(ICMPV6, ping6(0)[:8] + data), 5.0)
    assert grants.added == [(address, "spa")]
    assert not w.on_packet(v6(6, tcp_seg(data)), 5.0)
    assert w.spa_counts == {("spa", "ok"): 1, ("spa", "replay"): 1}


# -- the ruleset --------------------------------------------------------------------------


def test_sized_packets_of_each_transport_go_to_the_first_worker_and_pass_the_prefilter(
        tmp_path: Path) -> None:
    ruleset = render(load(tmp_path, workers=2, prefilter=True))
    first = "-j NFQUEUE --queue-num 0"
    for family, text, lengths in ((4, ruleset.ipv4, (136, 124)), (6, ruleset.ipv6, (156, 144))):
        tcp, other = lengths
        icmp = ("-p icmp -m icmp --icmp-type 8", "-p icmp -m icmp --icmp-type 0") if family == 4 \
            else ("-p ipv6-icmp -m icmp6 --icmpv6-type 128", "-p ipv6-icmp -m icmp6 --icmpv6-type 129")
        for match in (f"-p tcp -m tcp --dport 62201 -m length --length {tcp}:65535",
                      f"-p udp -m udp --dport 10000:65535 -m length --length {other}:65535",
                      *(f"{m} -m length --length {other}:65535" for m in icmp)):
            assert f"-A GATEKEEPER-IN {match} {first}" in text, (family, match)
            assert f"-A GATEKEEPER-PRE {match} -j RETURN" in text, (family, match)
        assert text.index(f"--length {other}:65535 {first}") < text.index("-j HMARK")
    plain = render(load(tmp_path, '["tcpraw"]', workers=2, prefilter=True)).ipv4
    assert "--dport 62201 -j" not in plain and "-p udp -m multiport --dports 62201" not in plain


# -- the bench's junk -----------------------------------------------------------------------


def test_the_junk_bench_measures_both_kinds_both_ways() -> None:
    short, base64 = junk.packets("short", 50), junk.packets("base64", 50)
    assert all(len(spa_payload(p) or b"") <= 64 for p in short)
    assert all(100 <= len(spa_payload(p) or b"") <= 400 for p in base64)
    assert all(10000 <= (decode(p) or (0, 0, 0, 0))[3] != 62201 for p in short + base64)
    cost = junk.measure(200, passes=1)
    assert set(cost.ns) == {(k, on) for k in junk.KINDS for on in (False, True)}
    assert all(ns > 0 for ns in cost.ns.values()) and len(cost.lines()) == 2


# -- import-fwknop ------------------------------------------------------------------------


@pytest.mark.parametrize(("pcap", "transports"), [
    ("udp port 62201", None),
    ("udp port 62201 or icmp", ["udp", "icmp"]),
    ("(udp port 62201 or tcp port 62201)", ["udp", "tcpraw"]),
    ("udp portrange 10000-65535 or icmp", ["udp", "icmp", "udp-any"]),
])
def test_import_fwknop_takes_the_transports_of_pcap_filter(pcap: str, transports: list[str] | None) -> None:
    access = f"SOURCE ANY\nOPEN_PORTS tcp/22\nKEY_BASE64 {KEY}\nHMAC_KEY_BASE64 {HMAC}\n"
    result = convert(access, "a.conf", "/k", f"PCAP_FILTER {pcap}\nENABLE_TCP_SERVER Y\n", "s.conf")
    door = tomllib.loads(result.toml)["door"][0]
    assert door.get("spa_transports") == transports
    assert any(w.startswith("s.conf:2: warning: ENABLE_TCP_SERVER Y: SPA over TCP (fwknop -P tcp) needs "
                            "a listening TCP server") for w in result.warnings), result.warnings


def test_the_modules_the_transports_rules_use_are_loaded_at_boot(tmp_path: Path) -> None:
    """The unit forbids module loading (ProtectKernelModules=yes): what the transports'
    matches need must be in the package's and the Vagrant gateway's modules-load lists."""
    root = Path(__file__).parents[2]
    cfg = load(tmp_path)
    used = {m for family in (4, 6) for line in spa_matches(cfg, family)
            for m in re.findall(r"-m (\w+)", line)}
    modules = {"tcp": "xt_tcpudp", "udp": "xt_tcpudp", "length": "xt_length"}
    assert used - set(modules) <= {"icmp", "icmp6"}  # built into ip_tables / ip6_tables
    for listing in ("debian/gatekeeper.modules-load", "vagrant/provision/gateway.sh"):
        text = (root / listing).read_text()
        assert all(modules[m] in text.split() for m in used & set(modules)), listing
