"""gatekeeper import-fwknop: access.conf/fwknopd.conf parsing, the mapping of each setting
onto an SPA door, warnings with line numbers, bad input, key files. (Against stock fwknopd
and the stock client: tests/lab/test_import_fwknop_lab.py.)"""

from __future__ import annotations

import base64
import os
import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gatekeeper import cli
from gatekeeper.config.load import load
from gatekeeper.importers.fwknop import Conversion, FwknopError, convert
from gatekeeper.importers.fwknop_command import main

K = base64.b64encode(bytes(range(32))).decode()
H = base64.b64encode(bytes(range(100, 164))).decode()
KEYS = f"KEY_BASE64 {K}\nHMAC_KEY_BASE64 {H}\n"
BASIC = f"SOURCE ANY\nOPEN_PORTS tcp/22\n{KEYS}"


def conv(access: str, server: str | None = None) -> Conversion:
    return convert(access, "a.conf", "/k", server, "s.conf")


def doors(result: Conversion) -> list[dict[str, Any]]:
    """The doors written (not commented out)."""
    return list(tomllib.loads(result.toml).get("door", []))


def door(access: str, server: str | None = None) -> dict[str, Any]:
    found = doors(conv(access, server))
    assert len(found) == 1, found
    return found[0]


def warned(result: Conversion, line: int | None, text: str, name: str = "a.conf") -> bool:
    where = f"{name}:{line}:" if line is not None else f"{name}:"
    return any(w.startswith(f"{where} warning:") and text in w for w in result.warnings)


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = cli.main(["import-fwknop", *args])
    out, err = capsys.readouterr()
    return rc, out, err


# --- the mapping -----------------------------------------------------------------------


def test_a_basic_stanza_is_an_spa_door_with_fwknopds_defaults() -> None:
    result = conv(BASIC)
    d = door(BASIC)
    assert d == {"name": "spa", "spa": True, "key_file": "/k/spa.key", "spa_port": 62201,
                 "spa_window": 120, "spa_other_source": True, "opens": ["22:tcp"], "open_for": 30}
    assert tomllib.loads(result.toml)["gatekeeper"] == {"interfaces": ["eth0"]}
    assert result.doors == 1
    assert [k.path for k in result.key_files] == ["/k/spa.key"]
    assert result.key_files[0].text.splitlines()[1:] == [f"KEY_BASE64: {K}", f"HMAC_KEY_BASE64: {H}"]


@pytest.mark.parametrize(("lines", "expected"), [
    ("OPEN_PORTS tcp/22, udp/53 ,tcp/80", {"opens": ["22:tcp", "53:udp", "80:tcp"]}),
    ("OPEN_PORTS tcp/22,tcp/80\nRESTRICT_PORTS tcp/80", {"opens": ["22:tcp"]}),
    ("FW_ACCESS_TIMEOUT 45", {"open_for": 45}),
    ("HMAC_DIGEST_TYPE SHA512", {"spa_hmac_digest": "sha512"}),
    ("HMAC_DIGEST_TYPE sha1", {"spa_hmac_digest": "sha1"}),
    ("HMAC_DIGEST_TYPE sha256", {"spa_hmac_digest": None}),
    ("ENCRYPTION_MODE CFB", {"spa_encryption_mode": "cfb"}),
    ("ENCRYPTION_MODE ctr", {"spa_encryption_mode": "ctr"}),
    ("ENCRYPTION_MODE cbc", {"spa_encryption_mode": None}),
    ("REQUIRE_SOURCE_ADDRESS Y", {"spa_other_source": False}),
    ("REQUIRE_SOURCE_ADDRESS yes", {"spa_other_source": False}),
    ("REQUIRE_SOURCE_ADDRESS N", {"spa_other_source": True}),
    ("ENABLE_CMD_EXEC Y", {"spa_commands": None}),
])
def test_each_setting_maps_onto_the_door(lines: str, expected: dict[str, Any]) -> None:
    text = f"SOURCE ANY\n{KEYS}OPEN_PORTS tcp/22\n{lines}\n"
    d = door(text)
    for key, value in expected.items():
        assert d.get(key) == value, (key, d)


