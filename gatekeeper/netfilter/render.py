"""Render the exact ruleset gatekeeper installs, as text an admin can read first.

Three pieces, each in the format of the tool that loads it:

* ``ipset``: the grant sets (``ipset restore`` format), created before the rules;
* ``ipv4`` / ``ipv6``: ``iptables-restore --noflush`` input that adds two chains of
  our own and one jump per guarded interface at the top of INPUT (and FORWARD when a
  door guards a host behind the gateway). Nothing the admin wrote is flushed or moved.

Packet path inside ``GATEKEEPER-IN``: established/related, ICMPv6 neighbour discovery
and public ports return to the admin's rules untouched; a source holding a grant for
the destination port is accepted by the kernel set; everything else is queued to the
worker, with no ``--queue-bypass``: if no worker listens, it is dropped (fail closed).
``GATEKEEPER-FWD`` does the same for new packets to a door's ``host`` behind the gateway;
other forwarded traffic returns to the admin's rules. With ``prefilter = true`` both jump
to ``GATEKEEPER-PRE`` (:mod:`gatekeeper.netfilter.prefilter`) right before their queue
rules: what cannot change a decision is dropped there, in the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

from gatekeeper.model import ICMP, PROTO_NAMES, TCP, UDP, Config, Port
from gatekeeper.netfilter import nat, prefilter
from gatekeeper.netfilter.nat import CHAIN_NAT
from gatekeeper.netfilter.prefilter import CHAIN_PRE

CHAIN_IN = "GATEKEEPER-IN"
CHAIN_FWD = "GATEKEEPER-FWD"
CHAINS = (CHAIN_IN, CHAIN_FWD, CHAIN_PRE)
TABLES = (("nat", (CHAIN_NAT,)), ("filter", CHAINS))  # our chains by table, in restore order
COMMENT = "gatekeeper"
# Grant sets: hash:ip,port for ports on the gateway, hash:ip,port,ip for hosts behind it.
SET_IN = {4: "gatekeeper-in4", 6: "gatekeeper-in6"}
SET_FWD = {4: "gatekeeper-fwd4", 6: "gatekeeper-fwd6"}
SET_MAXELEM = 65536
# HMARK writes SHARD_MARK + worker index into the packet mark of queued packets.
SHARD_MARK = 0x474B0000
# Neighbour discovery and multicast listener discovery (130-132, 143) must never be
# queued, or IPv6 on the guarded link breaks.
_ND_TYPES = (
    "router-solicitation", "router-advertisement", "neighbour-solicitation",
    "neighbour-advertisement", "redirect", "130", "131", "132", "143",
)


@dataclass(frozen=True)
class Ruleset:
    ipset: str
    ipv4: str
    ipv6: str

    def text(self) -> str:
        return (
            "# --- grant sets: ipset restore -exist ---\n" + self.ipset
            + "# --- IPv4: iptables-restore --noflush ---\n" + self.ipv4
            + "# --- IPv6: ip6tables-restore --noflush ---\n" + self.ipv6
        )


def _ports(steps: list[Port], proto: int) -> list[str]:
    return [str(s.port) for s in steps if s.proto == proto]


def _multiport(ports: list[str]) -> list[str]:
    """Split into chunks that fit multiport's limit of 15 ports a rule."""
    return [",".join(ports[i : i + 15]) for i in range(0, len(ports), 15)]


def _jumps(config: Config, builtin: str, chain: str) -> list[str]:
    ifaces = config.settings.interfaces
    matches = [f"-i {i}" for i in ifaces] if ifaces else ["! -i lo"]
    return [
        f"-I {builtin} {n} {m} -m comment --comment {COMMENT} -j {chain}"
        for n, m in enumerate(matches, start=1)
    ]


