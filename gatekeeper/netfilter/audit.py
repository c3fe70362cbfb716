"""Refuse a ruleset through which a protected or knock port could be reached unverdicted.

Checked before anything is installed (on the rendered text) and again after (on what the
kernel holds, admin rules included): no queue rule for our queues may carry
``--queue-bypass`` or ``--fail-open``; no rule of ours that returns or accepts before the
queue may match a knock or protected port; our jump must be the first rule of its chain;
with several workers, a packet that no shard rule took must be dropped.
"""

from __future__ import annotations

import re

from gatekeeper.config import PROTO_NAMES, TCP, UDP, Config
from gatekeeper.netfilter.render import CHAIN_FWD, CHAIN_IN, CHAINS, Ruleset

_DPORTS = re.compile(r"-p (tcp|udp) -m multiport --dports ([\d,:]+)")
_QUEUE = re.compile(r"-j NFQUEUE --queue-num (\d+)")


def _ports(spec: str) -> set[int]:
    out: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition(":")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def _sensitive(config: Config) -> dict[str, set[int]]:
    ports: dict[str, set[int]] = {"tcp": set(), "udp": set()}
    for door in config.doors:
        for step in (*door.sequence, *door.close_sequence, *door.opens):
            if step.proto in (TCP, UDP):
                ports[PROTO_NAMES[step.proto]].add(step.port)
    return ports


def audit_text(config: Config, family: int, text: str) -> list[str]:
    """Problems with one family's rules (restore or save format); empty when sound."""
    problems: list[str] = []
    ours = set(config.settings.queues)
    sensitive = _sensitive(config)
    lines = [ln for ln in text.splitlines() if ln.startswith(("-A ", "-I "))]
    for line in lines:
        m = _QUEUE.search(line)
        if m and int(m.group(1)) in ours and ("--queue-bypass" in line or "--fail-open" in line):
            problems.append(f"IPv{family}: '{line}' lets packets through when no worker listens")
    for chain in CHAINS:
        body = [ln for ln in lines if ln.startswith(f"-A {chain} ")]
        if not body:
            continue
        for line in body:
            if _QUEUE.search(line) or "-j HMARK" in line:
                break  # from here on packets are queued
            m = _DPORTS.search(line)
            if m and ("-j RETURN" in line or "-j ACCEPT" in line) and "--match-set" not in line:
                leaked = sorted(_ports(m.group(2)) & sensitive[m.group(1)])
                if leaked:
                    problems.append(f"IPv{family}: '{line}' lets {m.group(1)} port(s) "
                                    f"{','.join(map(str, leaked))} past the queue")
        if config.settings.workers > 1 and not body[-1].endswith("-j DROP"):
            problems.append(f"IPv{family}: {chain} does not end in DROP: a packet no shard took "
                            "would return to the admin's rules")
    for builtin, chain in (("INPUT", CHAIN_IN), ("FORWARD", CHAIN_FWD)):
        rules = [ln for ln in lines if ln.startswith((f"-A {builtin} ", f"-I {builtin} "))]
        jumps = [i for i, ln in enumerate(rules) if ln.endswith(f"-j {chain}")]
        if jumps and jumps != list(range(len(jumps))):
            problems.append(f"IPv{family}: rules before the jump to {chain} in {builtin} decide "
                            "packets before gatekeeper sees them")
    return problems


def audit(config: Config, ruleset: Ruleset) -> list[str]:
    return audit_text(config, 4, ruleset.ipv4) + audit_text(config, 6, ruleset.ipv6)
