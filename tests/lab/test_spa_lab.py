"""SPA with the stock fwknop client, encrypted and one-time sequences, against the real
daemon in the namespace lab (gateway 203.0.113.1 guarding eth0, client .10, other .20)."""

from __future__ import annotations

import base64
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.daemon.control import request
from gatekeeper.lab.netns import CLIENT4, CLIENT6, GW4, GW6, Lab
from gatekeeper.spa import fwknop
from tests.lab.support import (
    KEYS,
    control,
    fwknop_send,
    grants,
    is_open,
    knock,
    needs_fwknop,
    probe,
    wait_count,
)

SEQ_KEY = base64.b64encode(bytes(range(7, 39))).decode()
ONCE_PORT = 8443
RC_LINE = "[*] Creating initial rc file: /root/.fwknoprc."
WEB_PORT = 80

CONFIG = """
[gatekeeper]
queue = 0
workers = 2
interfaces = ["eth0"]

[[door]]
name = "spa"
spa = true
key_file = "{spa_key}"
opens = ["22:tcp"]
open_for = 30

[[door]]
name = "enc"
encrypted_sequence = {{ key_file = "{seq_key}", ports = "745-1000" }}
opens = ["8080:tcp"]

[[door]]
name = "once"
one_time_sequences = "{once}"
opens = ["{once_port}:tcp"]
"""


@pytest.fixture(scope="module")
def served(lab: Lab) -> Lab:
    lab.serve_tcp("gw", ONCE_PORT)
    lab.serve_tcp("gw", WEB_PORT)  # listening: a connect that fails there was dropped
    return lab


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    out = {}
    for name, text, mode in (
        # as a first run of fwknop --key-gen > spa.key writes it: the rc-file line, the keys
        ("spa_key", f"{RC_LINE}\n{fwknop.format_key_file(KEYS)}", 0o600),
        ("seq_key", f"KEY_BASE64={SEQ_KEY}\n", 0o600),  # the spelling of older releases
        ("once", "# one-time sequences\n5001,5002:udp,5003\n6001 6002:udp 6003\n", 0o644),
    ):
        path = tmp_path / name
        path.write_text(text)
        os.chmod(path, mode)
        out[name] = str(path)
    home = tmp_path / "home"
    home.mkdir()
    out["home"] = str(home)
    return out


@pytest.fixture
def daemon(served: Lab, start_daemon: Any, files: dict[str, str]) -> Iterator[Any]:
    d = start_daemon(CONFIG.format(once_port=ONCE_PORT, **files))
    d.files = files
    yield d


def send_udp(lab: Lab, host: str, data: bytes, port: int = 62201, target: str = GW4) -> None:
    family = "AF_INET6" if ":" in target else "AF_INET"
    code = (f"import socket, sys; s = socket.socket(socket.{family}, socket.SOCK_DGRAM); "
            "s.sendto(bytes.fromhex(sys.argv[1]), (sys.argv[2], int(sys.argv[3])))")
    lab.run(host, [sys.executable, "-c", code, data.hex(), target, str(port)])




@needs_fwknop
def test_fwknop_client_grants_and_first_syn_connects(served: Lab, daemon: Any) -> None:
    lab = served
    assert not is_open(lab, "client", GW4)
    fwknop_send(lab, daemon.files["home"])
    assert is_open(lab, "client", GW4), "the first SYN right after the SPA packet"
    assert not is_open(lab, "other", GW4)
    daemon.wait_for(r"grant door=spa address=203\.0\.113\.10 ")
    assert wait_count(daemon, "ok", 1)["ok"] == 1


