"""Write the fuzz seed corpus (tests/corpus/*.bin): packets built with dpkt that cover
what the decoder must survive. Run once; the files are committed.

    python tests/make_corpus.py
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import dpkt

OUT = Path(__file__).parent / "corpus"
A4 = ipaddress.ip_address("203.0.113.10").packed
G4 = ipaddress.ip_address("203.0.113.1").packed
A6 = ipaddress.ip_address("2001:db8:1::10").packed
G6 = ipaddress.ip_address("2001:db8:1::1").packed


def v4(proto: int, l4: bytes, **kw: object) -> bytes:
    ip = dpkt.ip.IP(src=A4, dst=G4, p=proto, data=l4, **kw)
    ip.len = len(ip)
    return bytes(ip)


def v6(nxt: int, l4: bytes, ext: bytes = b"") -> bytes:
    ip = dpkt.ip6.IP6(src=A6, dst=G6, nxt=nxt, hlim=64, data=b"")
    ip.plen = len(ext) + len(l4)
    return bytes(ip) + ext + l4


def tcp(port: int, flags: int = dpkt.tcp.TH_SYN) -> bytes:
    return bytes(dpkt.tcp.TCP(sport=40000, dport=port, flags=flags, off=5))


def udp(port: int, payload: bytes = b"") -> bytes:
    u = dpkt.udp.UDP(sport=40000, dport=port, data=payload)
    u.ulen = len(u)
    return bytes(u)


def echo(size: int, v6_: bool = False) -> bytes:
    return bytes([128 if v6_ else 8, 0, 0, 0, 0, 1, 0, 1]) + b"\0" * size


def main() -> None:
    OUT.mkdir(exist_ok=True)
    seeds: dict[str, bytes] = {
        "v4_tcp_syn": v4(6, tcp(8000)),
        "v4_tcp_synack": v4(6, tcp(8000, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK)),
        "v4_udp": v4(17, udp(7000)),
        "v4_udp_spa_sized": v4(17, udp(62201, b"A" * 200)),
        "v4_icmp_echo": v4(1, echo(64)),
        "v4_icmp_unreachable_quoting": v4(1, bytes([3, 3, 0, 0, 0, 0, 0, 0]) + v4(17, udp(53))[:28]),
        "v4_gre": v4(47, b"\0" * 8),
        "v4_options_bad_length": bytes([0x46]) + v4(6, tcp(22))[1:20] + b"\x01\x01\x01\x00" + tcp(22),
        "v4_options": bytes([0x46, 0, 0, 44]) + v4(6, tcp(22))[4:20] + b"\x01\x01\x01\x00" + tcp(22),
        "v4_later_fragment": v4(17, udp(7000), offset=40),
        "v4_first_fragment": v4(17, udp(7000), mf=1),
        "v4_truncated_tcp": v4(6, tcp(22))[:30],
        "v4_bad_ihl": bytes([0x43]) + v4(6, tcp(22))[1:],
        "v4_total_too_long": v4(6, tcp(22))[:2] + b"\xff\xff" + v4(6, tcp(22))[4:],
        "v6_tcp_syn": v6(6, tcp(8000)),
        "v6_udp": v6(17, udp(9000)),
        "v6_icmp_echo": v6(58, echo(128, True)),
        "v6_hop_by_hop": v6(0, tcp(22), bytes([6, 0]) + b"\x01\x04\0\0\0\0"),
        "v6_fragment_first": v6(44, udp(7000), bytes([17, 0, 0, 1, 0, 0, 0, 1])),
        "v6_fragment_later": v6(44, udp(7000), bytes([17, 0, 0, 0x19, 0, 0, 0, 1])),
        "v6_routing_dstopts": v6(43, tcp(22), bytes([60, 0, 0, 0, 0, 0, 0, 0])
                                 + bytes([6, 0, 1, 4, 0, 0, 0, 0])),
        "v6_truncated": v6(6, tcp(22))[:45],
        "v6_ext_loop": v6(60, b"", bytes([60, 0, 1, 4, 0, 0, 0, 0]) * 9),
        "v5_garbage": bytes([0x50]) + b"\0" * 39,
        "tiny": b"\x45",
        "empty": b"",
    }
    for name, data in seeds.items():
        (OUT / f"{name}.bin").write_bytes(data)
    print(f"wrote {len(seeds)} seeds to {OUT}")


if __name__ == "__main__":
    main()