def _queue_rules(config: Config, family: int, chain: str, match: str = "") -> list[str]:
    """Queue rules for one chain. With several workers, HMARK hashes the source address
    alone (not the protocol, as --queue-balance would), so every packet of one source,
    tcp, udp or icmp, reaches the same worker and its knock state. A packet that no
    rule queued is dropped, never returned to the admin's rules."""
    settings = config.settings
    a = f"-A {chain}" + (f" {match}" if match else "")
    if settings.workers == 1:
        return [f"{a} -j NFQUEUE --queue-num {settings.queue}"]
    prefix = 32 if family == 4 else 128
    # Every SPA datagram goes to the first worker, whatever its source: one replay cache
    # then sees them all, so a captured packet replayed from another address (to another
    # worker's shard) is still a replay.
    # (so do the SPA-sized packets of the other transports, spa_transports)
    spa_ports = sorted({d.spa.port for d in config.doors
                        if d.spa is not None and "udp" in d.spa.transports})
    first = f"-j NFQUEUE --queue-num {settings.queue}"
    lines = [f"{a} -p udp -m udp --dport {port} {first}" for port in spa_ports]
    lines += [f"{a} {m} {first}" for m in prefilter.spa_matches(config, family)]
    lines += [f"{a} {m} {first}" for m in _one_time_matches(config, family)]
    lines += [
        f"{a} -j HMARK --hmark-src-prefix {prefix} --hmark-rnd 0x{config.seed:08x} "
        f"--hmark-mod {settings.workers} --hmark-offset {SHARD_MARK}"
    ]
    lines += [
        f"{a} -m mark --mark 0x{SHARD_MARK + i:x} -j NFQUEUE --queue-num {q}"
        for i, q in enumerate(settings.queues)
    ]
    lines.append(f"{a} -j DROP")
    return lines


def _one_time_matches(config: Config, family: int) -> list[str]:
    """The ports of every one-time line, used ones too, go to the first worker: the one
    worker that marks a line used then refuses it at once, whichever source replays it
    (a used line's ports stay routed, so that no worker that has not reloaded yet sees
    it). So do the ports the door opens: the client's first SYN then waits in the same
    queue behind its last knock, which is granted (after the line is marked) first.
    Ports another door knocks or opens keep to the source's worker."""
    others = {s.key for d in config.doors if d.one_time is None
              for s in (*d.sequence, *d.close_sequence, *d.opens)}
    steps = {s for d in config.doors if d.one_time is not None
             for s in (*(s for _, line in d.one_time.lines for s in line), *d.one_time.used,
                       *d.opens)
             if s.key not in others}
    ports = sorted(steps, key=lambda s: (s.proto, s.port))
    out = [f"-p {PROTO_NAMES[proto]} -m multiport --dports {chunk}"
           for proto in (TCP, UDP) for chunk in _multiport(_ports(ports, proto))]
    if any(s.proto == ICMP for s in steps):
        out.append("-p icmp -m icmp --icmp-type echo-request" if family == 4
                   else "-p ipv6-icmp -m icmp6 --icmpv6-type echo-request")
    return out


def _render_nat(config: Config, family: int) -> list[str]:
    """The nat table's part (spa_nat targets of the family), before the filter table's."""
    rules = nat.render_rules(config, family)
    if not rules:
        return []
    return ["*nat", f":{CHAIN_NAT} - [0:0]", *_jumps(config, "PREROUTING", CHAIN_NAT), *rules,
            "COMMIT"]


