"""The stock fwknop client's other transports against the real daemon in the namespace lab:
``-P tcpraw``, ``-P icmp`` (its default echo reply, and ``--icmp-type 8``) and
``--rand-port``, each on a door that takes it (spa_transports), with and without the kernel
prefilter and with two workers (the ruleset sends them to the first): the client's first
SYN right after its packet connects, the packet itself is dropped, and a packet made with
a wrong key is refused and counted. Then stock fwknopd, sniffing those transports
(PCAP_FILTER), takes the same client commands, and its config imported
(``import-fwknop``) opens the same ports on gatekeeper."""

from __future__ import annotations

import base64
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gatekeeper import cli
from gatekeeper.lab.netns import GW4, Lab
from gatekeeper.spa import fwknop
from tests.lab.stock_fwknopd import opened, running
from tests.lab.support import (
    KEYS,
    H,
    K,
    fwknop_send,
    grants,
    is_open,
    needs_fwknop,
    spa_counts,
    spa_daemon,
    wait_count,
)

pytestmark = [pytest.mark.lab, needs_fwknop]

OTHER = fwknop.generate_keys()  # the icmp8 door's keys: the icmp door's fail its HMAC
WRONG = fwknop.generate_keys()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# door -> (spa_transports, opened tcp port, keys, client flags)
DOORS: dict[str, tuple[str, int, fwknop.SpaKeys, tuple[str, ...]]] = {
    "tcpraw": ('["tcpraw"]', 2301, KEYS, ("-P", "tcpraw")),
    "icmp": ('["icmp"]', 2302, KEYS, ("-P", "icmp")),
    "icmp8": ('["icmp"]', 2303, OTHER, ("-P", "icmp", "--icmp-type", "8")),
    "rand": ('["udp-any"]', 2304, KEYS, ("--rand-port",)),
}


@pytest.fixture(scope="module")
def served(lab: Lab) -> Lab:
    for _, port, _, _ in DOORS.values():
        lab.serve_tcp("gw", port)
    return lab


@pytest.fixture(params=[False, True], ids=["queue", "prefilter"])
def daemon(request: pytest.FixtureRequest, served: Lab, start_daemon: Any,
           tmp_path: Path) -> Iterator[Any]:
    pre = "true" if request.param else "false"
    doors = {name: (fwknop.format_key_file(keys), f'spa_transports = {transports}\nopens = ["{port}:tcp"]')
             for name, (transports, port, keys, _) in DOORS.items()}
    yield spa_daemon(start_daemon, tmp_path, doors, f"prefilter = {pre}\n")


def send(lab: Lab, daemon: Any, door: str, keys: fwknop.SpaKeys | None = None) -> None:
    _, port, door_keys, flags = DOORS[door]
    chosen = keys or door_keys
    fwknop_send(lab, daemon.home, *flags, access=f"tcp/{port}", key=b64(chosen.encryption),
                hmac_key=b64(chosen.hmac))


@pytest.mark.parametrize("door", list(DOORS))
def test_each_transport_opens_to_the_first_syn(served: Lab, daemon: Any, door: str) -> None:
    port = DOORS[door][1]
    assert not is_open(served, "client", GW4, port)
    send(served, daemon, door)
    assert is_open(served, "client", GW4, port), "the first SYN right after the SPA packet"
    assert wait_count(daemon, "ok", 1, door)["ok"] == 1
    assert grants(daemon, door) == 1
    assert not is_open(served, "other", GW4, port)
    # the kernel holds the rules as rendered: the audit finds nothing to repair
    assert not [ln for ln in daemon.lines if "ruleset" in ln and "intact" not in ln], daemon.lines


# sends argv[2] (hex) to argv[3] from each source address of argv[4:] (IP_HDRINCL), as
# argv[1]: a TCP SYN to 62201 (tcpraw), an echo reply (icmp) or UDP to port 40000 (rand)
RAW = """
import socket, struct, sys
kind, data, target, sources = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3], sys.argv[4:]
def csum(b):
    b += b"\\0" * (len(b) & 1)
    t = sum(struct.unpack(f"!{len(b) // 2}H", b))
    t = (t & 0xFFFF) + (t >> 16)
    return ~(t + (t >> 16)) & 0xFFFF
if kind == "tcpraw":
    proto, l4 = 6, struct.pack("!HHIIBBHHH", 40000, 62201, 1, 0, 0x50, 0x02, 32767, 0, 0) + data
elif kind == "icmp":
    head = struct.pack("!BBHHH", 0, 0, 0, 0, 0) + data
    proto, l4 = 1, head[:2] + struct.pack("!H", csum(head)) + head[4:]
else:
    proto, l4 = 17, struct.pack("!HHHH", 40000, 40000, 8 + len(data), 0) + data
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for src in sources:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 7, 0, 64, proto, 0,
                     socket.inet_aton(src), socket.inet_aton(target))
    s.sendto(ip + l4, (target, 0))
"""
SPOOFED = [f"203.0.113.{i}" for i in range(50, 58)]  # 8 sources: one shard holds all 1 in 128