def test_fwknopd_conf_gives_port_window_and_interface() -> None:
    server = "PCAP_INTF  wan0\nPCAP_FILTER udp port 40001;\nMAX_SPA_PACKET_AGE 60\n"
    result = conv(BASIC, server)
    d = doors(result)[0]
    assert (d["spa_port"], d["spa_window"]) == (40001, 60)
    assert tomllib.loads(result.toml)["gatekeeper"]["interfaces"] == ["wan0"]
    assert warned(result, 1, "drops every new connection on wan0", "s.conf")


@pytest.mark.parametrize(("server", "port", "window", "line", "warning"), [
    ("PCAP_FILTER udp dst port 5000", 5000, 120, None, ""),
    ("PCAP_FILTER udp port 5000 and not src host 192.0.2.9", 5000, 120, 1, "the rest of the filter"),
    ("PCAP_FILTER tcp", 62201, 120, 1, "names no single UDP port"),
    ("ENABLE_UDP_SERVER Y\nUDPSERV_PORT 6000\nPCAP_FILTER udp port 5000", 6000, 120, None, ""),
    ("ENABLE_SPA_PACKET_AGING N", 62201, 3600, 1, "always checks an SPA packet's time"),
    ("MAX_SPA_PACKET_AGE 7200", 62201, 3600, 1, "gatekeeper's longest"),
    ("ENABLE_TCP_SERVER Y", 62201, 120, 1, "SPA over TCP"),
    ("ENABLE_IPT_FORWARDING Y", 62201, 120, 1, "NAT access"),
    ("NO_SUCH_SETTING 1", 62201, 120, 1, "not an fwknopd 2.6 setting"),
])
def test_fwknopd_conf_settings(server: str, port: int, window: int, line: int | None, warning: str) -> None:
    result = conv(BASIC, server)
    d = doors(result)[0]
    assert (d["spa_port"], d["spa_window"]) == (port, window)
    if warning:
        assert warned(result, line, warning, "s.conf"), result.warnings
    else:
        assert not any(w.startswith("s.conf:1:") for w in result.warnings), result.warnings


def test_passphrases_stay_passphrases_and_short_base64_keys_become_text() -> None:
    result = conv("SOURCE ANY\nOPEN_PORTS tcp/22\nKEY my pass phrase\nHMAC_KEY_BASE64 "
                  f"{base64.b64encode(b'hmac-key').decode()}\n")
    assert result.key_files[0].text.splitlines()[1:] == ["KEY: my pass phrase", "HMAC_KEY: hmac-key"]
    long_phrase = "x" * 20 + "  "  # blanks at the end count in fwknopd: only base64 keeps them
    result = conv(f"SOURCE ANY\nOPEN_PORTS tcp/22\nKEY {long_phrase}\nHMAC_KEY_BASE64 {H}\n")
    assert result.key_files[0].text.splitlines()[1] == \
        f"KEY_BASE64: {base64.b64encode(long_phrase.encode()).decode()}"


def test_a_key_the_key_file_cannot_hold_leaves_the_door_commented_out() -> None:
    short = base64.b64encode(b"\x00\x01\x02").decode()  # 3 bytes, not text
    result = conv(f"SOURCE ANY\nOPEN_PORTS tcp/22\nKEY_BASE64 {short}\nHMAC_KEY_BASE64 {H}\n"
                  f"SOURCE ANY\nOPEN_PORTS tcp/22\n{KEYS}")
    assert [d["name"] for d in doors(result)] == ["spa-2"]
    assert "# NOT CONVERTED: its KEY_BASE64 (3 bytes)" in result.toml
    assert warned(result, 3, "cannot go into a gatekeeper key file")
    assert [k.path for k in result.key_files] == ["/k/spa-2.key"]


def test_no_hmac_key_is_an_unauthenticated_door_with_a_warning() -> None:
    d = door("SOURCE ANY\nOPEN_PORTS tcp/22\nKEY secret\nHMAC_DIGEST_TYPE sha512\n")
    assert d["spa_hmac"] is False and "spa_hmac_digest" not in d
    result = conv("SOURCE ANY\nOPEN_PORTS tcp/22\nKEY secret\nHMAC_DIGEST_TYPE sha512\n")
    assert warned(result, 1, "no HMAC key") and warned(result, 4, "without an HMAC key")
    legacy = conv("SOURCE ANY\nOPEN_PORTS tcp/22\nKEY secret\nENCRYPTION_MODE legacy\n")
    assert doors(legacy)[0]["spa_encryption_mode"] == "legacy"


