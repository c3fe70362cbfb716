"""Client side of SPA (fwknop's wire format) and of encrypted port sequences."""

from __future__ import annotations

import re
import socket
import time

from gatekeeper.client.knock import Target, resolve
from gatekeeper.errors import GatekeeperError
from gatekeeper.model import DEFAULT_SPA_PORT, PROTO_NUMBERS, TCP
from gatekeeper.spa import fwknop
from gatekeeper.spa import sequence as seqcodec
from gatekeeper.spa.nat import nat_target
from gatekeeper.spa.request import Request, encode


def key_gen(sequence: bool = False) -> str:
    """A new key file: fwknop's two lines, or (``sequence``) its ``KEY_BASE64: `` line."""
    if sequence:
        return seqcodec.format_key_file(seqcodec.generate_key())
    return fwknop.format_key_file(fwknop.generate_keys())


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(1 << 16)
    except OSError as exc:
        raise GatekeeperError(f"{path}: cannot read: {exc.strerror or exc}") from None


def local_address(target: Target, port: int = DEFAULT_SPA_PORT) -> str:
    """This host's source address towards ``target`` (what the gateway will see, no NAT)."""
    with socket.socket(target.family, socket.SOCK_DGRAM) as s:
        s.connect((target.address, port))
        return str(s.getsockname()[0])


def parse_access(text: str) -> list[tuple[str, int]]:
    out = []
    for spec in text.split(","):
        m = re.fullmatch(r"\s*(tcp|udp|icmp|none)/(\d{1,5})\s*", spec.lower())
        if m is None or int(m.group(2)) > 65535:
            raise GatekeeperError(f"{spec!r}: expected PROTO/PORT, e.g. tcp/22")
        out.append((m.group(1), int(m.group(2))))
    return out


def nat_field(text: str) -> str:
    """``-N HOST:PORT`` (``[V6]:PORT``) as the message carries it, ``HOST,PORT``."""
    host, _, port = text.rpartition(":")
    field = f"{host.removeprefix('[').removesuffix(']')},{port}"
    if nat_target(field) is None:
        raise GatekeeperError(f"-N {text!r}: expected ADDRESS:PORT, e.g. 198.51.100.20:22 "
                              "([2001:db8::20]:22)")
    return field


def send(host: str, key_file: str, access: str, allow: str, source_any: bool, port: int,
         verbose: bool = False, nat: str = "") -> bytes:
    """Send one SPA datagram to ``host`` (``nat``: a NAT access request, fwknop -N); returns it."""
    keys = fwknop.parse_key_file(_read(key_file), key_file)  # a KeyFileError is a GatekeeperError
    target = resolve(host)
    address = "0.0.0.0" if source_any else allow or local_address(target, port)
    try:
        packet = encode(keys, Request(parse_access(access), address, time.time(),
                                      nat=nat_field(nat) if nat else None))
    except ValueError as exc:
        raise GatekeeperError(f"spa: {exc}") from None
    with socket.socket(target.family, socket.SOCK_DGRAM) as s:
        s.sendto(packet, (target.address, port))
    if verbose:
        print(f"sent {len(packet)} bytes to {target.address}:{port}/udp for {address}", flush=True)
    return packet


def encrypted_steps(target: Target, key_file: str, port_range: str, access: str, allow: str,
                    proto: int = TCP) -> list[tuple[int, int]]:
    """The knocks of an encrypted sequence asking for ``access`` (default tcp/22)."""
    m = re.fullmatch(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*", port_range or "745-1000")
    if m is None:
        raise GatekeeperError(f"--range {port_range!r}: expected FIRST-LAST, e.g. 745-1000")
    wanted = parse_access(access or "tcp/22")
    if len(wanted) != 1 or wanted[0][0] not in ("tcp", "udp"):
        raise GatekeeperError("-A: one tcp/PORT or udp/PORT")
    name, port = wanted[0]
    address = allow or local_address(target)
    key = seqcodec.parse_key_file(_read(key_file), key_file)
    try:
        ports = seqcodec.encode(address, port, PROTO_NUMBERS[name], 0, time.time(), key,
                                (int(m.group(1)), int(m.group(2))))
    except ValueError as exc:
        raise GatekeeperError(f"knock --encrypted: {exc}") from None
    return [(proto, p) for p in ports]