@needs_fwknop
def test_replays_and_bad_packets_grant_nothing_each_in_its_counter(
        served: Lab, daemon: Any, tmp_path: Path) -> None:
    lab = served
    home = daemon.files["home"]
    saved = tmp_path / "packet"
    # Made but never sent (-T): the first copy the gateway sees is the replay from "other".
    fwknop_send(lab, home, "-T", save=str(saved))
    packet = saved.read_bytes().strip()
    send_udp(lab, "other", packet)
    fwknop_send(lab, home, save=str(saved))  # a real one, then replayed from both hosts
    assert is_open(lab, "client", GW4)
    packet = saved.read_bytes().strip()
    daemon.wait_for(r"grant door=spa ")
    send_udp(lab, "client", packet)
    send_udp(lab, "other", packet)
    flipped = bytearray(packet)
    flipped[40] ^= 0x01
    send_udp(lab, "client", bytes(flipped))
    wrong = fwknop.generate_keys()
    fwknop_send(lab, home, key=base64.b64encode(wrong.encryption).decode(),
                hmac_key=base64.b64encode(wrong.hmac).decode())
    fwknop_send(lab, home, "--time-offset-minus", "300sec")
    fwknop_send(lab, home, "--time-offset-plus", "300sec")
    fwknop_send(lab, home, allow="203.0.113.99")
    counts = wait_count(daemon, "source", 2)
    assert counts.get("ok") == 1, counts
    assert counts.get("replay") == 2, counts  # from the client and from the other host
    assert counts.get("hmac") == 2, counts  # the flipped bit and the wrong key
    assert counts.get("stale") == 2, counts  # in the past and in the future
    assert counts.get("source") == 2, counts  # "other" sending the client's packet; -a .99
    time.sleep(0.5)
    assert grants(daemon, "spa") == 1, daemon.lines
    assert not is_open(lab, "other", GW4)
    metrics = lab.python("gw", "import urllib.request; print(urllib.request.urlopen("
                         "'http://127.0.0.1:9464/metrics').read().decode())")
    assert 'gatekeeper_spa_total{door="spa",stage="replay"} 2.0' in metrics


def test_gatekeeper_spa_client(served: Lab, daemon: Any) -> None:
    lab = served
    lab.run("client", [sys.executable, "-m", "gatekeeper", "spa", "--key-file",
                       daemon.files["spa_key"], "-A", "tcp/22", GW4])
    assert is_open(lab, "client", GW4)
    out = lab.run("client", [sys.executable, "-m", "gatekeeper", "spa", "--key-gen"]).stdout
    assert fwknop.parse_key_file(out, "stdout")


def test_encrypted_sequence_and_its_replay(served: Lab, daemon: Any) -> None:
    lab = served
    assert not is_open(lab, "client", GW4, 8080)
    out = lab.run("client", [sys.executable, "-m", "gatekeeper", "knock", "--encrypted", "-v",
                             "--key-file", daemon.files["seq_key"], "--range", "745-1000",
                             "-A", "tcp/8080", GW4]).stdout
    assert is_open(lab, "client", GW4, 8080)
    assert wait_count(daemon, "ok", 1, "enc").get("ok") == 1
    daemon.wait_for(r"grant door=enc ")
    ports = [line.rsplit(":", 1)[1] for line in out.splitlines() if line.startswith("hitting")]
    assert len(ports) == 43
    knock(lab, "client", GW4, *ports)
    assert wait_count(daemon, "replay", 1, "enc").get("replay") == 1
    time.sleep(0.3)
    assert grants(daemon, "enc") == 1, daemon.lines


def test_a_mapped_address_admits_the_ipv4_client(served: Lab, daemon: Any) -> None:
    """``-a ::ffff:203.0.113.10`` from 203.0.113.10: granted, and admitted, as IPv4."""
    lab = served
    mapped = f"::ffff:{CLIENT4}"
    gatekeeper = [sys.executable, "-m", "gatekeeper"]
    lab.run("client", [*gatekeeper, "spa", "--key-file", daemon.files["spa_key"], "-A", "tcp/22",
                       "-a", mapped, GW4])
    assert is_open(lab, "client", GW4)
    daemon.wait_for(rf"grant door=spa address={re.escape(CLIENT4)} ")
    lab.run("client", [*gatekeeper, "knock", "--encrypted", "--key-file", daemon.files["seq_key"],
                       "--range", "745-1000", "-A", "tcp/8080", "-a", mapped, GW4])
    assert is_open(lab, "client", GW4, 8080)
    daemon.wait_for(rf"grant door=enc address={re.escape(CLIENT4)} ")
    assert not is_open(lab, "other", GW4)


