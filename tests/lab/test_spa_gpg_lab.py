"""The stock fwknop client's GnuPG SPA (--gpg-recipient-key, --gpg-signer-key, with and
without --use-hmac) against the real daemon in the namespace lab: the first SYN right after
the packet connects; a wrong signer, no signature and a wrong recipient are refused in their
own stages; and a flood of GnuPG-looking junk on a door without HMAC stays within that
door's GnuPG budget while legitimate clients get in (figures printed, not asserted)."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.lab.bench.traffic import dump, ip, udp
from gatekeeper.lab.netns import CLIENT4, GW4, OTHER4, Lab
from gatekeeper.spa import fwknop
from tests.fixtures.gnupg import Homes
from tests.lab.support import is_open, needs_fwknop, spa_counts, wait_count

pytestmark = [pytest.mark.lab, needs_fwknop]

HMAC = bytes(range(100, 164))
H = base64.b64encode(HMAC).decode()
RIJNDAEL = fwknop.SpaKeys(bytes(range(32)), bytes(range(64)), "lab")
# name -> (spa_port, opened tcp port)
DOORS = {"gpg": (62201, 22), "gpgh": (62230, 2230), "spa": (62240, 2240)}


def config(homes: Homes, tmp_path: Path, budget: str = "") -> str:
    hmac_key = tmp_path / "hmac.key"
    hmac_key.write_text(f"HMAC_KEY_BASE64: {H}\n")
    spa_key = tmp_path / "spa.key"
    spa_key.write_text(fwknop.format_key_file(RIJNDAEL))
    for path in (hmac_key, spa_key):
        os.chmod(path, 0o600)
    gpg = (f'spa_gpg = {{ home = "{homes.home("server")}", recipient = "{homes.key_id("server")}", '
           f'signers = ["{homes.key_id("client")}"]{budget} }}')
    return f"""
[gatekeeper]
queue = 0
workers = 1
interfaces = ["eth0"]

[[door]]
name = "gpg"
spa = true
opens = ["22:tcp"]
{gpg}

[[door]]
name = "gpgh"
spa = true
spa_port = 62230
key_file = "{hmac_key}"
opens = ["2230:tcp"]
{gpg}

