"""A knock client with the argument syntax of knockd's ``knock``.

A tcp step is one SYN: a non-blocking connect() closed at once, so the kernel sends
the SYN and nothing more (no retransmit, no RST). A udp step is one empty datagram.
An icmp step ``N:icmp`` is one echo request carrying N bytes.
"""

from __future__ import annotations

import errno
import socket
import time
from dataclasses import dataclass

from gatekeeper.errors import GatekeeperError
from gatekeeper.model import ICMP, MAX_ICMP_PAYLOAD, PROTO_NAMES, PROTO_NUMBERS, TCP, UDP

# A connect() timeout below the kernel's first SYN retransmit (1 s): a connect that
# succeeds within it had its very first SYN accepted (the lab's clients and probes).
FIRST_SYN_TIMEOUT = 0.9


@dataclass(frozen=True)
class Target:
    family: int
    address: str
    source: str | None = None  # local address to knock from (a host with several)


def parse_step(text: str, default_proto: int = TCP) -> tuple[int, int]:
    port_text, _, proto_text = text.partition(":")
    proto = PROTO_NUMBERS.get(proto_text.lower()) if proto_text else default_proto
    if proto is None or not port_text.isdigit():
        raise GatekeeperError(f"{text!r}: expected PORT[:tcp|udp|icmp]")
    port = int(port_text)
    if proto != ICMP and not 1 <= port <= 65535:
        raise GatekeeperError(f"{text!r}: port must be 1-65535")
    if proto == ICMP and port > MAX_ICMP_PAYLOAD:
        raise GatekeeperError(f"{text!r}: icmp payload size must be 0-{MAX_ICMP_PAYLOAD}")
    return proto, port


def resolve(host: str, family: int = 0, source: str | None = None) -> Target:
    try:
        infos = socket.getaddrinfo(host, None, family, socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise GatekeeperError(f"{host}: cannot resolve: {exc.strerror}") from None
    af, _, _, _, sockaddr = infos[0]
    return Target(af, str(sockaddr[0]), source)


def _bind(s: socket.socket, target: Target) -> None:
    if target.source is not None:
        s.bind((target.source, 0))


def _tcp(target: Target, port: int) -> None:
    with socket.socket(target.family, socket.SOCK_STREAM) as s:
        _bind(s, target)
        s.setblocking(False)
        err = s.connect_ex((target.address, port))
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN, errno.ECONNREFUSED):
            raise GatekeeperError(f"{target.address}:{port}/tcp: {errno.errorcode.get(err, err)}")


def _udp(target: Target, port: int) -> None:
    with socket.socket(target.family, socket.SOCK_DGRAM) as s:
        _bind(s, target)
        s.sendto(b"", (target.address, port))


def _icmp(target: Target, size: int) -> None:
    v6 = target.family == socket.AF_INET6
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    header = bytes([128 if v6 else 8, 0, 0, 0, 0x67, 0x6B, 0, 1])  # type, code, sum, id, seq
    packet = header + b"\0" * size
    if not v6:  # the kernel fills in the ICMPv6 checksum itself, not the ICMP one
        total = sum(int.from_bytes(packet[i : i + 2].ljust(2, b"\0"), "big")
                    for i in range(0, len(packet), 2))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        packet = packet[:2] + (~total & 0xFFFF).to_bytes(2, "big") + packet[4:]
    for kind in (socket.SOCK_DGRAM, socket.SOCK_RAW):  # unprivileged ping socket first
        try:
            with socket.socket(target.family, kind, proto) as s:
                _bind(s, target)
                s.sendto(packet, (target.address, 0))
                return
        except PermissionError:
            continue
    raise GatekeeperError("icmp knocks need a ping socket (net.ipv4.ping_group_range) or root")


SENDERS = {TCP: _tcp, UDP: _udp, ICMP: _icmp}


def knock(target: Target, steps: list[tuple[int, int]], delay: float = 0.0,
          verbose: bool = False) -> None:
    for i, (proto, port) in enumerate(steps):
        if i and delay:
            time.sleep(delay)
        if verbose:
            print(f"hitting {PROTO_NAMES[proto]} {target.address}:{port}", flush=True)
        SENDERS[proto](target, port)