def test_one_time_sequence_works_once_and_not_after_a_restart(
        served: Lab, start_daemon: Any, files: dict[str, str]) -> None:
    lab = served
    text = CONFIG.format(once_port=ONCE_PORT, **files)
    daemon = start_daemon(text)
    first = ["5001", "5002:udp", "5003"]
    knock(lab, "client", GW4, *first)
    assert is_open(lab, "client", GW4, ONCE_PORT)
    daemon.wait_for(r"one-time sequence used: door=once")
    daemon.wait_for(r"reloaded ")
    lines = Path(files["once"]).read_text().splitlines()
    assert lines[1] == "#used# 5001,5002:udp,5003", lines
    knock(lab, "client", GW4, *first)
    time.sleep(0.5)
    assert grants(daemon, "once") == 1, "a used sequence works once"
    daemon.stop()
    lab.run("gw", ["ipset", "destroy"], check=False)  # no grant to adopt after the restart
    daemon = start_daemon(text)
    knock(lab, "client", GW4, *first)
    assert not is_open(lab, "client", GW4, ONCE_PORT), "a restart does not revive it"
    knock(lab, "client", GW4, "6001", "6002:udp", "6003")
    assert is_open(lab, "client", GW4, ONCE_PORT), "the next line works"
    probe(lab, "client", "connect", GW4, ONCE_PORT)


@needs_fwknop
def test_a_replay_after_a_restart_is_still_a_replay(
        served: Lab, daemon: Any, start_daemon: Any, tmp_path: Path) -> None:
    """The replay cache is journalled under state_dir: restarting the daemon inside the
    packet's time window must not make a captured packet good again."""
    lab = served
    saved = tmp_path / "packet"
    fwknop_send(lab, daemon.files["home"], save=str(saved))
    daemon.wait_for(r"grant door=spa ")
    packet = saved.read_bytes().strip()
    assert daemon.stop() == 0
    again = start_daemon(CONFIG.format(once_port=ONCE_PORT, **daemon.files))
    send_udp(lab, "other", packet)
    send_udp(lab, "client", packet)
    counts = wait_count(again, "replay", 2)
    assert counts.get("replay") == 2, (counts, again.lines[-6:])
    time.sleep(0.3)
    assert grants(again, "spa") == 0, again.lines
    assert not is_open(lab, "other", GW4)


# -- a grant opens what the packet asks for -----------------------------------------------

WIDE = """
[gatekeeper]
queue = 0
workers = 2
interfaces = ["eth0"]

[[door]]
name = "wide"
spa = true
key_file = "{spa_key}"
opens = ["22:tcp", "{web_port}:tcp"]
open_for = 30
"""


def set_entries(lab: Lab, name: str = "gatekeeper-in4") -> list[str]:
    """The members of a kernel grant set, e.g. ``203.0.113.10,tcp:22``."""
    text = lab.run("gw", ["ipset", "list", name]).stdout
    members = text.split("Members:", 1)[1].strip().splitlines()
    return sorted(line.split()[0] for line in members if line.strip())


def status(daemon: Any) -> dict[str, Any]:
    answer: dict[str, Any] = request(control(daemon))
    return answer


