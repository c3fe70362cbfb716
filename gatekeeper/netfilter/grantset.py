"""Grant entries in the kernel sets, written over netlink in microseconds.

The worker adds a grant here *before* it verdicts the knock that completed the
sequence, so the client's first SYN already matches the set in the kernel.
Each entry (an address and one port, and the door's host for a forwarded door) carries
the door's name as its ipset comment, so a restarted worker or daemon can adopt exactly
the grants (the ports of them) that are still running.

Adding is on the worker's hot path, so it is one netlink message built here with
``struct`` (about 20 us); pyroute2 spends 300-450 us an add (an asyncio loop a call)
and keeps the rarer work: listing the sets for adoption and removing entries.
"""

from __future__ import annotations

import ipaddress
import math
import os
import socket
import struct
from dataclasses import dataclass

from pyroute2 import IPSet
from pyroute2.ipset import PortEntry

from gatekeeper.model import PROTO_NAMES, Door, Port
from gatekeeper.netfilter.nat import COMMENT_PREFIX, set_name
from gatekeeper.netfilter.render import SET_FWD, SET_IN


@dataclass(frozen=True)
class SetEntry:
    address: str
    door: str
    timeout: int
    step: Port | None = None  # the entry's port (None if the kernel did not say)


def _family(address: str) -> int:
    return 6 if ":" in address else 4


# Netlink and ipset constants (linux/netlink.h, linux/netfilter/ipset/ip_set.h).
_NETLINK_NETFILTER = 12
_NLM_F_REQUEST, _NLM_F_ACK = 0x1, 0x4  # no NLM_F_EXCL: an existing entry is refreshed
_NLMSG_ERROR = 2
_NLA_F_NESTED, _NLA_F_NET_BYTEORDER = 0x8000, 0x4000
_IPSET_MSG_ADD = 6 << 8 | 9  # NFNL_SUBSYS_IPSET << 8 | IPSET_CMD_ADD
_IPSET_PROTOCOL = 7
_ATTR_PROTOCOL, _ATTR_SETNAME, _ATTR_DATA = 1, 2, 7
_ATTR_IP, _ATTR_PORT, _ATTR_TIMEOUT, _ATTR_PROTO, _ATTR_IP2, _ATTR_COMMENT = 1, 4, 6, 7, 20, 26
_ATTR_IPADDR = {4: 1, 6: 2}  # IPSET_ATTR_IPADDR_IPV4 / _IPV6, inside IPSET_ATTR_IP(2)
_NLMSGHDR = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")


def _nla(kind: int, payload: bytes) -> bytes:
    size = _NLA.size + len(payload)
    return _NLA.pack(size, kind) + payload + bytes(-size & 3)


def _nla_ip(kind: int, packed: bytes) -> bytes:
    family = 4 if len(packed) == 4 else 6
    return _nla(kind | _NLA_F_NESTED, _nla(_ATTR_IPADDR[family] | _NLA_F_NET_BYTEORDER, packed))


def _error_text(code: int) -> str:
    if code < 4096:
        return os.strerror(code)
    if code == 4352:  # IPSET_ERR_HASH_FULL
        return "the set is full (maxelem)"
    return f"ipset error {code}"