def render_family(config: Config, family: int) -> str:
    fwd_doors = [d for d in config.doors if d.host is not None and d.host.version == family]
    pre = config.settings.prefilter
    lines = _render_nat(config, family)
    nat_forward = bool(lines)  # DNATed packets are accepted by the forward grant set
    lines += ["*filter", f":{CHAIN_IN} - [0:0]"]
    if fwd_doors or nat_forward:
        lines.append(f":{CHAIN_FWD} - [0:0]")
    if pre:
        lines.append(f":{CHAIN_PRE} - [0:0]")
    lines += _jumps(config, "INPUT", CHAIN_IN)
    if fwd_doors or nat_forward:
        lines += _jumps(config, "FORWARD", CHAIN_FWD)
    a = f"-A {CHAIN_IN}"
    lines.append(f"{a} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN")
    if family == 6:
        lines += [f"{a} -p ipv6-icmp -m icmp6 --icmpv6-type {t} -j RETURN" for t in _ND_TYPES]
    public = list(config.settings.public)
    for proto in (TCP, UDP):
        for chunk in _multiport(_ports(public, proto)):
            lines.append(f"{a} -p {PROTO_NAMES[proto]} -m multiport --dports {chunk} -j RETURN")
    lines.append(f"{a} -m set --match-set {SET_IN[family]} src,dst -j ACCEPT")
    if pre:
        lines.append(f"{a} -j {CHAIN_PRE}")
    lines += _queue_rules(config, family, CHAIN_IN)
    if fwd_doors or nat_forward:
        # A protected host behind the gateway is as invisible as the gateway itself:
        # every new packet to it is verdicted, so knocks may be sent to its address too.
        f = f"-A {CHAIN_FWD}"
        lines.append(f"{f} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN")
        for proto in (TCP, UDP):
            for chunk in _multiport(_ports(public, proto)):
                lines.append(f"{f} -p {PROTO_NAMES[proto]} -m multiport --dports {chunk} -j RETURN")
        lines.append(f"{f} -m set --match-set {SET_FWD[family]} src,dst,dst -j ACCEPT")
        prefix = 32 if family == 4 else 128
        for host in dict.fromkeys(str(d.host) for d in fwd_doors):
            if pre:
                lines.append(f"{f} -d {host}/{prefix} -j {CHAIN_PRE}")
            lines += _queue_rules(config, family, CHAIN_FWD, f"-d {host}/{prefix}")
    if pre:
        lines += prefilter.render_chain(config, family)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def render_sets(config: Config | None = None) -> str:
    """The grant sets; with the prefilter, its progress and scanner sets too."""
    lines = []
    for family, inet in ((4, "inet"), (6, "inet6")):
        opts = f"family {inet} hashsize 1024 maxelem {SET_MAXELEM} timeout 0 comment"
        lines.append(f"create {SET_IN[family]} hash:ip,port {opts}")
        lines.append(f"create {SET_FWD[family]} hash:ip,port,ip {opts}")
    if config is not None:
        lines += nat.render_sets(config)
    if config is not None and config.settings.prefilter:
        lines += prefilter.render_sets()
    return "\n".join(lines) + "\n"


def render(config: Config) -> Ruleset:
    return Ruleset(ipset=render_sets(config), ipv4=render_family(config, 4), ipv6=render_family(config, 6))


def _sections(text: str) -> dict[str, list[str]]:
    """The lines of each table (``*TABLE`` through ``COMMIT``, both left out) of save or
    restore text."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("*"):
            current = out.setdefault(line[1:].strip(), [])
        elif line == "COMMIT":
            current = None
        elif current is not None:
            current.append(line)
    return out


def _removal(saved: list[str], chains: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(deletes of every jump to ``chains``, ``chains`` present) in one table's lines."""
    deletes: list[str] = []
    ours: list[str] = []
    for line in saved:
        if line.startswith(":") and line[1:].split(" ", 1)[0] in chains:
            ours.append(line[1:].split(" ", 1)[0])
        elif line.startswith("-A "):
            chain, _, spec = line[3:].partition(" ")
            if chain not in chains and any(spec.endswith(f"-j {c}") for c in chains):
                deletes.append(f"-D {chain} {spec}")
    return deletes, ours


def render_removal(saved: str) -> str | None:
    """Given ``iptables-save`` output, the restore input that removes every jump to our
    chains and the chains themselves, table by table (nat, then filter; one transaction);
    None when nothing of ours is installed."""
    sections = _sections(saved)
    out = []
    for table, chains in TABLES:
        deletes, ours = _removal(sections.get(table, []), chains)
        if deletes or ours:
            out += [f"*{table}", *deletes, *(f"-F {c}" for c in ours), *(f"-X {c}" for c in ours),
                    "COMMIT"]
    return "\n".join(out) + "\n" if out else None


def render_swap(saved: str, text: str) -> str:
    """Given ``iptables-save`` output and a family's rendered rules, one restore
    transaction that replaces whatever of ours is installed with the new rules, table by
    table (a plain install when nothing is): no moment where a guarded packet meets
    neither. A table of ours that the new rules no longer have is removed."""
    have, want = _sections(saved), _sections(text)
    lines = []
    for table, chains in TABLES:
        deletes, present_list = _removal(have.get(table, []), chains)
        present = set(present_list)
        rules = want.get(table, [])
        wanted = {c for c in chains if any(ln.startswith(f":{c} ") for ln in rules)}
        if table != "filter" and not present and not rules:
            continue
        lines += [f"*{table}", *deletes]
        lines += [f"-F {c}" for c in sorted(present)]
        lines += [f"-X {c}" for c in sorted(present - wanted)]
        lines += [ln for ln in rules
                  if not (ln.startswith(":") and ln[1:].split(" ", 1)[0] in present)]
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"