# --- warnings --------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "text", "warning"), [
    ("SOURCE 192.0.2.0/24, 198.51.100.7", "", "no source list"),
    ("DESTINATION 192.0.2.1", "", "no destination filter"),
    ("MAX_FW_TIMEOUT 300", "", "gatekeeper grants at most open_for = 30 s"),
    ("FW_ACCESS_TIMEOUT 0", "", "open_for = 1"),
    ("REQUIRE_SOURCE_ADDRESS Y", "", "also refuses -a"),
    ("REQUIRE_USERNAME bob", "", "username"),
    ("ENABLE_CMD_EXEC Y", "# spa_commands = ", "list them"),
    ("CMD_EXEC_USER nobody", "", "daemon's user"),
    ("ENABLE_CMD_SUDO_EXEC Y", "", "sudo"),
    ("CMD_CYCLE_OPEN iptables -A INPUT -s $SRC -j ACCEPT", "", "start_command"),
    ("GPG_REMOTE_ID 1234ABCD", "", "GnuPG settings beside a Rijndael key"),
    ("GPG_REQUIRE_SIG Y", "", "add a door with spa_gpg"),
    ("ENCRYPTION_MODE asymmetric", "", "GnuPG"),
    ("FORCE_SNAT 192.0.2.1", "", "SNAT"),
    ("FORCE_MASQUERADE Y", "", "masquerading"),
    ("ACCESS_EXPIRE 12/31/2030", "", "do not expire"),
    ("OPEN_PORTS tcp/22, tcp/0", "", "tcp/0"),
    ("RESTRICT_PORTS tcp/22", "", "in OPEN_PORTS and RESTRICT_PORTS"),
    ("NOT_A_SETTING x", "", "not an fwknopd 2.6 access.conf setting"),
    ("OPEN_PORTS tcp/22\nOPEN_PORTS tcp/2222", "", "set again (line 5)"),
])
def test_what_does_not_carry_over_is_a_warning_with_its_line(line: str, text: str, warning: str) -> None:
    source, _, rest = (line, "", "") if line.startswith("SOURCE") else ("SOURCE ANY", "", line)
    access = f"{source}\n{KEYS}OPEN_PORTS tcp/22, tcp/80\n{rest}\n"
    result = conv(access)
    at = 1 if line.startswith("SOURCE") else (6 if "\n" in line else 5)
    assert warned(result, at, warning), result.warnings
    assert text in result.toml
    assert len(doors(result)) == 1


@pytest.mark.parametrize(("lines", "reason", "at"), [
    ("SOURCE ANY\nKEY secret", "no OPEN_PORTS", 1),
    ("SOURCE ANY\nKEY secret\nOPEN_PORTS tcp/22\nRESTRICT_PORTS tcp/22", "no port", 3),
    ("SOURCE ANY\nGPG_DECRYPT_ID ABCD1234\nOPEN_PORTS tcp/22", "without GPG_REMOTE_ID", 1),
    ("SOURCE ANY\nGPG_DECRYPT_ID me@example\nGPG_REMOTE_ID ABCD1234\nOPEN_PORTS tcp/22", "key ID", 1),
    ("SOURCE ANY\nGPG_REMOTE_ID ABCD1234\nOPEN_PORTS tcp/22", "no GPG_DECRYPT_ID", 1),
    ("SOURCE ANY\nKEY secret\nHMAC_KEY other\nHMAC_DIGEST_TYPE sha3_256\nOPEN_PORTS tcp/22",
     "sha3_256", 4),
    ("SOURCE ANY\nKEY secret\nHMAC_KEY other\nENCRYPTION_MODE legacy\nOPEN_PORTS tcp/22", "legacy", 4),
])
def test_a_door_that_cannot_work_as_fwknopds_is_commented_out(lines: str, reason: str, at: int) -> None:
    result = conv(lines + f"\nSOURCE ANY\n{KEYS}OPEN_PORTS tcp/22\n")
    assert [d["name"] for d in doors(result)] == ["spa-2"]
    assert "# NOT CONVERTED:" in result.toml and reason in result.toml.split("# NOT CONVERTED:")[1]
    assert warned(result, at, "commented out"), result.warnings


