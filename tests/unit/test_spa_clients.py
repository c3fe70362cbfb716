"""The SPA codec against the real fwknop client (and fwknopd when present), and the
encrypted port sequence codec.

The fwknop tests run Debian's ``fwknop`` with ``--test`` (build the packet, never send it)
and ``--save-packet``, aimed at 127.0.0.1 all the same. Without fwknop they are skipped
with a reason; under CI (``CI`` set) a missing fwknop is a failure. The fwknopd
cross-check needs Debian's ``fwknop-server`` and root: fwknopd reads a pcap file in
``--test`` mode inside a network namespace of its own, so it can neither touch the
host's firewall nor see its network; without either it is skipped.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import dpkt
import pytest

from gatekeeper.spa.fwknop import (
    SALTED_PREFIX,
    SpaKeys,
    Stage,
    encode,
    format_key_file,
    generate_keys,
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


# -- fwknopd, the real server, in an offline test mode -----------------------------------


def fwknopd_decodes(tmp: Path, keys: SpaKeys, packets: list[bytes], open_ports: str) -> str:
    """fwknopd --test reading the packets from a pcap file: its log (stderr and stdout)."""
    fwknopd = need_tool("fwknopd", "Debian's fwknop-server: the cross-check with the server")
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        pytest.skip("fwknopd runs in a network namespace of its own, which needs root and unshare")
    pcap = tmp / "spa.pcap"
    with pcap.open("wb") as f:
        writer = dpkt.pcap.Writer(f)
        for n, payload in enumerate(packets):
            udp = dpkt.udp.UDP(sport=40000 + n, dport=62201, data=payload)
            udp.ulen = 8 + len(payload)
            ip = dpkt.ip.IP(src=ipaddress.ip_address(CLIENT).packed, dst=bytes([192, 0, 2, 1]),
                            p=17, ttl=64, data=udp)
            ip.len = 20 + len(udp)
            eth = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip)
            writer.writepkt(bytes(eth), ts=n)
    run = tmp / "run"
    run.mkdir()
    conf, access = tmp / "fwknopd.conf", tmp / "access.conf"
    conf.write_text("")
    access.write_text(
        "SOURCE ANY\n"
        f"KEY_BASE64 {base64.b64encode(keys.encryption).decode()}\n"
        f"HMAC_KEY_BASE64 {base64.b64encode(keys.hmac).decode()}\n"
        f"OPEN_PORTS {open_ports}\n"
    )
    conf.chmod(0o600)
    access.chmod(0o600)
    proc = subprocess.run(
        [unshare, "--net", fwknopd, "--test", "--foreground", "-v", "-v",
         f"--packet-limit={len(packets)}", f"--pcap-file={pcap}", "-c", str(conf), "-a", str(access),
         "-d", str(run / "digest.cache"), "-p", str(run / "fwknopd.pid"), "-r", str(run)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    return proc.stdout + proc.stderr


def test_fwknopd_accepts_our_packets(tmp_path: Path) -> None:
    keys = generate_keys()
    now = time.time()
    packets = [encode(keys, [("tcp", 22)], CLIENT, now),
               encode(keys, [("tcp", 22), ("udp", 53)], CLIENT, now, client_timeout=45, user="bob")]
    log = fwknopd_decodes(tmp_path, keys, packets, "tcp/22, udp/53")
    assert log.count("--test mode enabled, skipping firewall manipulation") == 2, log
    assert f"Message String: {CLIENT},tcp/22\n" in log, log
    assert f"Message String: {CLIENT},tcp/22,udp/53" in log, log
    assert "Username: gatekeeper" in log and "Username: bob" in log, log
    assert re.search(r"Client Timeout: 45\b", log), log


def test_fwknopd_refuses_a_tampered_packet(tmp_path: Path) -> None:
    """The negative control: the same set-up refuses our packet once a byte changes."""
    keys = generate_keys()
    packet = bytearray(encode(keys, [("tcp", 22)], CLIENT, time.time()))
    packet[20] = ord("A") if packet[20] != ord("A") else ord("B")
    log = fwknopd_decodes(tmp_path, keys, [bytes(packet)], "tcp/22")
    assert "skipping firewall manipulation" not in log, log
    assert "SPA Packet from IP" in log, log