class _IpsetAdder:
    """``ipset add -exist SET ADDRESS,PROTO:PORT[,HOST] timeout T comment DOOR``, one
    netlink message each, answered by the kernel's ack (or its error) before returning."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)
        self._sock.bind((0, 0))
        self._sock.settimeout(2.0)
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def add(self, name: str, address: bytes, proto: int, port: int, host: bytes | None,
            timeout: int, comment: str) -> None:
        data = _nla_ip(_ATTR_IP, address)
        data += _nla(_ATTR_PORT | _NLA_F_NET_BYTEORDER, struct.pack("!H", port))
        data += _nla(_ATTR_PROTO, bytes([proto]))
        if host is not None:
            data += _nla_ip(_ATTR_IP2, host)
        data += _nla(_ATTR_TIMEOUT | _NLA_F_NET_BYTEORDER, struct.pack("!I", timeout))
        data += _nla(_ATTR_COMMENT, comment.encode() + b"\0")
        family = socket.AF_INET if len(address) == 4 else socket.AF_INET6
        body = (struct.pack("=BBH", family, 0, 0)
                + _nla(_ATTR_PROTOCOL, bytes([_IPSET_PROTOCOL]))
                + _nla(_ATTR_SETNAME, name.encode() + b"\0")
                + _nla(_ATTR_DATA | _NLA_F_NESTED, data))
        self._seq = seq = (self._seq + 1) & 0xFFFFFFFF
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), _IPSET_MSG_ADD,
                                _NLM_F_REQUEST | _NLM_F_ACK, seq, 0)
        self._sock.send(header + body)
        while True:  # the ack of this message (skipping any left over from an earlier one)
            reply = self._sock.recv(8192)
            at = 0
            while at + _NLMSGHDR.size <= len(reply):
                size, kind, _, rseq, _ = _NLMSGHDR.unpack_from(reply, at)
                if kind == _NLMSG_ERROR and rseq == seq:
                    (code,) = struct.unpack_from("=i", reply, at + _NLMSGHDR.size)
                    if code:
                        raise OSError(-code, f"ipset add {name}: {_error_text(-code)}")
                    return
                at += max(size, _NLMSGHDR.size) + (-size & 3)


class GrantSets:
    def __init__(self) -> None:
        self._ipset = IPSet()
        self._adder = _IpsetAdder()

    def close(self) -> None:
        self._adder.close()
        self._ipset.close()

    def _entries(self, address: str, door: Door,
                 steps: tuple[Port, ...]) -> list[tuple[str, tuple[object, ...], str, int]]:
        family = _family(address)
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        out: list[tuple[str, tuple[object, ...], str, int]] = []
        for step in steps:
            port = PortEntry(step.port, protocol=step.proto)
            if door.host is None:
                out.append((SET_IN[family], (address, port), "ip,port", af))
            elif door.host.version == family:
                out.append((SET_FWD[family], (address, port, str(door.host)), "ip,port,ip", af))
        return out

    def add(self, address: str, door: Door, seconds: float,
            steps: tuple[Port, ...] | None = None) -> int:
        """Add or refresh entries for ``address``: a port of ``steps`` each (None: all
        of the door's ``opens``); returns how many."""
        timeout = max(1, math.ceil(seconds))
        family = _family(address)
        packed = ipaddress.ip_address(address).packed
        count = 0
        for step in door.opens if steps is None else steps:
            if door.host is None:
                self._adder.add(SET_IN[family], packed, step.proto, step.port, None, timeout, door.name)
            elif door.host.version == family:
                self._adder.add(SET_FWD[family], packed, step.proto, step.port, door.host.packed,
                                timeout, door.name)
            else:
                continue
            count += 1
        return count

    def add_nat(self, address: str, door: Door, seconds: float, step: Port, host: str,
                port: int) -> None:
        """An SPA NAT grant (gatekeeper.netfilter.nat): the forward grant to the target
        first, then the (address, gateway port) pair its DNAT rule matches (if that fails,
        the forward grant is taken out again and the error raised); commented
        ``nat:DOOR``, so that adoption after a restart leaves them to their timeout."""
        timeout = max(1, math.ceil(seconds))
        packed = ipaddress.ip_address(address).packed
        comment = COMMENT_PREFIX + door.name
        family = _family(address)
        self._adder.add(SET_FWD[family], packed, step.proto, port,
                        ipaddress.ip_address(host).packed, timeout, comment)
        try:
            self._adder.add(set_name(host, port), packed, step.proto, step.port, None, timeout, comment)
        except Exception as exc:  # nothing half-installed: take the forward grant out again
            af = socket.AF_INET if family == 4 else socket.AF_INET6
            try:
                self._ipset.delete(SET_FWD[family], (address, PortEntry(port, protocol=step.proto), host),
                                   etype="ip,port,ip", family=af, exclusive=False)
            except Exception as undo:  # say so: the forward grant stays until its timeout
                raise OSError(f"{exc}; the forward grant to {host} stays until it times out "
                              f"({undo})") from exc
            raise

    def remove(self, address: str, door: Door, steps: tuple[Port, ...] | None = None) -> None:
        """Remove the entries of ``steps`` (None: all of the door's ``opens``)."""
        for name, entry, etype, af in self._entries(address, door,
                                                    door.opens if steps is None else steps):
            try:
                self._ipset.delete(name, entry, etype=etype, family=af, exclusive=False)
            except Exception:  # pyroute2 raises NetlinkError when the entry has expired already
                continue

    def list(self) -> list[SetEntry]:
        """Entries in the grant sets with their remaining seconds (for adoption and status)."""
        found: list[SetEntry] = []
        for name in (*SET_IN.values(), *SET_FWD.values()):
            for msg in self._ipset.list(name):
                adt = msg.get_attr("IPSET_ATTR_ADT")
                if adt is None:
                    continue
                for data in adt.get_attrs("IPSET_ATTR_DATA"):
                    ip = data.get_attr("IPSET_ATTR_IP_FROM")
                    address = ip.get_attr("IPSET_ATTR_IPADDR_IPV4") or ip.get_attr(
                        "IPSET_ATTR_IPADDR_IPV6"
                    )
                    comment = data.get_attr("IPSET_ATTR_COMMENT") or ""
                    timeout = data.get_attr("IPSET_ATTR_TIMEOUT") or 0
                    port = data.get_attr("IPSET_ATTR_PORT_FROM")
                    if port is None:
                        port = data.get_attr("IPSET_ATTR_PORT")
                    proto = data.get_attr("IPSET_ATTR_PROTO")
                    step = (Port(int(proto), int(port))
                            if port is not None and proto in PROTO_NAMES else None)
                    found.append(SetEntry(address, comment, int(timeout), step))
        return found