def test_nat_access_settings_map_to_spa_nat_and_spa_force_nat() -> None:
    forced = door(f"{BASIC}FORCE_NAT  192.168.10.2   22\n")
    assert forced["spa_force_nat"] == "192.168.10.2:22" and "spa_nat" not in forced
    result = conv(BASIC + "DISABLE_DNAT Y\nFORWARD_ALL Y\n",
                  "ENABLE_IPT_FORWARDING Y\nENABLE_IPT_LOCAL_NAT Y\nENABLE_IPT_SNAT Y\n")
    assert warned(result, 1, "gatekeeper forwards only to the targets a door lists in spa_nat", "s.conf")
    assert warned(result, 2, "--nat-local) is not supported", "s.conf")
    assert warned(result, 3, "SNAT of granted traffic is not supported", "s.conf")
    assert warned(result, 5, "DISABLE_DNAT Y: gatekeeper always DNATs") and warned(result, 6, "FORWARD_ALL")
    assert '# spa_nat = ["HOST:PORT"]' in result.toml and len(doors(result)) == 1
    assert "# spa_nat" not in conv(BASIC).toml
    for bad in ("192.168.10.2", "192.168.10.2 0", "nat.example 22", "2001:db8::2 22", "1.2.3.4 22 x"):
        with pytest.raises(FwknopError, match=r"^a.conf:5: FORCE_NAT .*need an IPv4 address"):
            conv(f"{BASIC}FORCE_NAT {bad}\n")


def test_lines_before_the_first_source_and_include_keys_are_warned_about() -> None:
    result = conv(f"# comment\nKEY early\n%include_keys /etc/fwknop/keys.conf\n{BASIC}")
    assert warned(result, 2, "before any SOURCE") and warned(result, 3, "%include_keys before any SOURCE")
    assert doors(result)[0]["name"] == "spa"
    result = conv(BASIC + "REQUIRE_USERNAME\n", "PCAP_FILTER   \n")
    assert warned(result, 5, "REQUIRE_USERNAME has no value: ignored")
    assert warned(result, 1, "PCAP_FILTER has no value", "s.conf")


# --- several stanzas -------------------------------------------------------------------


def test_each_stanza_is_a_door_on_a_port_of_its_own() -> None:
    other = f"KEY_BASE64 {base64.b64encode(bytes(range(1, 33))).decode()}\nHMAC_KEY pass-two\n"
    access = (f"SOURCE ANY\n{KEYS}OPEN_PORTS tcp/22\n\n"
              f"SOURCE 10.0.0.0/8\n{other}OPEN_PORTS tcp/80\nFW_ACCESS_TIMEOUT 60\n\n"
              f"  SOURCE: ANY\n\tKEY third pass\nOPEN_PORTS udp/53\n")
    result = conv(access, "PCAP_FILTER udp port 62201\n")
    found = doors(result)
    assert [(d["name"], d["spa_port"], d["opens"], d["open_for"]) for d in found] == [
        ("spa", 62201, ["22:tcp"], 30), ("spa-2", 62202, ["80:tcp"], 60), ("spa-3", 62203, ["53:udp"], 30)]
    assert [k.path for k in result.key_files] == ["/k/spa.key", "/k/spa-2.key", "/k/spa-3.key"]
    assert warned(result, 6, "--server-port 62202") and warned(result, 12, "--server-port 62203")
    assert warned(result, 6, "no source list")


