"""Our SPA packets against fwknopd, the real server, in its offline ``--test`` mode: fwknopd reads
a pcap file inside a network namespace of its own, so it can neither touch the host's firewall
nor see its network. It needs Debian's ``fwknop-server`` and root (with unshare); without either
it is skipped. (The stock fwknop client: tests/unit/test_spa_clients.py.)"""

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
    SpaKeys,
    generate_keys,
)
from gatekeeper.spa.request import Request, encode
from tests.fixtures.doors import CLIENT
from tests.fixtures.needs import need_tool

# -- the real fwknop client -------------------------------------------------------------


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
    packets = [encode(keys, Request([("tcp", 22)], CLIENT, now)),
               encode(keys, Request([("tcp", 22), ("udp", 53)], CLIENT, now, client_timeout=45, user="bob"))]
    log = fwknopd_decodes(tmp_path, keys, packets, "tcp/22, udp/53")
    assert log.count("--test mode enabled, skipping firewall manipulation") == 2, log
    assert f"Message String: {CLIENT},tcp/22\n" in log, log
    assert f"Message String: {CLIENT},tcp/22,udp/53" in log, log
    assert "Username: gatekeeper" in log and "Username: bob" in log, log
    assert re.search(r"Client Timeout: 45\b", log), log


def test_fwknopd_refuses_a_tampered_packet(tmp_path: Path) -> None:
    """The negative control: the same set-up refuses our packet once a byte changes."""
    keys = generate_keys()
    packet = bytearray(encode(keys, Request([("tcp", 22)], CLIENT, time.time())))
    packet[20] = ord("A") if packet[20] != ord("A") else ord("B")
    log = fwknopd_decodes(tmp_path, keys, [bytes(packet)], "tcp/22")
    assert "skipping firewall manipulation" not in log, log
    assert "SPA Packet from IP" in log, log
