"""Write the small captures under tests/captures/ that tests/test_replay.py replays.

    .venv/bin/python tests/make_captures.py            # rewrite tests/captures/*
    .venv/bin/python tests/make_captures.py --bench N FILE   # N packets of the bench's mix

One scenario (:func:`scenario`, for :data:`CONFIG`), written with dpkt's writers in each
link type replay reads: Ethernet (pcap and pcapng, and every frame VLAN-tagged, some
twice), Linux cooked v1 and v2 (the gateway's frames marked outgoing), raw IP; then a
truncated copy, a file of garbage and a capture of an unknown link type.
"""

from __future__ import annotations

import argparse
import ipaddress
import struct
import sys
from pathlib import Path

import dpkt

HERE = Path(__file__).resolve().parent
OUT = HERE / "captures"
T0 = 1_800_000_000.0
GATEWAY, GATEWAY6 = "203.0.113.1", "2001:db8::1"
CLIENT, CLIENT6 = "203.0.113.10", "2001:db8::10"
WRONG, SCANNER, WEB = "203.0.113.20", "203.0.113.66", "203.0.113.30"

CONFIG = """
[gatekeeper]
interfaces = []
public = ["80:tcp"]

[[door]]
name = "ssh"
sequence = ["7000:udp", "8000:tcp", "9000:udp"]
sequence_timeout = 5
opens = ["22:tcp"]
open_for = 30
"""

SYN, ACK, SYNACK = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK

Packet = tuple[float, bytes, bool]  # (seconds after T0, IP packet, sent by the gateway)


def ip(src: str, dst: str, transport: dpkt.Packet, proto: int) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        return bytes(dpkt.ip.IP(src=s.packed, dst=d.packed, p=proto, ttl=64, data=transport))
    header = dpkt.ip6.IP6(src=s.packed, dst=d.packed, nxt=proto, hlim=64,
                          plen=len(bytes(transport)), data=transport)
    return bytes(header)


def udp(src: str, dst: str, dport: int, sport: int = 40000, data: bytes = b"") -> bytes:
    return ip(src, dst, dpkt.udp.UDP(sport=sport, dport=dport, ulen=8 + len(data), data=data),
              dpkt.ip.IP_PROTO_UDP)


def tcp(src: str, dst: str, dport: int, flags: int = SYN, sport: int = 40001) -> bytes:
    return ip(src, dst, dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, win=64240),
              dpkt.ip.IP_PROTO_TCP)


def scenario() -> list[Packet]:
    """A client knocks and connects (IPv4 and IPv6), a wrong knock resets, a scanner is
    locked out, a web client uses the public port; the grants expire."""
    p: list[Packet] = []
    t = 0.0
    for family, (client, gw) in enumerate(((CLIENT, GATEWAY), (CLIENT6, GATEWAY6))):
        t = 0.1 + family
        p += [(t, udp(client, gw, 7000), False), (t + 0.01, tcp(client, gw, 8000), False),
              (t + 0.02, udp(client, gw, 9000), False),
              (t + 0.03, tcp(client, gw, 22, SYN, 50022), False),
              (t + 0.031, tcp(gw, client, 50022, SYNACK, 22), True),
              (t + 0.032, tcp(client, gw, 22, ACK, 50022), False)]
    p += [(2.0, udp(WRONG, GATEWAY, 7000), False), (2.01, tcp(WRONG, GATEWAY, 1234), False),
          (2.02, udp(WRONG, GATEWAY, 9000), False)]
    p += [(3.0 + i * 0.001, tcp(SCANNER, GATEWAY, 20 + i), False) for i in range(10)]
    p += [(4.0, tcp(WEB, GATEWAY, 80, SYN, 50080), False),
          (4.001, tcp(GATEWAY, WEB, 50080, SYNACK, 80), True),
          (4.002, tcp(WEB, GATEWAY, 80, ACK, 50080), False)]
    nd = dpkt.icmp6.ICMP6(type=135, code=0, data=bytes(4) + ipaddress.ip_address(GATEWAY6).packed)
    p.append((5.0, ip("fe80::10", "ff02::1:ff00:1", nd, 58), False))
    bad = bytearray(udp(WRONG, GATEWAY, 7000))
    bad[2:4] = struct.pack("!H", 200)  # a total length past the packet's end
    p.append((6.0, bytes(bad), False))
    p.append((40.0, udp(WRONG, GATEWAY, 1), False))  # after the grants' 30 s: they expired
    return p