@pytest.mark.parametrize("door", ["tcpraw", "icmp", "rand"])
def test_a_packet_replayed_from_other_sources_reaches_the_same_replay_cache(
        served: Lab, daemon: Any, door: str, tmp_path: Path) -> None:
    """With two workers, sources are sharded across them, but SPA-sized packets of every
    transport go to the first worker: each copy is a replay there (on the other worker's
    cache it would pass that check and be refused at source)."""
    saved = tmp_path / "packet"
    _, port, keys, flags = DOORS[door]
    fwknop_send(served, daemon.home, *flags, access=f"tcp/{port}", key=b64(keys.encryption),
                hmac_key=b64(keys.hmac), save=str(saved))
    assert wait_count(daemon, "ok", 1, door)["ok"] == 1
    served.run("other", [sys.executable, "-c", RAW, door, saved.read_bytes().strip().hex(), GW4,
                         *SPOOFED])
    counts = wait_count(daemon, "replay", len(SPOOFED), door)
    assert counts.get("replay") == len(SPOOFED) and "source" not in counts, counts


def test_a_wrong_key_on_each_transport_is_refused_and_counted(served: Lab, daemon: Any) -> None:
    for door in DOORS:
        send(served, daemon, door, keys=WRONG)
    for door in DOORS:
        counts = wait_count(daemon, "hmac", 1, door)
        assert counts.get("hmac", 0) >= 1 and "ok" not in counts, (door, counts)
        assert not is_open(served, "client", GW4, DOORS[door][1]), door
        assert grants(daemon, door) == 0
    daemon.wait_for(r"spa refused door=\S+ address=203\.0\.113\.10 stage=hmac")
    # a transport a door does not take is no SPA for it: nothing counted, nothing opened
    fwknop_send(served, daemon.home, "-P", "tcpraw", "-p", "62299", access="tcp/2301")
    assert not is_open(served, "client", GW4, 2301)
    assert spa_counts(daemon, "tcpraw").get("hmac") == 1


# what each client command asks for, on fwknopd and then on the imported config
COMMANDS = {"tcpraw": (22, ("-P", "tcpraw")), "icmp": (8080, ("-P", "icmp")),
            "rand": (2301, ("--rand-port",))}


def test_stock_fwknopd_sniffing_the_transports_imports_and_opens_the_same(
        served: Lab, start_daemon: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lab = served
    access, server = tmp_path / "access.conf", tmp_path / "fwknopd.conf"
    access.write_text(f"SOURCE ANY\nOPEN_PORTS tcp/22, tcp/8080, tcp/2301\nKEY_BASE64 {K}\n"
                      f"HMAC_KEY_BASE64 {H}\n")
    server.write_text("PCAP_INTF eth0\nPCAP_FILTER udp portrange 10000-65535 or tcp port 62201 "
                      "or icmp\n")
    access.chmod(0o600)
    server.chmod(0o600)
    home = tmp_path / "home"
    home.mkdir()
    with running(lab, tmp_path, shut=[p for p, _ in COMMANDS.values()]):
        for port, flags in COMMANDS.values():
            assert not is_open(lab, "client", GW4, port)
            fwknop_send(lab, str(home), *flags, access=f"tcp/{port}")
            assert opened(lab, port), (flags, (tmp_path / "fwknopd.log").read_text())
    out = tmp_path / "gatekeeper.toml"
    assert cli.main(["import-fwknop", str(access), "--server-conf", str(server), "-o", str(out),
                     "--key-dir", str(tmp_path / "keys")]) == 0, capsys.readouterr().err
    assert 'spa_transports = ["udp", "tcpraw", "icmp", "udp-any"]' in out.read_text()
    start_daemon(out.read_text())
    for port, flags in COMMANDS.values():
        assert not is_open(lab, "client", GW4, port)
        fwknop_send(lab, str(home), *flags, access=f"tcp/{port}")
        assert is_open(lab, "client", GW4, port), ("the first SYN after the packet", flags)
