"""The shipped unit forbids module loading (ProtectKernelModules=yes), so every netfilter
module the rendered ruleset needs must be loaded at boot: listed in the package's
modules-load file and in the Vagrant gateway's list. This renders a config that uses every
feature (workers, a host behind the gateway, the prefilter, SPA transports, NAT access, a
one-time door) and derives the modules from the rules themselves."""

from __future__ import annotations

import re
from pathlib import Path

from gatekeeper.config.load import loads
from gatekeeper.netfilter.render import render
from tests.fixtures.doors import config_text

ROOT = Path(__file__).parents[2]
# in the core of ip_tables / ip6_tables / ip_set: no module of their own
BUILT_IN_MATCHES = {"icmp", "icmp6"}
TARGETS = {"NFQUEUE": "xt_NFQUEUE", "HMARK": "xt_HMARK", "SET": "xt_set", "DNAT": "xt_nat"}
MATCHES = {"tcp": "xt_tcpudp", "udp": "xt_tcpudp"}
TABLES = {("nat", 4): "iptable_nat", ("nat", 6): "ip6table_nat"}

EVERYTHING = """
[[door]]
name = "web"
sequence = ["7000", "8000:udp"]
opens = ["443"]
host = "198.51.100.30"

[[door]]
name = "nat"
spa = true
key_file = "{key}"
spa_port = 62300
spa_transports = ["udp", "tcpraw", "icmp", "udp-any"]
opens = ["2222"]
spa_nat = ["198.51.100.20:22", "[2001:db8::20]:22"]
"""


def needed(text: str, family: int) -> set[str]:
    """The modules an iptables-restore text (one family) or an ipset restore text uses."""
    out: set[str] = set()
    for line in text.splitlines():
        if line.startswith("*") and (line[1:], family) in TABLES:
            out.add(TABLES[(line[1:], family)])
        if line.startswith("create "):
            out.add("ip_set_" + line.split()[2].replace(":", "_").replace(",", ""))
        out |= {MATCHES.get(m, f"xt_{m}") for m in re.findall(r"-m (\w+)", line)
                if m not in BUILT_IN_MATCHES}
        out |= {TARGETS[t] for t in re.findall(r"-j (\w+)", line) if t in TARGETS}
    return out


def test_every_module_the_rules_use_is_loaded_at_boot(files: dict[str, str]) -> None:
    text = config_text(files).replace("control = \"\"", "control = \"\"\nworkers = 2\nprefilter = true")
    cfg = loads(text + EVERYTHING.format(key=files["spa"]), "t.toml")
    ruleset = render(cfg)
    used = needed(ruleset.ipv4, 4) | needed(ruleset.ipv6, 6) | needed(ruleset.ipset, 4)
    used.add("ip_set")
    assert {"xt_hashlimit", "xt_nat", "iptable_nat", "ip_set_hash_ip", "xt_length"} <= used, used
    for listing in ("debian/gatekeeper.modules-load", "vagrant/provision/gateway.sh"):
        names = set(re.findall(r"[\w]+", (ROOT / listing).read_text()))
        assert used <= names, f"{listing} lacks {sorted(used - names)}"
