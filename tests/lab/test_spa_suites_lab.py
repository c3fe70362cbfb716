"""The stock fwknop client's other suites against the real daemon in the namespace lab: each
door names one suite (spa_digests, spa_hmac_digest, spa_encryption_mode, spa_hmac = false,
passphrase keys), the client's first SYN right after its packet connects, and a packet of
a suite the door does not take is refused in its own counter."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.lab.netns import CLIENT4, GW4, Lab
from tests.lab.support import grants, is_open, needs_fwknop, spa_counts, spa_daemon, wait_count

pytestmark = [pytest.mark.lab, needs_fwknop]

K = base64.b64encode(bytes(range(32))).decode()
H = base64.b64encode(bytes(range(100, 164))).decode()
BASE64_KEYS = ("--key-base64-rijndael", K, "--key-base64-hmac", H)
PHRASE, HMAC_PHRASE = "open sesame", "a longer HMAC passphrase"

# name -> (spa_port, opened tcp port, door settings, key file text)
DOORS: dict[str, tuple[int, int, str, str]] = {
    "spa": (62201, 22, "", f"KEY_BASE64: {K}\nHMAC_KEY_BASE64: {H}\n"),
    "digests": (62210, 2210, 'spa_digests = ["md5", "sha1", "sha256"]', ""),
    "hmac512": (62211, 2211, 'spa_hmac_digest = "sha512"', ""),
    "hmacmd5": (62212, 2212, 'spa_hmac_digest = "md5"', ""),
    "cfb": (62213, 2213, 'spa_encryption_mode = "cfb"', ""),
    "ofb": (62214, 2214, 'spa_encryption_mode = "ofb"', ""),
    "ctr": (62215, 2215, 'spa_encryption_mode = "ctr"', ""),
    "ecb": (62216, 2216, 'spa_encryption_mode = "ecb"', ""),
    "bare": (62217, 2217, "spa_hmac = false", f"KEY {PHRASE}\n"),
    "legacy": (62218, 2218, 'spa_hmac = false\nspa_encryption_mode = "legacy"', "KEY short\n"),
    "phrase": (62219, 2219, "", f"KEY    {PHRASE}\nHMAC_KEY    {HMAC_PHRASE}\n"),
    "anysrc": (62220, 2220, "spa_other_source = true", ""),
}


@pytest.fixture(scope="module")
def served(lab: Lab) -> Lab:
    for _, port, _, _ in DOORS.values():
        if port != 22:  # the lab serves 22 itself
            lab.serve_tcp("gw", port)
    return lab


@pytest.fixture
def daemon(served: Lab, start_daemon: Any, tmp_path: Path) -> Iterator[Any]:
    doors = {name: (keys or DOORS["spa"][3], f'spa_port = {spa_port}\nopens = ["{port}:tcp"]\n{extra}')
             for name, (spa_port, port, extra, keys) in DOORS.items()}
    yield spa_daemon(start_daemon, tmp_path, doors)


def send(lab: Lab, daemon: Any, door: str, *flags: str, keys: tuple[str, ...] = BASE64_KEYS,
         hmac: bool = True, source: tuple[str, ...] = ("-a", CLIENT4)) -> None:
    argv = ["env", f"HOME={daemon.home}", "fwknop", "-A", f"tcp/{DOORS[door][1]}", *source,
            "-D", GW4, "-p", str(DOORS[door][0]), "--no-rc-file", *keys, *flags]
    lab.run("client", [*argv, "--use-hmac"] if hmac else argv)


@pytest.mark.parametrize(("door", "flags"), [
    ("digests", ("-m", "md5")),
    ("hmac512", ("--hmac-digest-type", "sha512")),
    ("hmacmd5", ("--hmac-digest-type", "md5")),
    ("cfb", ("-M", "cfb")),
    ("ofb", ("-M", "ofb")),
    ("ctr", ("-M", "ctr")),
    ("ecb", ("-M", "ecb")),
])
def test_a_door_naming_the_suite_opens_to_the_first_syn(served: Lab, daemon: Any, door: str,
                                                        flags: tuple[str, ...]) -> None:
    port = DOORS[door][1]
    assert not is_open(served, "client", GW4, port)
    send(served, daemon, door, *flags)
    assert is_open(served, "client", GW4, port), "the first SYN right after the SPA packet"
    assert wait_count(daemon, "ok", 1, door)["ok"] == 1
    assert not is_open(served, "other", GW4, port)


def test_rijndael_only_legacy_and_passphrase_doors(served: Lab, daemon: Any) -> None:
    lab = served
    assert any("door[8] (bare).spa_hmac = false" in line and "not authenticated" in line
               for line in daemon.lines), daemon.lines
    send(lab, daemon, "bare", keys=("--key-rijndael", PHRASE), hmac=False)
    assert is_open(lab, "client", GW4, DOORS["bare"][1])
    send(lab, daemon, "legacy", "-M", "legacy", keys=("--key-rijndael", "short"), hmac=False)
    assert is_open(lab, "client", GW4, DOORS["legacy"][1])
    send(lab, daemon, "phrase", keys=("--key-rijndael", PHRASE, "--key-hmac", HMAC_PHRASE))
    assert is_open(lab, "client", GW4, DOORS["phrase"][1])
    for door in ("bare", "legacy", "phrase"):
        assert wait_count(daemon, "ok", 1, door)["ok"] == 1, door


def test_a_suite_the_door_does_not_take_is_counted_in_its_own_stage(
        served: Lab, daemon: Any) -> None:
    lab = served
    send(lab, daemon, "spa", "-m", "md5")  # the default door takes sha256 and up
    send(lab, daemon, "spa", "-m", "sha1")
    send(lab, daemon, "spa", "--hmac-digest-type", "sha384")
    send(lab, daemon, "spa", keys=("--key-base64-rijndael", K), hmac=False)
    send(lab, daemon, "hmac512")  # the client's default sha256 on a sha512 door
    send(lab, daemon, "ctr", "-M", "cbc")
    deadline = time.monotonic() + 5
    while sum((counts := spa_counts(daemon)).values()) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert counts.get("digest_type") == 2 and counts.get("hmac_type") == 1, counts
    # the one without HMAC: shorter than any sha256-HMAC packet, or its HMAC does not match
    assert counts.get("size", 0) + counts.get("hmac", 0) == 1 and "ok" not in counts, counts
    assert wait_count(daemon, "hmac_type", 1, "hmac512").get("hmac_type") == 1
    assert set(wait_count(daemon, "decrypt", 1, "ctr")) & {"decrypt", "parse"}
    assert not is_open(lab, "client", GW4, 22)
    assert not is_open(lab, "client", GW4, DOORS["ctr"][1])
    assert grants(daemon, "spa") == 0


def test_source_from_the_packet_only_where_the_door_allows_it(served: Lab, daemon: Any) -> None:
    """fwknop -s sends 0.0.0.0 for "the address this packet comes from": a door with
    spa_other_source = true grants that address (fwknopd's REQUIRE_SOURCE_ADDRESS N, its
    default); gatekeeper's default door refuses it at stage source."""
    lab = served
    send(lab, daemon, "spa", source=("-s",))
    assert wait_count(daemon, "source", 1, "spa").get("source") == 1
    assert not is_open(lab, "client", GW4, 22)
    port = DOORS["anysrc"][1]
    send(lab, daemon, "anysrc", source=("-s",))
    assert is_open(lab, "client", GW4, port), "the first SYN right after the SPA packet"
    assert wait_count(daemon, "ok", 1, "anysrc")["ok"] == 1
    assert not is_open(lab, "other", GW4, port)
