"""The fwknop importer against stock fwknopd in the lab's gateway: an access.conf and
fwknopd.conf that stock fwknopd runs with import into a config that ``gatekeeper check``
accepts, and the same stock ``fwknop`` client commands open the same ports on both daemons
(fwknopd first, then gatekeeper on the imported config), with the second stanza in the
same file, in one access.conf includes (``%include``), or with its keys in a keys file
(``%include_keys``). (The importer without a kernel:
tests/unit/test_import_fwknop.py, tests/unit/test_import_fwknop_include.py.)"""

from __future__ import annotations

import base64
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.lab.netns import GW4, Lab
from tests.fixtures.needs import need_tool
from tests.lab.stock_fwknopd import opened, running
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


def send(lab: Lab, home: Path, access: str, second: bool = False, *extra: str) -> None:
    """The stock client: the first stanza's keys, or the second's passphrases (as base64)."""
    keys = {"key": b64(PASS), "hmac_key": b64(HMAC_PASS)} if second else {}
    digest = ["--hmac-digest-type", "sha512"] if second else []
    fwknop_send(lab, str(home), *digest, *extra, access=access, **keys)


def write_access(tmp: Path, layout: str) -> str:
    """access.conf and fwknopd.conf: the two stanzas in access.conf (``one-file``), the second
    in more.conf it includes (``include``), or in a file of fwknopd.conf's ACCESS_FOLDER
    (``folder``; access.conf then holds a stanza fwknopd does not read; one file, as with
    more fwknopd 2.6 denies the requests of the stanzas it read before the last file: see
    fwknop_conf.FOLDER_BUG). Returns where the warning for the second stanza's line is."""
    first, second = ACCESS.split("\n\n")
    more, folder = tmp / "more.conf", tmp / "access.d"
    keys = tmp / "stanza2.keys"  # layout keys: the second stanza's keys via %include_keys
    no_keys = "".join(f"{line}\n" for line in second.splitlines() if not line.startswith(("KEY", "HMAC_KEY")))
    text = {"one-file": ACCESS, "include": f"{first}\n\n%include {more}\n",
            "keys": f"{first}\n\n{no_keys}%include_keys {keys}\n",
            "folder": "SOURCE ANY\nOPEN_PORTS tcp/8080\nKEY not read by fwknopd\n"}[layout]
    files = {tmp / "access.conf": text, tmp / "fwknopd.conf": SERVER,
             keys: f"# stanza 2\nKEY {PASS}\nHMAC_KEY {HMAC_PASS}\n"}
    if layout not in ("one-file", "keys"):
        files[more] = f"# the second stanza\n{second}"
    if layout == "folder":
        folder.mkdir(mode=0o700)
        files |= {folder / "all.conf": f"{first}\n\n%include {more}\n",
                  tmp / "fwknopd.conf": f"{SERVER}ACCESS_FOLDER {folder}\n"}
    for path, content in files.items():
        path.write_text(content)
        path.chmod(0o600)
    return {"one-file": "access.conf:8:", "keys": "access.conf:8:", "include": f"{more}:2:",
            "folder": f"{more}:2:"}[layout]


@needs_fwknop
@pytest.mark.parametrize("layout", ["one-file", "include", "folder", "keys"])
def test_stock_fwknopd_config_imports_and_the_same_client_commands_open_the_same_ports(
        lab: Lab, start_daemon: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        layout: str) -> None:
    from gatekeeper import cli

    access, server = tmp_path / "access.conf", tmp_path / "fwknopd.conf"
    where = write_access(tmp_path, layout)
    home = tmp_path / "home"
    home.mkdir()
    with running(lab, tmp_path, shut=PORTS):  # its ports shut until it opens them
        assert not any(is_open(lab, "client", GW4, p) for p in PORTS)
        send(lab, home, "tcp/22")
        assert opened(lab, 22), (tmp_path / "fwknopd.log").read_text()
        assert not is_open(lab, "client", GW4, 8080), "fwknopd opened only what was asked"
        send(lab, home, "tcp/8080", True)  # the second stanza: its passphrases, HMAC-SHA512
        assert opened(lab, 8080), (tmp_path / "fwknopd.log").read_text()

    out = tmp_path / "gatekeeper.toml"
    rc = cli.main(["import-fwknop", str(access), "--server-conf", str(server), "-o", str(out),
                   "--key-dir", str(tmp_path / "keys")])
    _, err = capsys.readouterr()
    assert rc == 0, err
    assert f"{where} warning: [spa-2] gatekeeper takes one key an SPA port: door 'spa-2' " \
        "listens on udp/62202; its clients add --server-port 62202" in err
    assert (layout == "folder") == ("access.conf is not imported" in err), err
    checked = lab.run("gw", [sys.executable, "-m", "gatekeeper", "check", "-c", str(out)], check=False)
    assert checked.returncode == 0 and ": OK: 2 door(s)" in checked.stdout, checked

    start_daemon(out.read_text())
    assert not any(is_open(lab, "client", GW4, p) for p in PORTS)
    send(lab, home, "tcp/22")
    assert is_open(lab, "client", GW4, 22), "the first SYN after the packet"
    assert not is_open(lab, "client", GW4, 8080), "gatekeeper opened only what was asked"
    send(lab, home, "tcp/8080", True, "--server-port", "62202")
    assert is_open(lab, "client", GW4, 8080)


