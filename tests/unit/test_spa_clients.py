"""The SPA codec against the real fwknop client: Debian's ``fwknop`` with ``--test`` (build the
packet, never send it) and ``--save-packet``, aimed at 127.0.0.1 all the same. Without fwknop
they are skipped with a reason; under CI (``CI`` set) a missing fwknop is a failure.
(fwknopd, the real server: tests/lab/test_fwknopd_lab.py.)"""

from __future__ import annotations

import ipaddress
import re
import time
from pathlib import Path

import pytest

from gatekeeper.spa.fwknop import (
    SALTED_PREFIX,
    SpaKeys,
    Stage,
    format_key_file,
    parse_key_file,
)
from gatekeeper.spa.replay import ReplayCache
from tests.fixtures.doors import CLIENT, KEYS
from tests.fixtures.needs import need_tool
from tests.fixtures.spa import OTHER, Fwknop, check

# -- the real fwknop client -------------------------------------------------------------


@pytest.fixture(scope="module")
def fwknop(tmp_path_factory: pytest.TempPathFactory) -> Fwknop:
    exe = need_tool("fwknop", "Debian's fwknop-client")
    return Fwknop(exe, tmp_path_factory.mktemp("fwknop-home"))


def test_stock_client_packet_is_accepted(fwknop: Fwknop) -> None:
    now = time.time()
    packet = fwknop.packet("-U", "alice")
    assert not packet.startswith(SALTED_PREFIX)
    result = check(packet, fwknop.keys, now)
    assert result.stage is Stage.OK and result.ok
    msg = result.message
    assert msg is not None
    assert (msg.user, msg.version, msg.message_type) == ("alice", "3.0.0", 1)
    assert msg.access == (("tcp", 22),)
    assert msg.address == CLIENT and result.grant == CLIENT
    assert msg.message == f"{CLIENT},tcp/22"
    assert abs(msg.timestamp - now) < 30
    assert re.fullmatch(r"[0-9]{16}", msg.random)
    assert (msg.client_timeout, msg.nat_access, msg.server_auth, msg.command) == (None,) * 4
    assert len(msg.digest) == 43  # SHA-256
    # the default user is the local one, whatever that is here
    default = check(fwknop.packet(), fwknop.keys)
    assert default.ok and default.message is not None and default.message.user


def test_stock_client_several_ports_and_client_timeout(fwknop: Fwknop) -> None:
    packet = fwknop.packet("--fw-timeout", "45", access="tcp/22,udp/53")
    result = check(packet, fwknop.keys, allowed={("tcp", 22), ("udp", 53), ("tcp", 80)})
    assert result.ok and result.message is not None
    assert result.message.message_type == 3
    assert result.message.client_timeout == 45
    assert result.message.access == (("tcp", 22), ("udp", 53))
    # one port of the two is not allowed: the whole request is refused
    assert check(packet, fwknop.keys).stage is Stage.ACCESS


def test_stock_client_other_digests(fwknop: Fwknop) -> None:
    for digest in ("sha384", "sha512"):
        result = check(fwknop.packet("-m", digest), fwknop.keys)
        assert result.ok, digest


def test_stock_client_access_mismatch(fwknop: Fwknop) -> None:
    assert check(fwknop.packet(access="udp/22"), fwknop.keys).stage is Stage.ACCESS
    assert check(fwknop.packet(access="tcp/2222"), fwknop.keys).stage is Stage.ACCESS
    assert check(fwknop.packet(), fwknop.keys, allowed=set()).stage is Stage.ACCESS


def test_stock_client_nat_request_is_not_granted(fwknop: Fwknop) -> None:
    result = check(fwknop.packet("-N", "192.168.1.2,22"), fwknop.keys)
    assert result.stage is Stage.ACCESS
    assert result.message is not None and result.message.nat_access == "192.168.1.2,22"