# --- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "message"), [
    ("", "a.conf: no SOURCE line"),
    ("KEY abc\n", "a.conf: no SOURCE line"),
    ("SOURCE ANY\nOPEN_PORTS tcp/22\n", "a.conf:1: the stanza of SOURCE ANY has no KEY"),
    ("SOURCE 300.1.1.1\nKEY abc\n", "a.conf:1: SOURCE: '300.1.1.1' is not ANY"),
    ("SOURCE ANY\nKEY abc\nOPEN_PORTS tcp/99999\n", "a.conf:3: 'tcp/99999' is not tcp/PORT"),
    ("SOURCE ANY\nKEY abc\nOPEN_PORTS icmp/0\n", "a.conf:3: 'icmp/0'"),
    ("SOURCE ANY\nKEY abc\nRESTRICT_PORTS 22\n", "a.conf:3: '22'"),
    ("SOURCE ANY\nKEY abc\nFW_ACCESS_TIMEOUT soon\n", "a.conf:3: FW_ACCESS_TIMEOUT 'soon'"),
    ("SOURCE ANY\nKEY abc\nMAX_FW_TIMEOUT -5\n", "a.conf:3: MAX_FW_TIMEOUT '-5'"),
    ("SOURCE ANY\nKEY_BASE64 !!!\n", "a.conf:2: KEY_BASE64 is not base64"),
    ("SOURCE ANY\nKEY abc\nHMAC_KEY_BASE64 %%%\n", "a.conf:3: HMAC_KEY_BASE64 is not base64"),
    ("SOURCE ANY\nKEY abc\nHMAC_KEY abc\n", "a.conf:3: the encryption and HMAC keys are the same"),
    ("SOURCE ANY\nKEY abc\nENCRYPTION_MODE bogus\n", "a.conf:3: ENCRYPTION_MODE 'bogus'"),
    ("SOURCE ANY\nKEY abc\nHMAC_DIGEST_TYPE sha2\n", "a.conf:3: HMAC_DIGEST_TYPE 'sha2'"),
])
def test_bad_input_is_one_line_naming_file_and_line(text: str, message: str) -> None:
    with pytest.raises(FwknopError) as info:
        conv(text)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_bad_fwknopd_conf_names_that_file() -> None:
    with pytest.raises(FwknopError, match=r"^s\.conf:2: MAX_SPA_PACKET_AGE 'old'"):
        conv(BASIC, "\nMAX_SPA_PACKET_AGE old\n")
    with pytest.raises(FwknopError, match=r"^s\.conf:1: UDPSERV_PORT '0'"):
        conv(BASIC, "UDPSERV_PORT 0\nENABLE_UDP_SERVER Y\n")


def test_bad_input_writes_nothing_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    access = tmp_path / "access.conf"
    access.write_text(f"{BASIC}SOURCE ANY\nKEY abc\nOPEN_PORTS tcp/x\n")
    out, keys = tmp_path / "gk.toml", tmp_path / "keys"
    rc, stdout, err = run([str(access), "-o", str(out), "--key-dir", str(keys)], capsys)
    assert rc == 2 and stdout == ""
    assert err == f"gatekeeper: {access}:7: 'tcp/x' is not tcp/PORT or udp/PORT (0-65535)\n"
    assert not out.exists() and not keys.exists()
    rc, _, err = run([str(tmp_path / "missing.conf")], capsys)
    assert (rc, err) == (2, f"gatekeeper: {tmp_path / 'missing.conf'}: no such file\n")