[[door]]
name = "spa"
spa = true
spa_port = 62240
key_file = "{spa_key}"
opens = ["2240:tcp"]
"""


@pytest.fixture(scope="module")
def served(lab: Lab) -> Lab:
    for port in (2230, 2240):
        lab.serve_tcp("gw", port)
    return lab


@pytest.fixture
def daemon(served: Lab, start_daemon: Any, gnupg: Homes, tmp_path: Path) -> Iterator[Any]:
    home = tmp_path / "home"
    home.mkdir()
    d = start_daemon(config(gnupg, tmp_path))
    d.home = str(home)
    yield d


def send(lab: Lab, daemon: Any, homes: Homes, door: str, *, signer: str | None = "client",
         recipient: str = "server", hmac: bool = False) -> None:
    spa_port, port = DOORS[door]
    argv = ["env", f"HOME={daemon.home}", "fwknop", "-A", f"tcp/{port}", "-a", CLIENT4, "-D", GW4,
            "-p", str(spa_port), "--no-rc-file", "--gpg-recipient-key", homes.email(recipient),
            "--gpg-home-dir", homes.home("client")]
    if signer is not None:
        argv += ["--gpg-signer-key", homes.email(signer), "--gpg-no-signing-pw"]
    if hmac:
        argv += ["--use-hmac", "--key-base64-hmac", H]
    lab.run("client", argv)


@pytest.mark.parametrize("door", ["gpg", "gpgh"], ids=["gpg", "gpg-hmac"])
def test_a_gnupg_packet_opens_to_the_first_syn(served: Lab, daemon: Any, gnupg: Homes,
                                               door: str) -> None:
    port = DOORS[door][1]
    assert not is_open(served, "client", GW4, port)
    send(served, daemon, gnupg, door, hmac=door == "gpgh")
    assert is_open(served, "client", GW4, port), "the first SYN right after the SPA packet"
    assert wait_count(daemon, "ok", 1, door)["ok"] == 1
    assert not is_open(served, "other", GW4, port)


def test_wrong_signer_unsigned_and_wrong_recipient_are_refused_in_their_stages(
        served: Lab, daemon: Any, gnupg: Homes) -> None:
    lab = served
    send(lab, daemon, gnupg, "gpg", signer="stranger")
    send(lab, daemon, gnupg, "gpg", signer=None)
    send(lab, daemon, gnupg, "gpg", recipient="other")
    send(lab, daemon, gnupg, "gpgh", hmac=False)  # an HMAC door: no GnuPG work at all
    deadline = time.monotonic() + 10
    while sum(spa_counts(daemon, "gpg").values()) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    counts = spa_counts(daemon, "gpg")
    assert counts == {"gpg_signer": 1, "gpg_unsigned": 1, "gpg_recipient": 1}, counts
    assert wait_count(daemon, "hmac", 1, "gpgh").get("hmac") == 1
    assert not is_open(lab, "client", GW4, 22)
    for stage in ("gpg_signer", "gpg_unsigned", "gpg_recipient"):  # logged for fail2ban too
        daemon.wait_for(rf"spa refused door=gpg address={CLIENT4} stage={stage}\b")


FLOOD_SECONDS, FLOOD_RATE = 8, 2000


def flood_file(tmp_path: Path, count: int = 4000) -> Path:
    """GnuPG-looking junk (700 base64 characters) to the door without HMAC, from ``other``."""
    src, dst = ipaddress.ip_address(OTHER4).packed, ipaddress.ip_address(GW4).packed
    packets = [ip(src, dst, 17, udp(src, dst, 62201, base64.b64encode(os.urandom(525)).rstrip(b"=")))
               for _ in range(count)]
    path = tmp_path / "gpg-flood.bin"
    path.write_bytes(dump(packets))
    path.chmod(0o644)
    return path


@pytest.mark.parametrize("budget", ["", ", budget = 1"], ids=["default-budget", "budget-1"])
def test_a_gnupg_flood_stays_within_the_budget(served: Lab, start_daemon: Any, gnupg: Homes,
                                              tmp_path: Path, budget: str) -> None:
    lab = served
    home = tmp_path / "home"
    home.mkdir()
    daemon = start_daemon(config(gnupg, tmp_path, budget))
    daemon.home = str(home)
    flood = lab.popen("other", [sys.executable, "-m", "gatekeeper.lab.bench.sender",
                                str(flood_file(tmp_path)), "--seconds", str(FLOOD_SECONDS),
                                "--repeat", "100", "--rate", str(FLOOD_RATE)],
                      stdout=subprocess.PIPE, text=True)
    time.sleep(2)  # the flood is up to speed
    opened = {}
    for door in ("gpgh", "spa"):
        if door == "spa":
            argv = ["env", f"HOME={home}", "fwknop", "-A", "tcp/2240", "-a", CLIENT4, "-D", GW4,
                    "-p", "62240", "--no-rc-file", "--use-hmac", "--key-base64-rijndael",
                    base64.b64encode(RIJNDAEL.encryption).decode(), "--key-base64-hmac",
                    base64.b64encode(RIJNDAEL.hmac).decode()]
            lab.run("client", argv)
        else:
            send(lab, daemon, gnupg, door, hmac=True)
        opened[door] = is_open(lab, "client", GW4, DOORS[door][1])
    assert flood.stdout is not None
    sent = json.loads(flood.stdout.readline())
    flood.wait(30)
    counts = spa_counts(daemon, "gpg")
    runs = counts.get("decrypt", 0)
    print(f"\nGnuPG flood ({budget or 'default budget 0.2'}): {sent['sent']:,} junk packets in "
          f"{sent['seconds']:.1f} s ({sent['sent'] / sent['seconds']:,.0f}/s) to the door without "
          f"HMAC: {runs:,} gpg runs ({runs / sent['seconds']:,.1f}/s), {counts.get('gpg_busy', 0):,} "
          f"dropped over budget (gpg_busy), {sum(counts.values()):,} verdicts counted; first SYN "
          f"through: GnuPG+HMAC door {opened['gpgh']}, Rijndael door {opened['spa']}")
    assert sum(counts.values()) > 0 and daemon.proc.poll() is None
    if not budget:
        assert counts.get("gpg_busy", 0) > 0, counts
        assert opened == {"gpgh": True, "spa": True}, "legitimate clients get in during the flood"


def test_a_gnupg_stanza_of_stock_fwknopd_imports_and_the_same_client_command_opens(
        served: Lab, start_daemon: Any, gnupg: Homes, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """access.conf with GPG_* that stock fwknopd runs (the client's packet opens 22 there),
    imported: gatekeeper opens 22 to the same client command, first SYN."""
    from types import SimpleNamespace

    from gatekeeper import cli
    from tests.lab.stock_fwknopd import opened, running

    lab = served
    access, server = tmp_path / "access.conf", tmp_path / "fwknopd.conf"
    access.write_text(f"SOURCE ANY\nOPEN_PORTS tcp/22\nGPG_HOME_DIR {gnupg.home('server')}\n"
                      f"GPG_DECRYPT_ID {gnupg.key_id('server')}\nGPG_ALLOW_NO_PW Y\n"
                      f"GPG_REMOTE_ID {gnupg.fpr['client'][-8:]}\nHMAC_KEY_BASE64 {H}\n")
    server.write_text("PCAP_INTF eth0\nPCAP_FILTER udp port 62201\n")
    for path in (access, server):
        path.chmod(0o600)
    client = SimpleNamespace(home=str(tmp_path / "home"))
    os.mkdir(client.home)
    with running(lab, tmp_path, shut=[22]):
        assert not is_open(lab, "client", GW4, 22)
        send(lab, client, gnupg, "gpg", hmac=True)
        assert opened(lab, 22), (tmp_path / "fwknopd.log").read_text()
    out = tmp_path / "gatekeeper.toml"
    rc = cli.main(["import-fwknop", str(access), "--server-conf", str(server), "-o", str(out),
                   "--key-dir", str(tmp_path / "keys")])
    assert rc == 0, capsys.readouterr().err
    start_daemon(out.read_text())
    assert not is_open(lab, "client", GW4, 22)
    send(lab, client, gnupg, "gpg", hmac=True)
    assert is_open(lab, "client", GW4, 22), "the first SYN after the packet"