@needs_fwknop
def test_fwknop_asking_for_one_port_opens_that_port_only_and_a_restart_adopts_exactly_it(
        served: Lab, start_daemon: Any, files: dict[str, str]) -> None:
    lab = served
    text = WIDE.format(web_port=WEB_PORT, **files)
    daemon = start_daemon(text)
    fwknop_send(lab, files["home"], access="tcp/22")
    assert is_open(lab, "client", GW4), "the first SYN right after the SPA packet"
    web = probe(lab, "client", "connect", GW4, WEB_PORT)
    assert not web["ok"] and "timed out" in web.get("error", ""), web  # dropped, not refused
    daemon.wait_for(r"grant door=wide address=203\.0\.113\.10 open_for=30s opens=22:tcp$")
    assert set_entries(lab) == ["203.0.113.10,tcp:22"]
    assert [(g["door"], g["opens"]) for g in status(daemon)["grants"]] == [("wide", ["22:tcp"])]
    assert daemon.stop(9) != 0  # killed: the kernel set and its entry stay
    again = start_daemon(text)
    again.wait_for("adopted 1 running grant")
    assert set_entries(lab) == ["203.0.113.10,tcp:22"]
    assert is_open(lab, "client", GW4)
    assert not is_open(lab, "client", GW4, WEB_PORT), "the restart did not widen the grant"
    assert [(g["door"], g["opens"]) for g in status(again)["grants"]] == [("wide", ["22:tcp"])]
    # a second packet for the other port adds it to the running grant
    fwknop_send(lab, files["home"], access=f"tcp/{WEB_PORT}")
    assert is_open(lab, "client", GW4, WEB_PORT)
    again.wait_for(rf"grant door=wide address=203\.0\.113\.10 open_for=30s opens={WEB_PORT}:tcp renewed")
    assert set_entries(lab) == sorted(["203.0.113.10,tcp:22", f"203.0.113.10,tcp:{WEB_PORT}"])
    assert not is_open(lab, "other", GW4) and not is_open(lab, "other", GW4, WEB_PORT)


# -- IPv6: gatekeeper's own clients (fwknop 2.6 refuses -a with an IPv6 address) ----------


def test_gatekeeper_spa_client_over_ipv6_grants_and_a_replay_grants_nothing(
        served: Lab, daemon: Any, tmp_path: Path) -> None:
    lab = served
    saved = tmp_path / "packet6"
    assert not is_open(lab, "client", GW6)
    lab.run("client", [sys.executable, "-m", "gatekeeper", "spa", "--key-file",
                       daemon.files["spa_key"], "-A", "tcp/22", "--save-packet", str(saved), GW6])
    assert is_open(lab, "client", GW6), "the first SYN over IPv6 right after the SPA packet"
    daemon.wait_for(r"grant door=spa address=2001:db8:1::10 open_for=30s opens=22:tcp$")
    assert set_entries(lab, "gatekeeper-in6") == ["2001:db8:1::10,tcp:22"]
    assert not is_open(lab, "other", GW6)
    packet = saved.read_bytes()
    send_udp(lab, "client", packet, target=GW6)
    send_udp(lab, "other", packet, target=GW6)
    counts = wait_count(daemon, "replay", 2)
    assert counts.get("replay") == 2 and counts.get("ok") == 1, counts
    time.sleep(0.3)
    assert grants(daemon, "spa") == 1, daemon.lines
    assert not is_open(lab, "other", GW6)


def test_encrypted_sequence_over_ipv6_grants_and_its_replay_grants_nothing(
        served: Lab, daemon: Any) -> None:
    lab = served
    assert not is_open(lab, "client", GW6, 8080)
    out = lab.run("client", [sys.executable, "-m", "gatekeeper", "knock", "--encrypted", "-v",
                             "--key-file", daemon.files["seq_key"], "--range", "745-1000",
                             "-A", "tcp/8080", GW6]).stdout
    assert is_open(lab, "client", GW6, 8080), "the first SYN over IPv6 after the last knock"
    daemon.wait_for(r"grant door=enc address=2001:db8:1::10 open_for=30s opens=8080:tcp$")
    assert not is_open(lab, "other", GW6, 8080)
    ports = [line.rsplit(":", 1)[1] for line in out.splitlines() if line.startswith("hitting")]
    assert len(ports) == 55  # an IPv6 address takes 55 knocks
    knock(lab, "client", GW6, *ports)
    assert wait_count(daemon, "replay", 1, "enc").get("replay") == 1
    time.sleep(0.3)
    assert grants(daemon, "enc") == 1, daemon.lines
    assert status(daemon)["grants"][0]["address"] == CLIENT6
