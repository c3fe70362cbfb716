"""Refuse a ruleset through which a protected or knock port could be reached unverdicted.

Checked before anything is installed (on the rendered text) and again after (on what the
kernel holds, admin rules included): no queue rule for our queues may carry
``--queue-bypass`` or ``--fail-open``; no rule of ours that returns or accepts before the
queue may match a knock or protected port; our jump must be the first rule of its chain;
with several workers, a packet that no shard rule took must be dropped. The prefilter's
chain may only return (to the queue rules after its jump) or drop: it accepts nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gatekeeper.model import PROTO_NAMES, TCP, UDP, Config
from gatekeeper.netfilter.prefilter import CHAIN_PRE
from gatekeeper.netfilter.render import CHAIN_FWD, CHAIN_IN, CHAINS, Ruleset

_DPORTS = re.compile(r"-p (tcp|udp) -m multiport --dports ([\d,:]+)")
_QUEUE = re.compile(r"-j NFQUEUE --queue-num (\d+)")


def _target_of(line: str) -> str:
    """The target of a rule (restore or save format); "" for a rule with none (it counts
    and goes on), the chain for a ``-g`` (goto)."""
    for flag in (" -j ", " -g "):
        if flag in line:
            return line.rsplit(flag, 1)[-1].split(" ", 1)[0]
    return ""


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


def _queue_bypass(config: Config, family: int, lines: list[str]) -> list[str]:
    """Queue rules to our queues (ours or anyone's) that accept when no worker listens."""
    ours = set(config.settings.queues)
    problems = []
    for line in lines:
        m = _QUEUE.search(line)
        if m and int(m.group(1)) in ours and ("--queue-bypass" in line or "--fail-open" in line):
            problems.append(f"IPv{family}: '{line}' lets packets through when no worker listens")
    return problems


def audit_text(config: Config, family: int, text: str) -> list[str]:
    """Problems with one family's rules (restore or save format); empty when sound."""
    sensitive = _sensitive(config)
    lines = [ln for ln in text.splitlines() if ln.startswith(("-A ", "-I "))]
    problems = _queue_bypass(config, family, lines)
    for chain in CHAINS:
        body = [ln for ln in lines if ln.startswith(f"-A {chain} ")]
        if not body:
            continue
        if chain == CHAIN_PRE:  # its RETURNs go back to the queue rules that follow its jumps
            problems += [f"IPv{family}: '{line}' accepts in {CHAIN_PRE}, before the queue"
                         for line in body if _target_of(line) not in ("RETURN", "DROP", "SET", "")]
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
        sharded = any(_QUEUE.search(ln) or "-j HMARK" in ln for ln in body)  # (spa_nat alone: none)
        if config.settings.workers > 1 and sharded and not body[-1].endswith("-j DROP"):
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


# -- while running: what other programs did to the ruleset --------------------------------

# Targets that never accept a packet: it is dropped, or it goes on to the next rule.
_NON_ACCEPTING = frozenset({
    "DROP", "REJECT", "LOG", "NFLOG", "ULOG", "SET", "AUDIT", "TCPMSS", "MARK", "CONNMARK",
    "CONNSECMARK", "SECMARK", "CLASSIFY", "IDLETIMER", "LED",
})
_TARGET = re.compile(r" -([jg]) (\S+)")
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
# ip6tables-save prints ICMPv6 types by number; render.py writes some by name.
_ICMP6_NUMBERS = {"router-solicitation": "133", "router-advertisement": "134",
                  "neighbour-solicitation": "135", "neighbour-advertisement": "136",
                  "redirect": "137"}
_ICMP6_TYPE = re.compile(r"(--icmpv6-type )([a-z-]+)")
_MAX_DEPTH = 32
# A rule for these states alone decides nothing gatekeeper guards: its chain returns them.
_STATE = re.compile(r"(! )?--(?:ct)?state (\S+)")
_OLD_FLOWS = frozenset({"RELATED", "ESTABLISHED"})


@dataclass(frozen=True)
class Finding:
    """One way the kernel's ruleset lets guarded traffic past gatekeeper, as one line."""

    family: int
    text: str
    repairable: bool  # swapping our rendered ruleset back in closes it


def _normal(line: str) -> str:
    return _ICMP6_TYPE.sub(lambda m: m.group(1) + _ICMP6_NUMBERS.get(m.group(2), m.group(2)), line)


def _parse(text: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(policy of each built-in chain, rules of every chain as ``-A CHAIN spec``) of one table."""
    policies: dict[str, str] = {}
    chains: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith(":"):
            name, _, rest = line[1:].partition(" ")
            chains.setdefault(name, [])
            if not rest.startswith("-"):
                policies[name] = rest.split(" ", 1)[0]
        elif line.startswith("-A "):
            chains.setdefault(line[3:].split(" ", 1)[0], []).append(_normal(line))
        elif line.startswith("-I "):  # rendered: "-I INPUT 1 spec"
            _, chain, _, spec = line.split(" ", 3)
            chains.setdefault(chain, []).append(_normal(f"-A {chain} {spec}"))
    return policies, chains


def _accepting(rule: str, chain: str, policies: dict[str, str], chains: dict[str, list[str]],
               depth: int = 0) -> str | None:
    """The rule, this one or one in a chain it jumps to, that may accept a packet reaching
    ``rule``; None when it surely cannot (it drops, rejects, or carries on to the next rule).
    Unknown targets, gotos, other programs' queues and chains nested too deep may accept."""
    targets = _TARGET.findall(_QUOTED.sub('""', rule))
    if not targets:
        return None  # a rule without a target only counts
    kind, target = targets[-1]
    if target in _NON_ACCEPTING or target in CHAINS:
        return None  # our own chains decide as gatekeeper does
    if any(not neg and set(states.split(",")) <= _OLD_FLOWS for neg, states in _STATE.findall(rule)):
        return None  # established or related flows only, which GATEKEEPER-IN/-FWD return too
    if target == "RETURN":  # in a built-in chain: its policy decides
        return rule if chain in policies and policies[chain] == "ACCEPT" else None
    if kind == "j" and target in chains and target not in policies and depth < _MAX_DEPTH:
        for sub in chains[target]:  # a RETURN there (or its end) comes back here
            found = _accepting(sub, target, policies, chains, depth + 1)
            if found is not None:
                return found
        return None
    return rule


def tampering(config: Config, family: int, saved: str, rendered: str) -> list[Finding]:
    """How the running ruleset (``iptables-save -t filter``) differs from what gatekeeper
    installed (``rendered``) in a way that can let guarded traffic skip the queue: a rule
    ahead of our jump that may accept, a jump missing, our chains missing or changed, a
    queue rule with a bypass flag. A rule ahead that cannot accept (fail2ban's REJECT
    chains, a DROP, a LOG) is left alone."""
    policies, chains = _parse(saved)
    _, wanted = _parse(rendered)
    v = f"IPv{family}"
    found: list[Finding] = []
    for chain in CHAINS:
        if chain not in wanted:
            continue
        if chain not in chains:
            found.append(Finding(family, f"{v}: chain {chain} is missing", True))
            continue
        have, want = chains[chain], wanted[chain]
        if have != want:
            i = next((i for i, (h, w) in enumerate(zip(have, want, strict=False)) if h != w), None)
            what = (f"'{have[i]}' where gatekeeper has '{want[i]}'" if i is not None
                    else f"{len(have)} rules where gatekeeper installed {len(want)}")
            found.append(Finding(family, f"{v}: chain {chain} was changed: {what}", True))
    for builtin in ("INPUT", "FORWARD"):
        jumps = [r for r in wanted.get(builtin, []) if r.rsplit(" -j ", 1)[-1] in CHAINS]
        if not jumps:
            continue
        rules = chains.get(builtin, [])
        for jump in jumps:
            if jump not in rules:
                found.append(Finding(family, f"{v}: our jump '{jump}' is missing from {builtin}",
                                     True))
        last = max((i for i, r in enumerate(rules) if r in jumps), default=0)
        for rule in rules[:last]:
            if rule in jumps:
                continue
            via = _accepting(rule, builtin, policies, chains)
            if via is not None:
                how = "" if via == rule else f" (through '{via}')"
                found.append(Finding(family, f"{v}: '{rule}' ahead of gatekeeper's jump in "
                                     f"{builtin} may accept guarded traffic{how}", True))
    lines = [ln for ln in saved.splitlines() if ln.startswith("-A ")]
    found += [Finding(family, p, False) for p in _queue_bypass(config, family, lines)]
    return found
