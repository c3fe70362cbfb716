"""The stock fwknop client's other suites (-m, --hmac-digest-type, -M, no --use-hmac,
passphrase keys) through fwknop.verify: the real client's packets are the oracle. Each
packet is made with ``fwknop ... -T --save-packet FILE`` (test mode: nothing is sent)."""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import subprocess
import time
from pathlib import Path

import pytest

from gatekeeper.config import ConfigError
from gatekeeper.config.load import loads
from gatekeeper.engine import Engine
from gatekeeper.engine.special import TYPE_PROBES, SpecialDoors
from gatekeeper.model import UDP, Config
from gatekeeper.spa import fwknop
from gatekeeper.spa.cipher import Suite
from gatekeeper.spa.fwknop import SpaKeys, Stage
from gatekeeper.spa.replay import ReplayCache
from gatekeeper.spa.request import Request, encode
from tests.fixtures.configs import one_door
from tests.fixtures.needs import need_tool

CLIENT = "203.0.113.10"
KEYS = SpaKeys(bytes(range(32)), bytes(range(100, 164)), "test")
K = base64.b64encode(KEYS.encryption).decode()
H = base64.b64encode(KEYS.hmac).decode()
DEFAULT = Suite()


@pytest.fixture
def client(tmp_path: Path) -> Path:
    need_tool("fwknop", "Debian's fwknop-client, the oracle of these tests")
    return tmp_path


def packet(home: Path, *flags: str, keys: tuple[str, ...] = ("--key-base64-rijndael", K,
           "--key-base64-hmac", H), hmac: bool = True) -> bytes:
    """What the stock client sends for ``flags`` (made in test mode, never sent)."""
    saved = home / "packet"
    argv = ["fwknop", "-A", "tcp/22", "-a", CLIENT, "-D", "127.0.0.1", "--no-rc-file", "-T",
            "--save-packet", str(saved), *keys, *flags]
    if hmac:
        argv.append("--use-hmac")
    subprocess.run(argv, env={**os.environ, "HOME": str(home)}, check=True, timeout=20,
                   capture_output=True)
    return saved.read_bytes().strip()


def verify(data: bytes, suite: Suite, keys: SpaKeys = KEYS) -> Stage:
    return fwknop.verify(data, keys, time.time(), replay=ReplayCache(), allowed={("tcp", 22)},
                         source=CLIENT, suite=suite).stage


def test_the_default_suite_takes_the_clients_default_packet(client: Path) -> None:
    assert verify(packet(client), DEFAULT) is Stage.OK


@pytest.mark.parametrize("digest", ["md5", "sha1"])
def test_weak_message_digests_pass_only_where_the_door_names_them(client: Path, digest: str) -> None:
    data = packet(client, "-m", digest)
    assert verify(data, DEFAULT) is Stage.DIGEST_TYPE  # authenticated, but -m md5 is refused
    assert verify(data, Suite(digests=frozenset({"sha256", digest}))) is Stage.OK
    assert verify(packet(client, "-m", "sha512"), DEFAULT) is Stage.OK


@pytest.mark.parametrize("digest", ["md5", "sha1", "sha384", "sha512"])
def test_hmac_digest_type_is_a_door_setting_and_another_type_its_own_stage(
        client: Path, digest: str) -> None:
    data = packet(client, "--hmac-digest-type", digest)
    assert verify(data, Suite(hmac_digest=digest)) is Stage.OK
    assert verify(data, DEFAULT) is Stage.HMAC_TYPE  # the right key, another type
    other = SpaKeys(KEYS.encryption, bytes(range(1, 65)), "other")
    assert verify(data, DEFAULT, other) is Stage.HMAC  # a wrong key stays a wrong key
    assert verify(data, Suite(hmac_digest=digest), other) is Stage.HMAC
    assert verify(packet(client), Suite(hmac_digest=digest)) is Stage.HMAC_TYPE


