"""IP fragments in the real kernel: a datagram the path fragments arrives whole (conntrack
reassembles it before the rules), so a knock in fragments still counts. (The decoder's refusal of
fragments, without a kernel: tests/unit/test_decode_props.py.)"""

from __future__ import annotations

from typing import Any

from gatekeeper.lab.netns import GW4 as GW4_LAB
from gatekeeper.lab.netns import GW6 as GW6_LAB
from gatekeeper.lab.netns import Lab
from tests.fixtures.configs import config as lab_config
from tests.lab.support import is_open, knock

# -- the real kernel: a datagram the path fragments arrives whole -----------------------------


def test_a_fragmented_knock_still_counts(lab: Lab, start_daemon: Any) -> None:
    """The rule costs a client nothing: echo knocks of 3000 and 2000 bytes leave the
    client in fragments (the lab's links have a 1500-byte MTU), the gateway's conntrack
    reassembles them before the rules, and the queue sees whole datagrams."""
    start_daemon(lab_config(**{'"64:icmp", "128:icmp"': '"3000:icmp", "2000:icmp"'}))
    for gateway in (GW4_LAB, GW6_LAB):
        assert not is_open(lab, "client", gateway, 8080)
        before = _fragments_sent(lab)
        knock(lab, "client", gateway, "3000:icmp", "2000:icmp")
        assert _fragments_sent(lab) >= before + 4, "the knocks left the client in fragments"
        # the decoder refuses fragments, so the door opened on the reassembled datagrams
        assert is_open(lab, "client", gateway, 8080)


def _fragments_sent(lab: Lab) -> int:
    """The fragments the client's kernel has made, IPv4 and IPv6."""
    v4 = [line.split() for line in lab.run("client", ["cat", "/proc/net/snmp"]).stdout.splitlines()
          if line.startswith("Ip:")]
    v6 = dict(line.split() for line in lab.run("client", ["cat", "/proc/net/snmp6"]).stdout.splitlines()
              if line.strip())
    return int(v4[1][v4[0].index("FragCreates")]) + int(v6["Ip6FragCreates"])
