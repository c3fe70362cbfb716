"""gatekeeper.netfilter.render: the rules text we install and the text that removes it.

No iptables here: a small model of a filter table applies restore input the way
``iptables-restore --noflush`` does and prints it back the way ``iptables-save`` does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gatekeeper.config.load import loads
from gatekeeper.model import Config
from gatekeeper.netfilter.render import (
    CHAIN_FWD,
    CHAIN_IN,
    SET_FWD,
    SET_IN,
    render,
    render_family,
    render_removal,
    render_sets,
)

JUMP = "-m comment --comment gatekeeper -j"
ND_TYPES = (
    "router-solicitation", "router-advertisement", "neighbour-solicitation",
    "neighbour-advertisement", "redirect",
)
HOST4, HOST4B, HOST6 = "198.51.100.10", "198.51.100.20", "2001:db8:2::10"


def config(
    *,
    interfaces: tuple[str, ...] = ("eth0",),
    public: tuple[str, ...] = (),
    queue: int = 0,
    workers: int = 1,
    hosts: tuple[str | None, ...] = (None,),
) -> Config:
    """One door per entry of ``hosts`` (None: a port on the gateway itself)."""
    lines = [
        "[gatekeeper]",
        f"queue = {queue}",
        f"workers = {workers}",
        f"interfaces = {json.dumps(list(interfaces))}",
        f"public = {json.dumps(list(public))}",
    ]
    for i, host in enumerate(hosts):
        lines += [
            "[[door]]",
            f'name = "door{i}"',
            f'sequence = ["{7000 + i}:udp", "{8000 + i}"]',
            f'opens = ["{2200 + i}"]',
        ]
        if host is not None:
            lines.append(f'host = "{host}"')
    return loads("\n".join(lines) + "\n", "test.toml")


def rules(text: str, chain: str) -> list[str]:
    """The rules appended to ``chain``, in order, without the ``-A chain`` prefix."""
    prefix = f"-A {chain} "
    return [line[len(prefix):] for line in text.splitlines() if line.startswith(prefix)]


def jumps(text: str, builtin: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"-I {builtin} ")]


def index(chain_rules: list[str], needle: str) -> int:
    hits = [i for i, rule in enumerate(chain_rules) if needle in rule]
    assert len(hits) == 1, (needle, chain_rules)
    return hits[0]


# -- the jumps ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
def test_one_jump_per_interface_at_the_top_of_input(family: int) -> None:
    text = render_family(config(interfaces=("eth0", "wan1", "ppp0")), family)
    assert jumps(text, "INPUT") == [
        f"-I INPUT 1 -i eth0 {JUMP} {CHAIN_IN}",
        f"-I INPUT 2 -i wan1 {JUMP} {CHAIN_IN}",
        f"-I INPUT 3 -i ppp0 {JUMP} {CHAIN_IN}",
    ]
    assert "! -i lo" not in text


@pytest.mark.parametrize("family", [4, 6])
def test_no_interfaces_guards_all_but_loopback(family: int) -> None:
    text = render_family(config(interfaces=()), family)
    assert jumps(text, "INPUT") == [f"-I INPUT 1 ! -i lo {JUMP} {CHAIN_IN}"]


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("hosts", [(None,), (HOST4, HOST6)])
def test_restore_input_only_adds_to_what_the_admin_has(family: int, hosts: tuple[str | None, ...]) -> None:
    text = render_family(config(interfaces=("eth0", "eth1"), hosts=hosts), family)
    lines = text.splitlines()
    assert lines[0] == "*filter" and lines[-1] == "COMMIT" and text.endswith("COMMIT\n")
    ours = {CHAIN_IN, CHAIN_FWD}
    declared = [line for line in lines if line.startswith(":")]
    # only our own chains are declared: ":INPUT ACCEPT" would reset the admin's policy
    assert all(line.split()[0][1:] in ours and line.endswith(" - [0:0]") for line in declared)
    for line in lines[1:-1]:
        if line.startswith(":"):
            continue
        verb, chain = line.split()[:2]
        assert verb in ("-A", "-I"), line
        if verb == "-A":
            assert chain in ours, line
        else:
            assert chain in ("INPUT", "FORWARD") and line.split()[-1] in ours, line


# -- GATEKEEPER-IN ------------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
def test_input_chain_order(family: int) -> None:
    text = render_family(config(public=("80", "443", "53:udp"), queue=7), family)
    chain = rules(text, CHAIN_IN)
    assert chain[0] == "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
    tcp = index(chain, "-p tcp -m multiport --dports 80,443 -j RETURN")
    udp = index(chain, "-p udp -m multiport --dports 53 -j RETURN")
    accept = chain.index(f"-m set --match-set {SET_IN[family]} src,dst -j ACCEPT")
    assert 0 < tcp < accept and 0 < udp < accept
    # with one worker, the grant check is followed by the queue rule, and it is the last
    assert chain[accept + 1:] == ["-j NFQUEUE --queue-num 7"]


@pytest.mark.parametrize("workers", [1, 2, 4])
@pytest.mark.parametrize("family", [4, 6])
def test_unmatched_packets_are_queued_and_never_bypass(family: int, workers: int) -> None:
    cfg = config(public=("80",), queue=100, workers=workers, hosts=(None, HOST4, HOST6))
    text = render_family(cfg, family)
    assert "bypass" not in render(cfg).text() and "fail-open" not in render(cfg).text()
    for chain in (CHAIN_IN, CHAIN_FWD):
        chain_rules = rules(text, chain)
        queued = [r for r in chain_rules if "NFQUEUE" in r]
        assert queued, chain
        accept = index(chain_rules, "-m set --match-set")
        # nothing after the grant check returns or accepts: fail closed
        assert accept < chain_rules.index(queued[0])
        after = chain_rules[accept + 1:]
        assert not [r for r in after if "RETURN" in r or "ACCEPT" in r]
        numbers = {int(r.split("--queue-num ")[1].split()[0]) for r in queued}
        assert numbers == set(range(100, 100 + workers))
    # for the gateway itself, no packet leaves GATEKEEPER-IN without a verdict
    last = rules(text, CHAIN_IN)[-1]
    assert last in ("-j NFQUEUE --queue-num 100", "-j DROP")


def test_neighbour_discovery_returns_in_ipv6_only() -> None:
    ruleset = render(config())
    chain = rules(ruleset.ipv6, CHAIN_IN)
    queue = index(chain, "NFQUEUE")
    for kind in ND_TYPES:
        nd = chain.index(f"-p ipv6-icmp -m icmp6 --icmpv6-type {kind} -j RETURN")
        assert 0 < nd < queue
    assert "icmp6" not in ruleset.ipv4 and "ipv6-icmp" not in ruleset.ipv4


def test_no_public_ports_no_multiport() -> None:
    ruleset = render(config(public=()))
    assert "multiport" not in ruleset.ipv4 and "multiport" not in ruleset.ipv6


@pytest.mark.parametrize("count", [1, 14, 15, 16, 30, 31, 32])
def test_public_ports_split_into_rules_of_15(count: int) -> None:
    ports = [str(1000 + 3 * i) for i in range(count)]
    text = render_family(config(public=tuple(ports)), 4)
    chunks = [
        r.split("--dports ")[1].split()[0].split(",") for r in rules(text, CHAIN_IN) if "multiport" in r
    ]
    assert len(chunks) == -(-count // 15)
    assert all(1 <= len(c) <= 15 for c in chunks)
    assert [p for c in chunks for p in c] == ports


def test_public_tcp_and_udp_get_their_own_rules() -> None:
    ports = (*(f"{2000 + i}:udp" for i in range(16)), "80")
    chain = rules(render_family(config(public=ports), 6), CHAIN_IN)
    udp = [r for r in chain if r.startswith("-p udp -m multiport")]
    tcp = [r for r in chain if r.startswith("-p tcp -m multiport")]
    assert tcp == ["-p tcp -m multiport --dports 80 -j RETURN"]
    assert len(udp) == 2


# -- GATEKEEPER-FWD -----------------------------------------------------------------------


def test_no_forward_chain_without_a_host() -> None:
    ruleset = render(config(hosts=(None, None)))
    for text in (ruleset.ipv4, ruleset.ipv6):
        assert CHAIN_FWD not in text and "FORWARD" not in text


def test_forward_chain_for_an_ipv4_host() -> None:
    ruleset = render(config(interfaces=("eth0", "eth1"), public=("80",), hosts=(None, HOST4), queue=3))
    v4 = ruleset.ipv4
    assert f":{CHAIN_FWD} - [0:0]" in v4.splitlines()
    assert jumps(v4, "FORWARD") == [
        f"-I FORWARD 1 -i eth0 {JUMP} {CHAIN_FWD}",
        f"-I FORWARD 2 -i eth1 {JUMP} {CHAIN_FWD}",
    ]
    assert rules(v4, CHAIN_FWD) == [
        "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        "-p tcp -m multiport --dports 80 -j RETURN",
        f"-m set --match-set {SET_FWD[4]} src,dst,dst -j ACCEPT",
        f"-d {HOST4}/32 -j NFQUEUE --queue-num 3",
    ]
    # the IPv6 table has no IPv4 host to guard
    assert CHAIN_FWD not in ruleset.ipv6 and "FORWARD" not in ruleset.ipv6


def test_forward_chain_for_an_ipv6_host() -> None:
    ruleset = render(config(interfaces=(), hosts=(HOST6,)))
    assert jumps(ruleset.ipv6, "FORWARD") == [f"-I FORWARD 1 ! -i lo {JUMP} {CHAIN_FWD}"]
    chain = rules(ruleset.ipv6, CHAIN_FWD)
    assert chain[0] == "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
    assert chain[-2:] == [
        f"-m set --match-set {SET_FWD[6]} src,dst,dst -j ACCEPT",
        f"-d {HOST6}/128 -j NFQUEUE --queue-num 0",
    ]
    assert not [r for r in chain if "icmpv6-type" in r]
    assert CHAIN_FWD not in ruleset.ipv4 and "FORWARD" not in ruleset.ipv4
    # the gateway's own chain is there all the same
    assert rules(ruleset.ipv4, CHAIN_IN)


def test_one_queue_rule_per_distinct_host() -> None:
    text = render_family(config(hosts=(HOST4, HOST4B, HOST4, HOST6)), 4)
    queued = [r for r in rules(text, CHAIN_FWD) if "NFQUEUE" in r]
    assert queued == [
        f"-d {HOST4}/32 -j NFQUEUE --queue-num 0",
        f"-d {HOST4B}/32 -j NFQUEUE --queue-num 0",
    ]


# -- sets and the whole ruleset -----------------------------------------------------------


def test_sets() -> None:
    lines = render_sets().splitlines()
    names = {line.split()[1]: line.split()[2] for line in lines}
    assert names == {
        SET_IN[4]: "hash:ip,port", SET_IN[6]: "hash:ip,port",
        SET_FWD[4]: "hash:ip,port,ip", SET_FWD[6]: "hash:ip,port,ip",
    }
    for line in lines:
        assert line.startswith("create ")
        family = "inet6" if line.split()[1].endswith("6") else "inet"
        assert f" family {family} " in line and " timeout 0 " in line and line.endswith(" comment")


def test_ruleset_text_has_all_three_parts_in_load_order() -> None:
    ruleset = render(config())
    text = ruleset.text()
    assert text.index(ruleset.ipset) < text.index(ruleset.ipv4) < text.index(ruleset.ipv6)
    assert ruleset.ipv4 == render_family(config(), 4) and ruleset.ipv6 == render_family(config(), 6)


# -- removal ------------------------------------------------------------------------------

SAVED = """\
# Generated by iptables-save v1.8.9 (nf_tables) on Mon Jan  1 00:00:00 2024
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:ADMIN-SSH - [0:0]
:GATEKEEPER-FWD - [0:0]
:GATEKEEPER-IN - [0:0]
:GATEKEEPER-INX - [0:0]
-A INPUT -i eth0 -m comment --comment gatekeeper -j GATEKEEPER-IN
-A INPUT -i eth1 -m comment --comment gatekeeper -j GATEKEEPER-IN
-A INPUT -i lo -j ACCEPT
-A INPUT -s 198.51.100.0/24 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -j ADMIN-SSH
-A INPUT -j GATEKEEPER-INX
-A INPUT -m comment --comment "-j GATEKEEPER-IN" -j LOG
-A FORWARD -i eth0 -m comment --comment gatekeeper -j GATEKEEPER-FWD
-A FORWARD -p tcp -m tcp --dport 25 -j DROP
-A ADMIN-SSH -s 203.0.113.0/24 -j ACCEPT
-A GATEKEEPER-FWD -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
-A GATEKEEPER-FWD -d 198.51.100.10/32 -j NFQUEUE --queue-num 0
-A GATEKEEPER-IN -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
-A GATEKEEPER-IN -m set --match-set gatekeeper-in4 src,dst -j ACCEPT
-A GATEKEEPER-IN -j NFQUEUE --queue-num 0
-A GATEKEEPER-INX -j RETURN
COMMIT
# Completed on Mon Jan  1 00:00:00 2024
"""


def test_removal_of_an_installed_ruleset() -> None:
    assert render_removal(SAVED) == (
        "*filter\n"
        "-D INPUT -i eth0 -m comment --comment gatekeeper -j GATEKEEPER-IN\n"
        "-D INPUT -i eth1 -m comment --comment gatekeeper -j GATEKEEPER-IN\n"
        "-D FORWARD -i eth0 -m comment --comment gatekeeper -j GATEKEEPER-FWD\n"
        "-F GATEKEEPER-FWD\n"
        "-F GATEKEEPER-IN\n"
        "-X GATEKEEPER-FWD\n"
        "-X GATEKEEPER-IN\n"
        "COMMIT\n"
    )


def test_removal_of_chains_left_without_jumps() -> None:
    saved = "*filter\n:INPUT ACCEPT [0:0]\n:GATEKEEPER-IN - [0:0]\n-A GATEKEEPER-IN -j DROP\nCOMMIT\n"
    assert render_removal(saved) == "*filter\n-F GATEKEEPER-IN\n-X GATEKEEPER-IN\nCOMMIT\n"


@pytest.mark.parametrize(
    "saved",
    [
        "",
        "# Generated by iptables-save\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n"
        ":OUTPUT ACCEPT [0:0]\nCOMMIT\n",
        "*filter\n:INPUT DROP [0:0]\n:GATEKEEPER-INX - [0:0]\n:MY-GATEKEEPER-IN - [0:0]\n"
        "-A INPUT -j GATEKEEPER-INX\n-A INPUT -j MY-GATEKEEPER-IN\n"
        "-A INPUT -m comment --comment gatekeeper -j ACCEPT\nCOMMIT\n",
    ],
    ids=["empty", "pristine", "look-alikes"],
)
def test_nothing_of_ours_to_remove(saved: str) -> None:
    assert render_removal(saved) is None


class Table:
    """Just enough of a netfilter filter table to apply restore input and save it again."""

    BUILTIN = ("INPUT", "FORWARD", "OUTPUT")

    def __init__(self) -> None:
        self.chains: dict[str, list[str]] = {c: [] for c in self.BUILTIN}

    def restore(self, text: str) -> None:
        """``iptables-restore --noflush``: all lines, or an error for the first bad one."""
        lines = text.splitlines()
        assert lines[0] == "*filter" and lines[-1] == "COMMIT", text
        for line in lines[1:-1]:
            if line.startswith(":"):
                name = line[1:].split()[0]
                assert name not in self.chains, f"chain {name} exists"
                self.chains[name] = []
                continue
            verb, chain, *rest = line.split(" ")
            assert chain in self.chains, f"{line}: no chain {chain}"
            if verb == "-A":
                self.chains[chain].append(" ".join(rest))
            elif verb == "-I":
                self.chains[chain].insert(int(rest[0]) - 1, " ".join(rest[1:]))
            elif verb == "-D":
                self.chains[chain].remove(" ".join(rest))  # ValueError: no such rule
            elif verb == "-F":
                self.chains[chain].clear()
            elif verb == "-X":
                assert chain not in self.BUILTIN and not self.chains[chain], line
                referenced = [r for rs in self.chains.values() for r in rs if r.endswith(f"-j {chain}")]
                assert not referenced, f"{chain} is still referenced"
                del self.chains[chain]
            else:
                raise AssertionError(line)

    def save(self) -> str:
        lines = ["# Generated by iptables-save v1.8.9", "*filter"]
        lines += [f":{c} {'ACCEPT' if c in self.BUILTIN else '-'} [0:0]" for c in self.chains]
        lines += [f"-A {c} {r}" for c, rs in self.chains.items() for r in rs]
        lines += ["COMMIT", "# Completed"]
        return "\n".join(lines) + "\n"


def admin_table() -> Table:
    table = Table()
    table.restore(
        "*filter\n:ADMIN - [0:0]\n"
        "-A INPUT -i lo -j ACCEPT\n"
        "-A INPUT -s 198.51.100.0/24 -j ACCEPT\n"
        "-A INPUT -p tcp -m tcp --dport 2222 -j ADMIN\n"
        "-A FORWARD -p tcp -m tcp --dport 25 -j DROP\n"
        "-A ADMIN -j ACCEPT\n"
        "COMMIT\n"
    )
    return table


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize(
    "cfg",
    [
        config(interfaces=()),
        config(interfaces=("eth0", "eth1"), public=("80", "53:udp"), hosts=(None, HOST4, HOST6)),
        config(public=tuple(str(p) for p in range(100, 132)), workers=3, hosts=(HOST4B, HOST6)),
    ],
    ids=["all-interfaces", "hosts", "workers"],
)
def test_install_then_remove_leaves_the_admin_rules_as_they_were(family: int, cfg: Config) -> None:
    table = admin_table()
    before = table.save()
    table.restore(render_family(cfg, family))
    installed = table.save()
    assert table.chains["INPUT"][0].endswith(f"-j {CHAIN_IN}")
    removal = render_removal(installed)
    assert removal is not None
    # exactly our jumps are deleted, nothing the admin wrote
    deleted = [line for line in removal.splitlines() if line.startswith("-D ")]
    assert deleted == [
        line.replace("-A ", "-D ", 1)
        for line in installed.splitlines()
        if line.startswith(("-A INPUT ", "-A FORWARD ")) and JUMP in line
    ]
    assert len(deleted) == len(jumps(render_family(cfg, family), "INPUT")) + len(
        jumps(render_family(cfg, family), "FORWARD")
    )
    table.restore(removal)
    assert table.save() == before
    assert render_removal(table.save()) is None


def test_one_time_ports_and_the_ports_they_open_go_to_the_first_worker(tmp_path: Path) -> None:
    """Whatever a source's shard: the one worker that marks a line used sees every replay
    of it, used lines included, and the client's first SYN queues behind its last knock."""
    once = tmp_path / "once.txt"
    once.write_text("#used# 4001,4002:udp\n5001,5002:udp\n6001 6002:icmp\n")
    cfg = loads(f"""
[gatekeeper]
queue = 3
workers = 2
[[door]]
name = "ssh"
sequence = ["7000:udp", "8000"]
opens = ["22"]
[[door]]
name = "once"
one_time_sequences = "{once}"
opens = ["3389", "22"]
""", "t.toml")
    v4 = render_family(cfg, 4).splitlines()
    first = [ln for ln in v4 if ln.endswith("-j NFQUEUE --queue-num 3") and "-m mark" not in ln]
    assert first == [
        f"-A {CHAIN_IN} -p tcp -m multiport --dports 3389,4001,5001,6001 -j NFQUEUE --queue-num 3",
        f"-A {CHAIN_IN} -p udp -m multiport --dports 4002,5002 -j NFQUEUE --queue-num 3",
        f"-A {CHAIN_IN} -p icmp -m icmp --icmp-type echo-request -j NFQUEUE --queue-num 3",
    ], "22 is opened by the ssh door too: it keeps to the source's worker"
    assert v4.index(first[-1]) < next(i for i, ln in enumerate(v4) if "HMARK" in ln)
    v6 = render_family(cfg, 6)
    assert "-p ipv6-icmp -m icmp6 --icmpv6-type echo-request -j NFQUEUE --queue-num 3" in v6