ARP = bytes(6) * 2 + b"\x08\x06" + bytes(28)


def ethernet(pkt: bytes, out: bool, tags: int = 0) -> bytes:
    src, dst = (b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02")
    if out:
        src, dst = dst, src
    kind = b"\x08\x00" if pkt[0] >> 4 == 4 else b"\x86\xdd"
    vlan = b"".join((b"\x88\xa8" if i == 0 and tags > 1 else b"\x81\x00") + struct.pack("!H", 10 + i)
                    for i in range(tags))
    return dst + src + vlan + kind + pkt


def sll(pkt: bytes, out: bool) -> bytes:
    kind = 0x0800 if pkt[0] >> 4 == 4 else 0x86DD
    return struct.pack("!HHH8sH", 4 if out else 0, 1, 6, bytes(8), kind) + pkt


def sll2(pkt: bytes, out: bool) -> bytes:
    kind = 0x0800 if pkt[0] >> 4 == 4 else 0x86DD
    return struct.pack("!HHIHBB8s", kind, 0, 2, 1, 4 if out else 0, 6, bytes(8)) + pkt


def write(path: Path, frames: list[tuple[float, bytes]], linktype: int, ng: bool = False) -> None:
    with open(path, "wb") as f:
        writer = (dpkt.pcapng.Writer(f, linktype=linktype) if ng
                  else dpkt.pcap.Writer(f, linktype=linktype))
        for ts, frame in frames:
            writer.writepkt(frame, ts=T0 + ts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--bench", nargs=2, metavar=("N", "FILE"),
                        help="instead: N packets of gatekeeper bench's mix, Ethernet, 10 us apart")
    args = parser.parse_args(argv)
    if args.bench:
        return bench(int(args.bench[0]), Path(args.bench[1]))
    OUT.mkdir(exist_ok=True)
    packets = scenario()
    eth = [(ts, ethernet(p, out)) for ts, p, out in packets]
    eth.insert(1, (0.05, ARP))
    write(OUT / "ethernet.pcap", eth, dpkt.pcap.DLT_EN10MB)
    write(OUT / "ethernet.pcapng", eth, dpkt.pcap.DLT_EN10MB, ng=True)
    write(OUT / "vlan.pcap", [(ts, ethernet(p, out, 1 + i % 2)) for i, (ts, p, out) in enumerate(packets)],
          dpkt.pcap.DLT_EN10MB)
    write(OUT / "sll.pcap", [(ts, sll(p, out)) for ts, p, out in packets], dpkt.pcap.DLT_LINUX_SLL)
    write(OUT / "sll2.pcapng", [(ts, sll2(p, out)) for ts, p, out in packets], 276, ng=True)
    write(OUT / "raw.pcap", [(ts, p) for ts, p, _ in packets], 101)
    whole = (OUT / "ethernet.pcap").read_bytes()
    (OUT / "truncated.pcap").write_bytes(whole[: len(whole) - 30])
    (OUT / "garbage.pcap").write_bytes(b"this is not a capture, only text that names itself one\n" * 4)
    write(OUT / "unknown-link.pcap", eth[:3], 147)
    (OUT / "config.toml").write_text(CONFIG)
    print(f"wrote {len(list(OUT.iterdir()))} files to {OUT}")
    return 0


def bench(n: int, path: Path) -> int:
    """N packets of ``gatekeeper bench``'s traffic (knocks, unauthorised SYNs, junk,
    malformed; half IPv6), repeated as needed; the config beside it (FILE.toml)."""
    from gatekeeper.lab.bench import traffic

    packets = traffic.build(min(n, 60_000), round_=0).packets
    with open(path, "wb") as f:
        writer = dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_EN10MB)
        for i in range(n):
            writer.writepkt(ethernet(packets[i % len(packets)], False), ts=T0 + i * 1e-5)
    path.with_suffix(".toml").write_text(traffic.config_text())
    print(f"wrote {n} packets to {path} and its config to {path.with_suffix('.toml')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