@pytest.mark.parametrize("mode", ["cfb", "ofb", "ctr", "ecb"])
def test_encryption_modes_pass_where_the_door_names_the_mode(client: Path, mode: str) -> None:
    data = packet(client, "-M", mode)
    assert verify(data, Suite(mode=mode)) is Stage.OK
    assert verify(data, DEFAULT) in (Stage.DECRYPT, Stage.PARSE)
    assert verify(packet(client), Suite(mode=mode)) in (Stage.DECRYPT, Stage.PARSE)


def test_rijndael_only_packets_pass_only_on_a_door_without_hmac(client: Path) -> None:
    data = packet(client, keys=("--key-base64-rijndael", K), hmac=False)
    bare = Suite(hmac_digest=None)
    assert verify(data, bare) is Stage.OK
    assert verify(data, DEFAULT) in (Stage.SIZE, Stage.HMAC)
    assert verify(packet(client), bare) is Stage.DECRYPT  # with an HMAC: not for this door
    wrong = SpaKeys(bytes(range(1, 33)), b"", "wrong")
    assert verify(data, bare, wrong) in (Stage.DECRYPT, Stage.PARSE)


@pytest.mark.parametrize("key", ["legacypass", "a", "k" * 16, "k" * 17, "k" * 32])
def test_legacy_mode_pads_short_keys_as_fwknop_before_2_5_did(client: Path, key: str) -> None:
    data = packet(client, "-M", "legacy", keys=("--key-rijndael", key), hmac=False)
    keys = fwknop.parse_key_file(f"KEY {key}\n", "access.conf", with_hmac=False)
    assert verify(data, Suite(mode="legacy", hmac_digest=None), keys) is Stage.OK
    cbc = verify(data, Suite(hmac_digest=None), keys)  # 16 bytes: legacy and cbc agree
    assert cbc is Stage.OK if len(key) == 16 else cbc in (Stage.DECRYPT, Stage.PARSE)


@pytest.mark.parametrize(("key", "hmac_key"), [
    ("a", "b"), ("open sesame", "and a longer HMAC passphrase"), ("k" * 32, "h" * 128),
])
def test_passphrase_keys_as_access_conf_writes_them(client: Path, key: str, hmac_key: str) -> None:
    data = packet(client, keys=("--key-rijndael", key, "--key-hmac", hmac_key))
    for text in (f"KEY    {key}\nHMAC_KEY    {hmac_key}\n", f"KEY: {key}\nHMAC_KEY={hmac_key}\n"):
        keys = fwknop.parse_key_file(text, "access.conf")
        assert verify(data, DEFAULT, keys) is Stage.OK, text
    mixed = fwknop.parse_key_file(f"KEY {key}\nHMAC_KEY_BASE64: {H}\n", "k")
    assert verify(packet(client, keys=("--key-rijndael", key, "--key-base64-hmac", H)),
                  DEFAULT, mixed) is Stage.OK


def test_our_encoder_matches_the_client_in_every_suite() -> None:
    for suite, digest in ((Suite(mode="ctr", hmac_digest="sha512"), "md5"),
                          (Suite(mode="legacy", hmac_digest=None), "sha1"),
                          (Suite(mode="ofb", hmac_digest="md5"), "sha384")):
        data = encode(KEYS, Request([("tcp", 22)], CLIENT, time.time(), digest=digest), suite=suite)
        assert verify(data, Suite(suite.mode, suite.hmac_digest, frozenset({digest}))) is Stage.OK


# -- the door settings -------------------------------------------------------------------

DOOR = """
[[door]]
name = "spa"
spa = true
key_file = "{key_file}"
opens = ["22:tcp"]
{extra}
"""


def load(tmp_path: Path, extra: str, keys: str = f"KEY_BASE64: {K}\nHMAC_KEY_BASE64: {H}\n") -> Config:
    path = tmp_path / "spa.key"
    path.write_text(keys)
    path.chmod(0o600)
    return loads(DOOR.format(key_file=path, extra=extra), "t.toml")


