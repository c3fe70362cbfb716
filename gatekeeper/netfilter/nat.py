"""SPA NAT access (``fwknop -N HOST:PORT``): DNAT to an internal host, per client.

A door's ``spa_nat`` targets (and its ``spa_force_nat``) become static rules in a nat-table
chain of ours, ``GATEKEEPER-NAT``, jumped to first from PREROUTING: one DNAT rule a target
and protocol, matching a per-target set of the granted (source, protocol and gateway
port) pairs. The worker adds a pair (with the grant's timeout, so the kernel expires it)
and the forward grant (source, target port, target host) to ``gatekeeper-fwd4``/``6``,
which ``GATEKEEPER-FWD`` accepts, before the SPA packet's verdict: the client's first SYN
to the gateway port is translated and forwarded. A source not in the set is not
translated: its packet reaches the gateway's INPUT, where ``GATEKEEPER-IN`` guards it.

Set names come from the target (a hash), so they stay the same over reloads and restarts.
"""

from __future__ import annotations

import hashlib
import ipaddress

from gatekeeper.config import ConfigError
from gatekeeper.model import Config

CHAIN_NAT = "GATEKEEPER-NAT"
SET_PREFIX = "gatekeeper-nat"  # + family + "-" + 10 hex digits: 26 characters of ipset's 31
COMMENT_PREFIX = "nat:"  # + door name: set entries of NAT grants (no door is named so)
_FORWARDING = {4: "/proc/sys/net/ipv4/ip_forward", 6: "/proc/sys/net/ipv6/conf/all/forwarding"}

Target = tuple[str, int]


def _family(host: str) -> int:
    return ipaddress.ip_address(host).version


def targets(config: Config, family: int) -> list[Target]:
    """The NAT targets of every door, of one family, each once, in a stable order."""
    found = {t for d in config.doors if d.spa is not None for t in d.spa.nat_targets
             if _family(t[0]) == family}
    return sorted(found, key=lambda t: (ipaddress.ip_address(t[0]), t[1]))


def set_name(host: str, port: int) -> str:
    digest = hashlib.sha256(f"{host}:{port}".encode()).hexdigest()[:10]
    return f"{SET_PREFIX}{_family(host)}-{digest}"


def destination(host: str, port: int) -> str:
    """DNAT's ``--to-destination`` of a target: ``[v6]:port`` for IPv6."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def render_sets(config: Config) -> list[str]:
    """``ipset restore`` lines creating the per-target sets."""
    lines = []
    for family, inet in ((4, "inet"), (6, "inet6")):
        for host, port in targets(config, family):
            lines.append(f"create {set_name(host, port)} hash:ip,port family {inet} hashsize 64 "
                         "maxelem 65536 timeout 0 comment")
    return lines


def render_rules(config: Config, family: int) -> list[str]:
    """The rules of ``GATEKEEPER-NAT`` for one family (empty: no target, no chain). Only
    packets to one of the gateway's own addresses are translated (addrtype LOCAL): a
    granted client's traffic through the gateway to other hosts on that port is not."""
    return [f"-A {CHAIN_NAT} -p {proto} -m addrtype --dst-type LOCAL "
            f"-m set --match-set {set_name(host, port)} src,dst "
            f"-j DNAT --to-destination {destination(host, port)}"
            for host, port in targets(config, family) for proto in ("tcp", "udp")]


def forwarding_off(config: Config) -> list[int]:
    """The families with NAT targets whose kernel does not forward (read from /proc)."""
    off = []
    for family, path in _FORWARDING.items():
        if not targets(config, family):
            continue
        try:
            with open(path, encoding="ascii") as f:
                on = f.read().strip() == "1"
        except OSError:
            on = False
        if not on:
            off.append(family)
    return off


def require_forwarding(config: Config) -> None:
    """A one-line :class:`ConfigError` when a door has NAT targets of a family that this
    host does not forward: their DNATed packets would go nowhere."""
    for family in forwarding_off(config):
        sysctl = "net.ipv4.ip_forward" if family == 4 else "net.ipv6.conf.all.forwarding"
        doors = ", ".join(d.name for d in config.doors if d.spa is not None
                          and any(_family(h) == family for h, _ in d.spa.nat_targets))
        raise ConfigError(f"{config.path}: door {doors}: NAT access (spa_nat, spa_force_nat) needs "
                          f"IPv{family} forwarding, which is off here: sysctl -w {sysctl}=1 (and keep "
                          "it in /etc/sysctl.d)")
