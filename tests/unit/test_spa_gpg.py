"""GnuPG SPA (fwknop --gpg-recipient-key/--gpg-signer-key): the pure checks, the gpg adapter
with real throwaway GnuPG homes (tests/fixtures/gnupg.py), the config, and the worker."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.config import ConfigError
from gatekeeper.config.load import loads
from gatekeeper.engine import Reason
from gatekeeper.model import Config, SpaGpg
from gatekeeper.queue import gpg as adapter
from gatekeeper.queue.worker import Worker
from gatekeeper.spa import gpg
from gatekeeper.spa.fwknop import Stage
from gatekeeper.spa.request import Request
from tests.fixtures.configs import one_door
from tests.fixtures.doors import CLIENT, WALL, udp, write_key
from tests.fixtures.fakes import FakeGrants
from tests.fixtures.gnupg import PASSPHRASE, Homes, seal

HMAC = bytes(range(100, 164))


def plaintext(now: float = WALL, address: str = CLIENT, port: int = 22) -> bytes:
    return Request([("tcp", port)], address, now).message()


def settings(homes: Homes, **kw: Any) -> SpaGpg:
    values: dict[str, Any] = {"home": homes.home("server"), "recipient": homes.key_id("server"),
                              "signers": (homes.key_id("client"),)}
    values.update(kw)
    return SpaGpg(**values)


def judge(homes: Homes, packet: bytes, policy: gpg.Policy | None = None, **kw: Any) -> Stage | bytes:
    sealed = gpg.unwrap(packet, b"", None)
    assert isinstance(sealed, gpg.Sealed), sealed
    s = settings(homes, **kw)
    run, seconds = adapter.decrypt(s, sealed.message)
    assert 0 <= seconds < s.timeout + 1
    return gpg.judge(run, policy or gpg.Policy(s.recipient, s.signers, s.fingerprints,
                                               s.require_signature))


# -- the pure outer checks ----------------------------------------------------------------


def test_unwrap_checks_size_and_hmac_before_any_gnupg_work(gnupg: Homes) -> None:
    packet = seal(gnupg, plaintext(), hmac_key=HMAC)
    assert isinstance(gpg.unwrap(packet, HMAC, "sha256"), gpg.Sealed)
    assert gpg.unwrap(packet, bytes(64), "sha256") is Stage.HMAC
    assert gpg.unwrap(packet[:-1] + (b"B" if packet[-1:] == b"A" else b"A"), HMAC, "sha256") is Stage.HMAC
    assert gpg.unwrap(b"A" * 300, b"", None) is Stage.SIZE  # fwknopd: Rijndael's length
    assert gpg.unwrap(b"A" * 1501, b"", None) is Stage.SIZE
    assert gpg.unwrap(b"*" * 600, b"", None) is Stage.DECRYPT  # not base64
    sealed = gpg.unwrap(packet[:-43], b"", None)
    assert isinstance(sealed, gpg.Sealed) and sealed.message[:1] == b"\x85"  # hQ put back


def test_budget_bounds_the_share_of_time_spent_in_gnupg() -> None:
    budget = gpg.Budget(0.2, 1.0)
    assert budget.take(0.0)
    budget.spend(1.5)  # a run that took longer than the bucket holds
    assert not budget.take(1.0)  # -0.5 + 0.2
    assert not budget.take(2.0)  # -0.1
    assert budget.take(2.6)
    runs = 0
    for i in range(10_000):  # 100 s of packets every 10 ms, each run 50 ms
        if budget.take(4.0 + i / 100):
            budget.spend(0.05)
            runs += 1
    assert runs * 0.05 <= 0.2 * 100 + 1.0 + 0.05


def status(*lines: str) -> str:
    return "".join(f"[GNUPG:] {line}\n" for line in lines)


SERVER_FPR = "A" * 40
SIGNER_FPR = "B" * 24 + "0123456789ABCDEF"
OK_LINES = (f"DECRYPTION_KEY {SERVER_FPR} {SERVER_FPR} u", "BEGIN_DECRYPTION", "NEWSIG",
            "GOODSIG 0123456789ABCDEF someone",
            f"VALIDSIG {SIGNER_FPR} 2026-12-07 1 0 4 0 22 10 00 {SIGNER_FPR}",
            "DECRYPTION_OKAY", "GOODMDC", "END_DECRYPTION")


@pytest.mark.parametrize(("lines", "code", "policy", "stage"), [
    (OK_LINES, 0, gpg.Policy("A" * 16, ("0123456789ABCDEF",)), None),
    (OK_LINES, 0, gpg.Policy(SERVER_FPR, (), (SIGNER_FPR,)), None),
    (OK_LINES, 0, gpg.Policy("A" * 8, ("89ABCDEF",)), None),
    (OK_LINES, 2, gpg.Policy("A" * 8, ("89ABCDEF",)), Stage.DECRYPT),  # gpg failed anyway
    (OK_LINES, 0, gpg.Policy("C" * 16, ("0123456789ABCDEF",)), Stage.GPG_RECIPIENT),
    (OK_LINES, 0, gpg.Policy("A" * 16, ("1123456789ABCDEF",)), Stage.GPG_SIGNER),
    (OK_LINES, 0, gpg.Policy("A" * 16, (), ("C" * 40,)), Stage.GPG_SIGNER),
    (OK_LINES[:2] + OK_LINES[5:], 0, gpg.Policy("A" * 16, ("0123456789ABCDEF",)), Stage.GPG_UNSIGNED),
    (OK_LINES[:2] + OK_LINES[5:], 0, gpg.Policy("A" * 16, (), (), False), None),
    ((*OK_LINES, "NEWSIG", "BADSIG 0123456789ABCDEF x"), 0, gpg.Policy("A" * 16), Stage.GPG_SIGNER),
    ((*OK_LINES[:3], "ERRSIG 0123456789ABCDEF 22 10 00 1 9", *OK_LINES[5:]), 2,
     gpg.Policy("A" * 16), Stage.GPG_SIGNER),
    (OK_LINES[:-2], 0, gpg.Policy("A" * 16), Stage.DECRYPT),  # no MDC
    (("ENC_TO 1111111111111111 1 0", "NO_SECKEY 1111111111111111", "DECRYPTION_FAILED"), 2,
     gpg.Policy("A" * 16), Stage.GPG_RECIPIENT),
    (("DECRYPTION_FAILED",), 2, gpg.Policy("A" * 16), Stage.DECRYPT),
])
def test_judge_reads_the_status_lines(lines: tuple[str, ...], code: int, policy: gpg.Policy,
                                      stage: Stage | None) -> None:
    got = gpg.judge(gpg.Decrypted(b"plain", status(*lines), code=code), policy)
    assert got == (b"plain" if stage is None else stage)
    assert gpg.judge(gpg.Decrypted(b"plain", status(*lines), "timeout", code), policy) in (
        Stage.DECRYPT, Stage.GPG_RECIPIENT)


_WORDS = st.sampled_from(["NEWSIG", "GOODSIG", "VALIDSIG", "BADSIG", "ERRSIG", "DECRYPTION_OKAY",
                          "GOODMDC", "NO_SECKEY", "DECRYPTION_KEY", "DECRYPTION_FAILED", "X"])


@given(data=st.binary(max_size=1600), lines=st.lists(st.tuples(_WORDS, st.text(max_size=60)), max_size=12))
def test_unwrap_and_judge_never_raise(data: bytes, lines: list[tuple[str, str]]) -> None:
    assert isinstance(gpg.unwrap(data, HMAC, "sha256"), Stage | gpg.Sealed)
    assert isinstance(gpg.unwrap(data, b"", None), Stage | gpg.Sealed)
    text = status(*(f"{w} {rest}".rstrip() for w, rest in lines))
    for code in (0, 2):
        got = gpg.judge(gpg.Decrypted(b"p", text, code=code), gpg.Policy("A" * 16, ("A" * 8,)))
        assert got == b"p" or isinstance(got, Stage)


# -- real gpg, throwaway homes -------------------------------------------------------------


def test_real_gnupg_signed_by_an_allowed_signer(gnupg: Homes) -> None:
    message = plaintext()
    packet = seal(gnupg, message)
    # the first run starts the home's gpg-agent: it must not keep the status pipe open
    subprocess.run(["gpgconf", "--homedir", gnupg.home("server"), "--kill", "gpg-agent"], check=True,
                   timeout=30)
    assert judge(gnupg, packet) == message
    assert judge(gnupg, seal(gnupg, message), fingerprints=(gnupg.fpr["client"],), signers=()) == message


def test_real_gnupg_refusals_in_their_stages(gnupg: Homes) -> None:
    message = plaintext()
    assert judge(gnupg, seal(gnupg, message, signer="stranger")) is Stage.GPG_SIGNER
    assert judge(gnupg, seal(gnupg, message, signer=None)) is Stage.GPG_UNSIGNED
    assert judge(gnupg, seal(gnupg, message, signer=None), require_signature=False,
                 signers=()) == message
    assert judge(gnupg, seal(gnupg, message, recipient="other")) is Stage.GPG_RECIPIENT
    # decrypted, but the door names another of the home's keys as its recipient
    assert judge(gnupg, seal(gnupg, message), recipient=gnupg.key_id("client")) is Stage.GPG_RECIPIENT
    packet = bytearray(seal(gnupg, message))
    packet[400] = ord("A") if packet[400] != ord("A") else ord("B")  # tampered ciphertext
    assert judge(gnupg, bytes(packet)) in (Stage.DECRYPT, Stage.GPG_SIGNER)


def test_real_gnupg_passphrase_file(gnupg: Homes, tmp_path: Path) -> None:
    message = plaintext()
    packet = seal(gnupg, message, recipient="locked")
    pw = write_key(tmp_path / "pw", PASSPHRASE + "\n")
    locked = {"home": gnupg.home("locked"), "recipient": gnupg.key_id("locked")}
    wrong = write_key(tmp_path / "wrong", "nope\n")  # first: gpg-agent then keeps the right one
    assert judge(gnupg, packet, passphrase_file=wrong, **locked) is Stage.DECRYPT
    assert judge(gnupg, packet, passphrase_file=pw, **locked) == message


def test_adapter_failures_refuse(gnupg: Homes, monkeypatch: pytest.MonkeyPatch) -> None:
    sealed = gpg.unwrap(seal(gnupg, plaintext()), b"", None)
    assert isinstance(sealed, gpg.Sealed)
    monkeypatch.setattr(adapter, "GPG", "/nonexistent/gpg")
    run, _ = adapter.decrypt(settings(gnupg), sealed.message)
    assert run.error.startswith("cannot run") and gpg.judge(run, gpg.Policy("A" * 16)) is Stage.DECRYPT
    monkeypatch.setattr(adapter, "GPG", "/bin/sh")  # stands in for a gpg that hangs
    monkeypatch.setattr(adapter, "argv", lambda s, fd: ["/bin/sh", "-c", "sleep 5"])
    run, _ = adapter.decrypt(settings(gnupg, timeout=0.2), sealed.message)
    assert run.error == "timeout" and run.plaintext is None  # killed, not waited for
    monkeypatch.setattr(adapter, "argv", lambda s, fd: ["/bin/sh", "-c", "yes | head -c 100000"])
    run, _ = adapter.decrypt(settings(gnupg), sealed.message)
    assert run.error == "output over the cap" and run.plaintext is None


# -- config and worker ---------------------------------------------------------------------


def gpg_config(homes: Homes, tmp_path: Path, extra: str = "", key: bool = False) -> str:
    key_line = ""
    if key:
        import base64
        path = write_key(tmp_path / "hmac.key", f"HMAC_KEY_BASE64: {base64.b64encode(HMAC).decode()}\n")
        key_line = f'key_file = "{path}"\n'
    return one_door(f'name = "gpg"\nspa = true\n{key_line}opens = ["22"]\n'
                    f'spa_gpg = {{ home = "{homes.home("server")}", recipient = "{homes.key_id("server")}", '
                    f'signers = ["{homes.key_id("client")}"]{extra} }}')


def test_config_reads_spa_gpg(gnupg: Homes, tmp_path: Path) -> None:
    door = loads(gpg_config(gnupg, tmp_path), "t.toml").doors[0]
    assert door.spa is not None and door.spa.gpg is not None and door.spa.keys is None
    g = door.spa.gpg
    assert g.recipient == gnupg.key_id("server") and g.require_signature and g.hmac_key == b""
    assert not door.spa.hmac
    keyed = loads(gpg_config(gnupg, tmp_path, key=True), "t.toml").doors[0].spa
    assert keyed is not None and keyed.hmac and keyed.gpg is not None and keyed.gpg.hmac_key == HMAC


@pytest.mark.parametrize(("extra", "message"), [
    (', budget = 2', "spa_gpg.budget: must be more than 0 and at most 1"),
    (', fingerprints = ["abc"]', "spa_gpg.fingerprints[0]: 'abc': must be a fingerprint"),
    (', require_signature = "yes"', "spa_gpg.require_signature: must be true or false"),
    (', passphrase_file = "/nonexistent/pw"', "spa_gpg.passphrase_file: /nonexistent/pw: no such file"),
    (', colour = 1', "spa_gpg.colour: unknown key"),
])
def test_config_errors_are_one_line(gnupg: Homes, tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        loads(gpg_config(gnupg, tmp_path, extra), "t.toml")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_config_requires_signers_unless_signatures_are_not_required(
        gnupg: Homes, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = gpg_config(gnupg, tmp_path).replace(f'signers = ["{gnupg.key_id("client")}"]', "timeout = 2")
    with pytest.raises(ConfigError, match=r"spa_gpg\.signers: name the signers"):
        loads(text, "t.toml")
    text = text.replace("timeout = 2", "require_signature = false")
    with caplog.at_level(logging.WARNING, "gatekeeper.config"):
        loads(text, "t.toml")
    assert "require_signature = false" in caplog.text
    with pytest.raises(ConfigError, match=r"home: /nope: no such directory"):
        loads(text.replace(gnupg.home("server"), "/nope"), "t.toml")
    with pytest.raises(ConfigError, match=r"recipient: 'me@example': must be the key ID"):
        loads(text.replace(gnupg.key_id("server"), "me@example"), "t.toml")


def worker(cfg: Config) -> tuple[Worker, FakeGrants]:
    grants = FakeGrants()
    return Worker(cfg, grants, lambda m: None, clock=lambda: 5.0, wall=lambda: WALL), grants


def test_worker_grants_a_gnupg_packet_before_the_verdict(gnupg: Homes, tmp_path: Path) -> None:
    w, grants = worker(loads(gpg_config(gnupg, tmp_path), "t.toml"))
    packet = seal(gnupg, plaintext())
    assert not w.on_packet(udp(packet), 5.0)
    assert grants.added == [(CLIENT, "gpg")]
    assert not w.on_packet(udp(packet), 5.0)  # replayed
    assert not w.on_packet(udp(seal(gnupg, plaintext(), signer="stranger")), 5.0)
    assert not w.on_packet(udp(seal(gnupg, plaintext(port=23))), 5.0)
    assert w.spa_counts == {("gpg", "ok"): 1, ("gpg", "replay"): 1, ("gpg", "gpg_signer"): 1,
                            ("gpg", "access"): 1}
    assert w.counts[Reason.ERROR] == 0


def test_worker_checks_the_hmac_first_and_counts_the_flood_over_budget(
        gnupg: Homes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w, grants = worker(loads(gpg_config(gnupg, tmp_path, ", budget = 0.01, timeout = 0.5", key=True),
                             "t.toml"))
    runs: list[bytes] = []
    real = adapter.decrypt

    def slow(settings: SpaGpg, message: bytes) -> tuple[gpg.Decrypted, float]:
        runs.append(message)
        return real(settings, message)[0], 0.3  # as if each run took 0.3 s

    monkeypatch.setattr(adapter, "decrypt", slow)
    assert not w.on_packet(udp(seal(gnupg, plaintext())), 5.0)  # no HMAC on an HMAC door
    assert w.spa_counts == {("gpg", "hmac"): 1} and not runs
    junk = os.urandom(600).hex().encode()[:700]  # GnuPG-looking to a door without HMAC
    w2, _ = worker(loads(gpg_config(gnupg, tmp_path, ", budget = 0.01, timeout = 0.5"), "t.toml"))
    for _ in range(20):
        assert not w2.on_packet(udp(junk), 5.0)
    # the bucket holds 0.5 s: two runs of 0.3 s, then nothing until it fills again
    assert w2.spa_counts == {("gpg", "decrypt"): 2, ("gpg", "gpg_busy"): 18} and len(runs) == 2
    assert not w.on_packet(udp(seal(gnupg, plaintext(), hmac_key=HMAC)), 5.0)
    assert grants.added == [(CLIENT, "gpg")]


def test_a_gnupg_door_with_another_hmac_digest_and_message_digest(gnupg: Homes, tmp_path: Path) -> None:
    text = gpg_config(gnupg, tmp_path, key=True).replace(
        'opens = ["22"]', 'opens = ["22"]\nspa_hmac_digest = "sha512"\nspa_digests = ["sha1"]')
    w, grants = worker(loads(text, "t.toml"))
    sha1 = Request([("tcp", 22)], CLIENT, WALL, digest="sha1").message()
    assert not w.on_packet(udp(seal(gnupg, sha1, hmac_key=HMAC)), 5.0)  # sha256 HMAC: hmac_type
    assert not w.on_packet(udp(seal(gnupg, plaintext(), hmac_key=HMAC, hmac_digest="sha512")), 5.0)
    assert not w.on_packet(udp(seal(gnupg, sha1, hmac_key=HMAC, hmac_digest="sha512")), 5.0)
    assert w.spa_counts == {("gpg", "hmac_type"): 1, ("gpg", "digest_type"): 1, ("gpg", "ok"): 1}
    assert grants.added == [(CLIENT, "gpg")]


def test_a_gnupg_door_without_gpg_installed_is_refused_at_load(
        gnupg: Homes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a door that refuses every packet at stage decrypt while the daemon runs: a
    config error naming the door's key and the package, at check, run and reload."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no gpg on it
    with pytest.raises(ConfigError) as err:
        loads(gpg_config(gnupg, tmp_path), "t.toml")
    assert "door[0] (gpg).spa_gpg" in str(err.value) and "apt install gnupg" in str(err.value)


def test_an_hmac_of_another_digest_type_counts_as_hmac_type(gnupg: Homes) -> None:
    """As on a Rijndael door: the right HMAC key under another --hmac-digest-type is
    told apart from a wrong key (the admin sees a setting to fix, not an attacker)."""
    packet = seal(gnupg, plaintext(), hmac_key=HMAC, hmac_digest="sha512")
    assert gpg.unwrap(packet, HMAC, "sha256", tell_types=True) is Stage.HMAC_TYPE
    assert gpg.unwrap(packet, HMAC, "sha256") is Stage.HMAC  # over the probes' budget
    assert gpg.unwrap(packet, bytes(64), "sha256", tell_types=True) is Stage.HMAC
    assert isinstance(gpg.unwrap(packet, HMAC, "sha512", tell_types=True), gpg.Sealed)