def test_door_settings_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spa = load(tmp_path, "").doors[0].spa
    assert spa is not None
    assert (spa.hmac, spa.hmac_digest, spa.digests, spa.mode) == (
        True, "sha256", ("sha256", "sha384", "sha512"), "cbc")
    assert not caplog.records
    spa = load(tmp_path, 'spa_hmac_digest = "sha512"\nspa_digests = ["md5", "sha256"]\n'
               'spa_encryption_mode = "ctr"').doors[0].spa
    assert spa is not None
    assert (spa.hmac_digest, spa.digests, spa.mode) == ("sha512", ("md5", "sha256"), "ctr")
    with caplog.at_level(logging.WARNING, "gatekeeper.config"):
        spa = load(tmp_path, 'spa_hmac = false\nspa_encryption_mode = "legacy"',
                   keys="KEY  a passphrase\n").doors[0].spa
    assert spa is not None and not spa.hmac and spa.keys.encryption == b"a passphrase"
    assert "t.toml: door[0] (spa).spa_hmac = false: its SPA packets are not authenticated" in caplog.text


@pytest.mark.parametrize(("extra", "keys", "error"), [
    ('spa_encryption_mode = "legacy"', None, "spa_encryption_mode: \"legacy\" packets carry no HMAC"),
    ('spa_encryption_mode = "pcbc"', None, "spa_encryption_mode: 'pcbc': use one of cbc,"),
    ('spa_hmac_digest = "sha3_256"', None, "spa_hmac_digest: 'sha3_256': use one of md5,"),
    ("spa_digests = []", None, "spa_digests: names no digest"),
    ('spa_digests = ["sha256", "crc32"]', None, "spa_digests[1]: 'crc32'"),
    ('spa_hmac = "no"', None, "spa_hmac: must be true or false"),
    ('spa_hmac = false\nspa_hmac_digest = "sha1"', "KEY a\n", "spa_hmac_digest: not with spa_hmac"),
    ("spa_hmac = false", None, "spa.key:2: expected 'KEY_BASE64: ...' or 'KEY: ...'"),
    ("", "KEY a\n", "no HMAC_KEY_BASE64 line"),
])
def test_bad_door_settings_are_one_error(tmp_path: Path, extra: str, keys: str | None,
                                         error: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, extra, *(() if keys is None else (keys,)))
    assert error in str(info.value) and H not in str(info.value), str(info.value)


# -- the special doors: the cost of telling hmac_type ----------------------------------

TWO_DOORS = one_door('name = "spa"\nspa = true\nkey_file = "{spa}"\nopens = ["22"]')


def specials(tmp_path: Path) -> SpecialDoors:
    paths = {}
    for name, text in (("spa", f"KEY_BASE64: {K}\nHMAC_KEY_BASE64: {H}\n"),):
        path = tmp_path / f"{name}.key"
        path.write_text(text)
        path.chmod(0o600)
        paths[name] = str(path)
    config = loads(TWO_DOORS.format(**paths), "t.toml")
    return SpecialDoors(config, Engine(config))


SRC = ipaddress.ip_address(CLIENT).packed


def handle(doors: SpecialDoors, data: bytes, now: float) -> object:
    return doors.handle(SRC, bytes(4), UDP, 62201, 0, data, now, time.time())


def test_telling_hmac_type_apart_is_bounded_a_second(tmp_path: Path) -> None:
    doors = specials(tmp_path)
    for i in range(TYPE_PROBES + 10):
        data = encode(KEYS, Request([("tcp", 22)], CLIENT, time.time()), suite=Suite(hmac_digest="sha512"))
        handle(doors, data, 5.0 + i / 1000)
    assert doors.counts[("spa", "hmac_type")] == TYPE_PROBES
    assert doors.counts[("spa", "hmac")] == 10  # over the budget: one HMAC, counted as hmac
    handle(doors, data, 6.5)  # the next second: told apart again
    assert doors.counts[("spa", "hmac_type")] == TYPE_PROBES + 1