def test_no_door_left_is_an_error_and_writes_nothing(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    access = tmp_path / "access.conf"
    access.write_text("SOURCE ANY\nKEY abc\n")
    rc, _, err = run([str(access), "-o", str(tmp_path / "gk.toml")], capsys)
    assert rc == 2 and "no stanza could be converted" in err.splitlines()[-1]
    assert "access.conf:1: warning: [spa] no OPEN_PORTS" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["access.conf"]


# --- files -----------------------------------------------------------------------------


def test_the_command_writes_0600_key_files_and_a_config_that_loads(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = os.umask(0o022)  # the modes are the importer's, not the umask's
    try:
        access, server = tmp_path / "access.conf", tmp_path / "fwknopd.conf"
        access.write_text(f"{BASIC}\nSOURCE ANY\nKEY pass one\nHMAC_KEY pass two\nOPEN_PORTS udp/53\n")
        server.write_text("PCAP_INTF lo0\nPCAP_FILTER udp port 41000\n")
        out = tmp_path / "etc" / "gatekeeper.toml"
        out.parent.mkdir()
        rc, stdout, err = run([str(access), "--server-conf", str(server), "-o", str(out)], capsys)
    finally:
        os.umask(old)
    assert rc == 0 and stdout == "", err
    keys = sorted(out.parent.glob("*.key"))
    assert [k.name for k in keys] == ["spa-2.key", "spa.key"]
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cfg = load(out)
    assert [(d.name, d.spa.port if d.spa else 0) for d in cfg.doors] == [("spa", 41000), ("spa-2", 41001)]
    spa2 = cfg.doors[1].spa
    assert spa2 is not None and (spa2.keys.encryption, spa2.keys.hmac) == (b"pass one", b"pass two")
    # again: the same key files are fine, other keys there are not overwritten
    rc, _, err = run([str(access), "--server-conf", str(server), "-o", str(out)], capsys)
    assert rc == 0, err
    access.write_text("SOURCE ANY\nKEY another\nOPEN_PORTS tcp/22\n")
    before = out.read_text()
    rc, _, err = run([str(access), "-o", str(out)], capsys)
    assert rc == 2 and "spa.key: exists with other keys; not overwritten" in err
    assert out.read_text() == before


def test_stdout_and_the_default_key_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    access = tmp_path / "access.conf"
    access.write_text(BASIC)
    monkeypatch.chdir(tmp_path)
    rc, stdout, _ = run(["access.conf", "--key-dir", "keys"], capsys)
    assert rc == 0
    assert f'key_file = "{tmp_path}/keys/spa.key"' in stdout
    assert (tmp_path / "keys" / "spa.key").is_file()
    assert cli.build_parser().parse_args(["import-fwknop", "a.conf"]).key_dir is None


# --- GnuPG stanzas ---------------------------------------------------------------------

FPR = "AB12 CD34 EF56 7890 AB12  CD34 EF56 7890 AB12 CD34"


def gpg_stanza(home: str, extra: str = "") -> str:
    return (f"SOURCE ANY\nGPG_DECRYPT_ID 0x1234ABCD5678EF90\nGPG_HOME_DIR {home}\n"
            f"GPG_REMOTE_ID 1111aaaa, 2222BBBB\nGPG_FINGERPRINT_ID {FPR}\nGPG_DECRYPT_PW  pass word\n"
            f"HMAC_KEY_BASE64 {H}\nOPEN_PORTS tcp/22\n{extra}")


def test_a_gnupg_stanza_becomes_a_spa_gpg_door(tmp_path: Path) -> None:
    result = conv(gpg_stanza("/etc/fwknop/gpg", "GPG_EXE /usr/bin/gpg2\nGPG_IGNORE_SIG_VERIFY_ERROR Y\n"
                             "ENCRYPTION_MODE asymmetric\n"))
    d = doors(result)[0]
    assert d["spa_gpg"] == {"home": "/etc/fwknop/gpg", "recipient": "1234ABCD5678EF90",
                            "signers": ["1111AAAA", "2222BBBB"], "fingerprints": [FPR.replace(" ", "")],
                            "passphrase_file": "/k/spa.gpg-passphrase"}
    assert d["key_file"] == "/k/spa.key" and "spa_hmac" not in d and "spa_encryption_mode" not in d
    files = {f.path: f.text for f in result.key_files}
    assert files["/k/spa.gpg-passphrase"] == "pass word\n"
    assert "HMAC_KEY_BASE64" in files["/k/spa.key"] and "\nKEY" not in files["/k/spa.key"]
    assert warned(result, 9, "GPG_EXE") and warned(result, 10, "refuses every signature")
    assert not any("asymmetric" in w for w in result.warnings)
    unsigned = conv("SOURCE ANY\nGPG_DECRYPT_ID 1234ABCD\nGPG_REQUIRE_SIG N\nOPEN_PORTS tcp/22\n")
    d = doors(unsigned)[0]
    assert d["spa_gpg"]["require_signature"] is False and "key_file" not in d
    assert warned(unsigned, 1, "signatures not required") and not unsigned.key_files


def test_an_imported_gnupg_door_loads(tmp_path: Path) -> None:
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    access = tmp_path / "access.conf"
    access.write_text(gpg_stanza(str(home)))
    out = tmp_path / "out" / "gatekeeper.toml"
    out.parent.mkdir()
    assert main(str(access), None, str(out)) == 0
    spa = load(str(out)).doors[0].spa
    assert spa is not None and spa.gpg is not None and spa.gpg.hmac_key == base64.b64decode(H)
    assert spa.gpg.passphrase_file == str(out.parent / "spa.gpg-passphrase")
    assert os.stat(spa.gpg.passphrase_file).st_mode & 0o777 == 0o600