def dumped_ports(tmp: Path, access: str) -> list[str] | None:
    """The OPEN_PORTS of each stanza stock fwknopd loads from ``access`` (its --dump-config,
    no network), or None when it refuses the files."""
    need_tool("fwknopd", "Debian's fwknop-server, to read the access.conf the importer reads")
    (tmp / "fwknopd.conf").write_text("PCAP_INTF lo\n")
    for path in (tmp / "fwknopd.conf", tmp / access):
        path.chmod(0o600)
    done = subprocess.run(["fwknopd", "-f", "-D", "-c", str(tmp / "fwknopd.conf"), "-a", str(tmp / access),
                           "-d", str(tmp / "digest"), "-p", str(tmp / "pid")],
                          capture_output=True, text=True, timeout=20, check=False)
    if done.returncode != 0:
        return None
    return [line.split(":", 1)[1].strip() for line in done.stdout.splitlines()
            if line.strip().startswith("OPEN_PORTS:")]


@pytest.mark.parametrize(("files", "ports"), [
    ({"a.conf": "{S22}%include {T}/i.conf\nOPEN_PORTS tcp/25\n", "i.conf": "{S443}"},
     ["tcp/25", "tcp/443"]),  # the line after %include is the first stanza's
    ({"a.conf": "{S22}%include_folder {T}/d/\n", "d/e.conf~": "{S443}", "d/x.conference": "{S80}",
      "d/y.conf.bak": "{S8}"}, ["tcp/22", "tcp/443", "tcp/80"]),
    ({"a.conf": "{S22}%include {T}/b.conf\n", "b.conf": "%include {T}/a.conf\n"}, None),  # a cycle
    ({"a.conf": "{S22}%include {T}/1.conf\n", "1.conf": "%include {T}/2.conf\n",
      "2.conf": "%include {T}/3.conf\n", "3.conf": "{S80}"}, None),  # four files deep
    ({"a.conf": "{S22}%include_folder {T}/d\n", "d/x.conf/": ""}, None),  # a folder named x.conf
    ({"a.conf": "{S22}%include {T}/gone.conf\n"}, None),
    ({"a.conf": "SOURCE ANY\nOPEN_PORTS tcp/25\n%include_keys {T}/k\n{S80}",
      "k": "{S443}".replace("SOURCE ANY\n", "")}, ["tcp/25", "tcp/80"]),  # its OPEN_PORTS is ignored
], ids=["include", "folder", "cycle", "depth", "not-a-file", "missing", "keys"])
def test_the_importer_follows_includes_as_stock_fwknopd_does(
        tmp_path: Path, files: dict[str, str], ports: list[str] | None) -> None:
    from gatekeeper.importers.fwknop import FwknopError, convert
    from gatekeeper.importers.fwknop_command import DiskFiles

    stanzas = {f"S{p}": f"SOURCE ANY\nOPEN_PORTS tcp/{p}\nKEY_BASE64 {K}\nHMAC_KEY_BASE64 {H}\n"
               for p in (8, 22, 80, 443)}
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(mode=0o700, exist_ok=True)
        if name.endswith("/"):
            path.mkdir(mode=0o700)
            continue
        path.write_text(text.format(T=tmp_path, **stanzas))
        path.chmod(0o600)
    def order(found: list[str] | None) -> list[str] | None:  # fwknopd reads a folder in directory order
        return sorted(found) if found is not None and any("/" in n for n in files) else found

    assert order(dumped_ports(tmp_path, "a.conf")) == order(ports)
    try:
        result = convert((tmp_path / "a.conf").read_text(), str(tmp_path / "a.conf"), str(tmp_path),
                         files=DiskFiles())
    except FwknopError:
        assert ports is None
        return
    assert ports is not None
    imported = [f"tcp/{o.split(':')[0]}" for line in result.toml.splitlines()
                if line.startswith("opens = ") for o in tomllib.loads(line)["opens"]]
    assert order(imported) == order(ports)
