"""The fwknop importer against stock fwknopd in the lab's gateway: an access.conf and
fwknopd.conf that stock fwknopd runs with import into a config that ``gatekeeper check``
accepts, and the same stock ``fwknop`` client commands open the same ports on both daemons
(fwknopd first, then gatekeeper on the imported config), with the second stanza in the
same file or in one access.conf includes (``%include``). (The importer without a kernel:
tests/unit/test_import_fwknop.py, tests/unit/test_import_fwknop_include.py.)"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.lab.netns import GW4, Lab
from tests.fixtures.needs import need_tool
from tests.lab.support import H, K, fwknop_send, is_open, needs_fwknop

PASS, HMAC_PASS = "a passphrase", "another one for hmac"  # stanza 2: access.conf's KEY / HMAC_KEY
ACCESS = f"""# two stanzas, as fwknopd 2.6 reads them
SOURCE              ANY
OPEN_PORTS          tcp/22, tcp/8080
KEY_BASE64          {K}
HMAC_KEY_BASE64     {H}
FW_ACCESS_TIMEOUT   30

SOURCE              ANY
OPEN_PORTS          tcp/8080
KEY                 {PASS}
HMAC_KEY            {HMAC_PASS}
HMAC_DIGEST_TYPE    SHA512
"""
SERVER = "PCAP_INTF eth0\nPCAP_FILTER udp port 62201\nMAX_SPA_PACKET_AGE 60\n"
PORTS = (22, 8080)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def opened(lab: Lab, port: int, timeout: float = 6.0) -> bool:
    """Whether the client can connect to the gateway's ``port`` within ``timeout`` (fwknopd
    opens about a second after the packet)."""
    deadline = time.monotonic() + timeout
    while not is_open(lab, "client", GW4, port):
        if time.monotonic() > deadline:
            return False
    return True


def fwknopd(lab: Lab, tmp: Path) -> subprocess.Popen[Any]:
    """Stock fwknopd in the gateway, in the foreground, once it sniffs eth0."""
    need_tool("fwknopd", "Debian's fwknop-server, to run the access.conf the importer reads")
    run = tmp / "run"
    run.mkdir()
    log = (tmp / "fwknopd.log").open("w")
    proc = lab.popen("gw", ["fwknopd", "-f", "-i", "eth0", "-c", str(tmp / "fwknopd.conf"),
                            "-a", str(tmp / "access.conf"), "-d", str(run / "digest.cache"),
                            "-p", str(run / "fwknopd.pid"), "-r", str(run)],
                     stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while "Sniffing interface" not in (tmp / "fwknopd.log").read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            lab.stop(proc)
            raise AssertionError("stock fwknopd did not start:\n" + (tmp / "fwknopd.log").read_text())
        time.sleep(0.1)
    time.sleep(0.3)  # its pcap loop is running
    return proc


def send(lab: Lab, home: Path, access: str, second: bool = False, *extra: str) -> None:
    """The stock client: the first stanza's keys, or the second's passphrases (as base64)."""
    keys = {"key": b64(PASS), "hmac_key": b64(HMAC_PASS)} if second else {}
    digest = ["--hmac-digest-type", "sha512"] if second else []
    fwknop_send(lab, str(home), *digest, *extra, access=access, **keys)


def write_access(tmp: Path, include: bool) -> str:
    """access.conf (its second stanza in more.conf when ``include``): where the warning for
    the second stanza's line is."""
    first, second = ACCESS.split("\n\n")
    more = tmp / "more.conf"
    if include:
        more.write_text(f"# the second stanza\n{second}")
        more.chmod(0o600)
    (tmp / "access.conf").write_text(f"{first}\n\n%include {more}\n" if include else ACCESS)
    return f"{more}:2:" if include else "access.conf:8:"


@needs_fwknop
@pytest.mark.parametrize("include", [False, True], ids=["one-file", "include"])
def test_stock_fwknopd_config_imports_and_the_same_client_commands_open_the_same_ports(
        lab: Lab, start_daemon: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        include: bool) -> None:
    from gatekeeper import cli

    access, server = tmp_path / "access.conf", tmp_path / "fwknopd.conf"
    where = write_access(tmp_path, include)
    server.write_text(SERVER)
    access.chmod(0o600)
    server.chmod(0o600)
    home = tmp_path / "home"
    home.mkdir()
    drop = [["-p", "tcp", "-s", "203.0.113.0/24", "--dport", str(p), "-j", "DROP"] for p in PORTS]
    for rule in drop:  # what fwknopd's gateway has: its ports shut until fwknopd opens them
        lab.run("gw", ["iptables", "-A", "INPUT", *rule])
    try:
        daemon = fwknopd(lab, tmp_path)
        try:
            assert not any(is_open(lab, "client", GW4, p) for p in PORTS)
            send(lab, home, "tcp/22")
            assert opened(lab, 22), (tmp_path / "fwknopd.log").read_text()
            assert not is_open(lab, "client", GW4, 8080), "fwknopd opened only what was asked"
            send(lab, home, "tcp/8080", True)  # the second stanza: its passphrases, HMAC-SHA512
            assert opened(lab, 8080), (tmp_path / "fwknopd.log").read_text()
        finally:
            lab.stop(daemon)  # it removes its rules on the way out
    finally:
        for rule in drop:
            lab.run("gw", ["iptables", "-D", "INPUT", *rule])

    out = tmp_path / "gatekeeper.toml"
    rc = cli.main(["import-fwknop", str(access), "--server-conf", str(server), "-o", str(out),
                   "--key-dir", str(tmp_path / "keys")])
    _, err = capsys.readouterr()
    assert rc == 0, err
    assert f"{where} warning: [spa-2] gatekeeper takes one key an SPA port: door 'spa-2' " \
        "listens on udp/62202; its clients add --server-port 62202" in err
    checked = lab.run("gw", [sys.executable, "-m", "gatekeeper", "check", "-c", str(out)], check=False)
    assert checked.returncode == 0 and ": OK: 2 door(s)" in checked.stdout, checked

    start_daemon(out.read_text())
    assert not any(is_open(lab, "client", GW4, p) for p in PORTS)
    send(lab, home, "tcp/22")
    assert is_open(lab, "client", GW4, 22), "the first SYN after the packet"
    assert not is_open(lab, "client", GW4, 8080), "gatekeeper opened only what was asked"
    send(lab, home, "tcp/8080", True, "--server-port", "62202")
    assert is_open(lab, "client", GW4, 8080)
