"""Key files: one format written by every generator, every spelling read by every loader.

The loaders are the daemon's (the SPA door and the encrypted-sequence door, through the
config) and the clients' (``gatekeeper spa --key-file``, ``gatekeeper knock --encrypted
--key-file``). The spellings are what fwknop prints (``KEY_BASE64: ...``), the
``KEY_BASE64=...`` older gatekeeper releases documented and printed, and fwknop's
``access.conf`` spelling (``KEY_BASE64     ...``).
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from pathlib import Path

import pytest

from gatekeeper.cli import main
from gatekeeper.client import spa as client
from gatekeeper.client.knock import Target
from gatekeeper.config import ConfigError
from gatekeeper.config.load import loads
from gatekeeper.engine import Granted, Reason, Verdict
from gatekeeper.errors import GatekeeperError
from gatekeeper.spa import fwknop
from gatekeeper.spa import sequence as seqcodec
from gatekeeper.spa.replay import ReplayCache
from tests.fixtures.doors import CLIENT, CLIENT_B, GW_B, KEYS, SEQ_KEY, config_text, specials, write_key
from tests.fixtures.needs import need_tool
from tests.fixtures.spa import Fwknop

K = base64.b64encode(KEYS.encryption).decode()
H = base64.b64encode(KEYS.hmac).decode()
S = base64.b64encode(SEQ_KEY).decode()
RC_LINE = "[*] Creating initial rc file: /home/alice/.fwknoprc."

# Each spelling of the same two SPA keys; the sequence key in the same spellings below.
SPA_SPELLINGS = {
    "fwknop --key-gen": f"KEY_BASE64: {K}\nHMAC_KEY_BASE64: {H}\n",
    "equals": f"KEY_BASE64={K}\nHMAC_KEY_BASE64={H}\n",
    "equals, spaced": f"KEY_BASE64 = {K}\nHMAC_KEY_BASE64 = {H}\n",
    "access.conf": f"KEY_BASE64                  {K}\nHMAC_KEY_BASE64\t{H}\n",
    "comments, blanks, CRLF, no padding": f"# keys\r\n\r\n  HMAC_KEY_BASE64:{H.rstrip('=')}  \r\n"
                                          f"KEY_BASE64: {K}\r\n",
    "first run of fwknop --key-gen": f"{RC_LINE}\nKEY_BASE64: {K}\nHMAC_KEY_BASE64: {H}\n",
}
SEQ_SPELLINGS = {
    "documented": f"KEY_BASE64: {S}\n",
    "equals": f"KEY_BASE64={S}\n",
    "access.conf": f"KEY_BASE64     {S}\n",
    "comments": f"# sealed door\n\nKEY_BASE64 = {S.rstrip('=')}\n",
}


def key_files(where: Path, spa_text: str, seq_text: str) -> dict[str, str]:
    return {"spa": write_key(where / "spa.key", spa_text),
            "seq": write_key(where / "seq.key", seq_text),
            "once": write_key(where / "once.txt", "1001,1002,1003\n", 0o644)}


def load(tmp_path: Path, spa_text: str = SPA_SPELLINGS["fwknop --key-gen"],
         seq_text: str = SEQ_SPELLINGS["documented"]) -> tuple[fwknop.SpaKeys, bytes]:
    """What the daemon's config (tests.test_doors's) makes of these key files."""
    cfg = loads(config_text(key_files(tmp_path, spa_text, seq_text)), "t.toml")
    spa, enc = cfg.doors[1].spa, cfg.doors[2].encrypted
    assert spa is not None and enc is not None
    return spa.keys, enc.key


def client_seals_with(path: str, key: bytes) -> bool:
    """Whether ``gatekeeper knock --encrypted --key-file PATH`` seals with ``key``: what
    it would knock decodes with that key."""
    steps = client.encrypted_steps(Target(2, "127.0.0.1"), path, "745-1000", "tcp/8080", CLIENT)
    return seqcodec.decode([port for _, port in steps], key, time.time(), replay=ReplayCache()).ok


@pytest.mark.parametrize("spelling", SPA_SPELLINGS)
def test_every_spelling_of_spa_keys_loads_the_same_keys(tmp_path: Path, spelling: str) -> None:
    text = SPA_SPELLINGS[spelling]
    keys, _ = load(tmp_path, spa_text=text)
    assert (keys.encryption, keys.hmac) == (KEYS.encryption, KEYS.hmac)
    parsed = fwknop.parse_key_file(text, "k")  # what gatekeeper spa --key-file reads
    assert (parsed.encryption, parsed.hmac) == (KEYS.encryption, KEYS.hmac)


@pytest.mark.parametrize("spelling", SEQ_SPELLINGS)
def test_every_spelling_of_a_sequence_key_loads_the_same_key(tmp_path: Path, spelling: str) -> None:
    text = SEQ_SPELLINGS[spelling]
    _, key = load(tmp_path, seq_text=text)
    assert key == SEQ_KEY
    assert client_seals_with(write_key(tmp_path / "client.key", text), SEQ_KEY)


@pytest.mark.parametrize(("which", "text", "line", "expected"), [
    ("spa", f"KEY_BASE64: {K}\n[*] Something else\nHMAC_KEY_BASE64: {H}\n", 2,
     "expected 'KEY_BASE64: ...' or 'HMAC_KEY_BASE64: ...'"),
    # access.conf's HMAC_KEY is a passphrase: it fills the HMAC key as HMAC_KEY_BASE64 does
    ("spa", f"KEY_BASE64: {K}\nHMAC_KEY_BASE64: {H}\nHMAC_KEY: pass\n", 3,
     "HMAC_KEY_BASE64 given twice"),
    ("spa", f"KEY_BASE64: {K}\nHMAC_PASS: {H}\n", 2, "expected 'KEY_BASE64: ...'"),
    ("spa", f"KEY_BASE64: {K} {H}\n", 1, "KEY_BASE64 is not valid base64"),
    ("spa", f"KEY_BASE64={K}\nKEY_BASE64: {K}\nHMAC_KEY_BASE64={H}\n", 2, "KEY_BASE64 given twice"),
    ("seq", f"KEY_BASE64: {S}\nHMAC_KEY_BASE64: {H}\n", 2, "expected 'KEY_BASE64: ...'"),
    ("seq", f"KEY_BASE64: {S}\nKEY_BASE64: {S}\n", 2, "KEY_BASE64 given twice"),
    ("seq", f"{RC_LINE}\nKEY_BASE64 {S}!\n", 2, "KEY_BASE64 is not valid base64"),
    ("seq", "KEY_BASE64=AAAA\n", 1, "KEY_BASE64 decodes to 3 bytes, must be 16, 24 or 32"),
])
def test_a_bad_line_is_one_error_naming_the_file_and_line(
        tmp_path: Path, which: str, text: str, line: int, expected: str) -> None:
    args = {"spa_text": text} if which == "spa" else {"seq_text": text}
    with pytest.raises(ConfigError) as info:
        load(tmp_path, **args)
    message = str(info.value)
    assert "\n" not in message and K not in message and H not in message and S not in message
    assert f"{tmp_path / f'{which}.key'}:{line}: {expected}" in message, message
    if "expected" in expected:  # how to fix it: which command writes a good file
        assert "--key-gen" in message, message


def test_the_client_names_the_line_of_a_bad_sequence_key(tmp_path: Path) -> None:
    path = write_key(tmp_path / "seq.key", f"KEY_BASE64: {S}\nwhat is this\n")
    with pytest.raises(GatekeeperError, match=rf"^{path}:2: expected 'KEY_BASE64: \.\.\.'"):
        client.encrypted_steps(Target(2, "127.0.0.1"), path, "745-1000", "tcp/8080", CLIENT)


# -- the generators -----------------------------------------------------------------------


def key_gen(capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    assert main(["spa", "--key-gen", *extra]) == 0
    return capsys.readouterr().out


def test_every_generator_writes_the_documented_format_and_it_loads(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spa_text = key_gen(capsys)
    seq_text = key_gen(capsys, "--sequence")
    formatted = fwknop.format_key_file(KEYS)
    for text, names in ((spa_text, ["KEY_BASE64", "HMAC_KEY_BASE64"]), (seq_text, ["KEY_BASE64"]),
                        (formatted, ["KEY_BASE64", "HMAC_KEY_BASE64"])):
        lines = text.splitlines()
        assert [line.split(": ", 1)[0] for line in lines] == names, text
        assert all(line.count(" ") == 1 for line in lines), text
    keys, key = load(tmp_path, spa_text=spa_text, seq_text=seq_text)
    assert (len(keys.encryption), len(keys.hmac), len(key)) == (32, 64, 32)
    assert fwknop.parse_key_file(spa_text, "stdout").hmac == keys.hmac
    assert load(tmp_path, spa_text=formatted)[0].hmac == KEYS.hmac
    assert client_seals_with(write_key(tmp_path / "c.key", seq_text), key)


# -- the real fwknop client --------------------------------------------------------------


def test_first_run_of_fwknop_key_gen_loads_and_its_packet_is_granted(tmp_path: Path) -> None:
    exe = need_tool("fwknop", "Debian's fwknop-client")
    home = tmp_path / "home"
    home.mkdir()
    out = subprocess.run([exe, "--key-gen"], env={**os.environ, "HOME": str(home)},
                         capture_output=True, text=True, check=True, timeout=30).stdout
    assert "[*] Creating initial rc file" in out.splitlines()[0], out  # a first run
    cfg = loads(config_text(key_files(tmp_path, out, SEQ_SPELLINGS["documented"])), "t.toml")
    assert cfg.doors[1].spa is not None
    keys = cfg.doors[1].spa.keys
    assert (len(keys.encryption), len(keys.hmac)) == (32, 64)
    (tmp_path / "client").mkdir()
    sender = Fwknop(exe, tmp_path / "client")  # keys and packets from a home of its own
    packet = sender.packet(key_b64=base64.b64encode(keys.encryption).decode(),
                           hmac_b64=base64.b64encode(keys.hmac).decode())
    engine, doors = specials(cfg)
    now = time.time()
    decision = doors.handle(CLIENT_B, GW_B, 17, 62201, 0, packet, 10.0, now)
    assert decision is not None and decision[1] is Reason.COMPLETED, doors.counts
    assert [e.address for e in decision[2] if isinstance(e, Granted)] == [CLIENT]
    assert engine.decide(CLIENT_B, GW_B, 6, 22, 0x02, 11.0)[0] is Verdict.ACCEPT