def test_stock_client_flipped_bits_fail_the_hmac(fwknop: Fwknop) -> None:
    packet = fwknop.packet()
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    for i in (0, 1, 10, len(packet) // 2, len(packet) - 44, len(packet) - 43, len(packet) - 1):
        swapped = alphabet[(alphabet.index(packet[i]) + 1) % 64]
        tampered = packet[:i] + bytes([swapped]) + packet[i + 1:]
        assert check(tampered, fwknop.keys).stage is Stage.HMAC, i
        flipped = packet[:i] + bytes([packet[i] ^ 0x01]) + packet[i + 1:]
        assert check(flipped, fwknop.keys).stage is Stage.HMAC, i
    assert check(packet[:-1], fwknop.keys).stage is Stage.HMAC
    assert check(packet + b"A", fwknop.keys).stage is Stage.HMAC


def test_stock_client_wrong_keys(fwknop: Fwknop) -> None:
    packet = fwknop.packet()
    wrong_hmac = SpaKeys(fwknop.keys.encryption, KEYS.hmac)
    assert check(packet, wrong_hmac).stage is Stage.HMAC
    wrong_key = SpaKeys(KEYS.encryption, fwknop.keys.hmac)
    # a wrong Rijndael key almost always leaves bad padding; rarely the padding passes
    assert check(packet, wrong_key).stage in (Stage.DECRYPT, Stage.PARSE)


def test_stock_client_stale_and_future(fwknop: Fwknop) -> None:
    now = time.time()
    old = fwknop.packet("--time-offset-minus", "300sec")
    future = fwknop.packet("--time-offset-plus", "300sec")
    for packet in (old, future):
        result = check(packet, fwknop.keys, now)
        assert result.stage is Stage.STALE and result.message is not None
        assert abs(abs(result.message.timestamp - now) - 300) < 30
        assert check(packet, fwknop.keys, now, window=600).ok  # the window is configurable
    assert check(fwknop.packet("--time-offset-minus", "60sec"), fwknop.keys, now).ok


def test_stock_client_replay(fwknop: Fwknop) -> None:
    cache = ReplayCache()
    packet = fwknop.packet()
    assert check(packet, fwknop.keys, replay=cache).ok
    assert check(packet, fwknop.keys, replay=cache).stage is Stage.REPLAY
    assert check(SALTED_PREFIX + packet, fwknop.keys, replay=cache).stage is Stage.REPLAY
    assert check(SALTED_PREFIX + packet + b"\n", fwknop.keys, replay=cache).stage is Stage.REPLAY
    # the prefixed form first, then the bare one
    second = fwknop.packet()
    assert check(SALTED_PREFIX + second, fwknop.keys, replay=cache).ok
    assert check(second, fwknop.keys, replay=cache).stage is Stage.REPLAY
    # a packet refused for its source is spent all the same
    third = fwknop.packet()
    assert check(third, fwknop.keys, replay=cache, source=OTHER).stage is Stage.SOURCE
    assert check(third, fwknop.keys, replay=cache).stage is Stage.REPLAY
    assert len(cache) == 3


def test_stock_client_source_address(fwknop: Fwknop) -> None:
    packet = fwknop.packet()
    assert check(packet, fwknop.keys, source=OTHER).stage is Stage.SOURCE
    assert check(packet, fwknop.keys, source=ipaddress.ip_address(CLIENT).packed).ok
    assert check(packet, fwknop.keys, source=f"::ffff:{CLIENT}").ok
    allowed = check(packet, fwknop.keys, source=OTHER, other_source=True)
    assert allowed.ok and allowed.grant == CLIENT
    # fwknop -s puts 0.0.0.0 in the packet: "whoever sends it"
    anywhere = fwknop.packet(allow=None)
    result = check(anywhere, fwknop.keys, source=OTHER)
    assert result.stage is Stage.SOURCE and result.message is not None
    assert result.message.address == "0.0.0.0"
    granted = check(anywhere, fwknop.keys, source=OTHER, other_source=True)
    assert granted.ok and granted.grant == OTHER


def test_stock_client_truncations_never_pass(fwknop: Fwknop) -> None:
    packet = fwknop.packet()
    cache = ReplayCache()
    for n in range(1, len(packet)):
        for piece in (packet[:n], packet[n:]):
            assert check(piece, fwknop.keys, replay=cache).stage in (Stage.SIZE, Stage.HMAC)
    assert len(cache) == 0


def test_key_gen_output_and_file(fwknop: Fwknop, tmp_path: Path) -> None:
    assert fwknop.key_gen_output.startswith("KEY_BASE64: ")
    assert len(fwknop.keys.encryption) == 32 and len(fwknop.keys.hmac) == 64
    target = tmp_path / "keys"
    fwknop._run("--key-gen", "--no-rc-file", f"--key-gen-file={target}")
    keys = parse_key_file(target.read_text(), str(target))
    assert format_key_file(keys) == target.read_text()
