"""gatekeeper import-fwknop follows access.conf's ``%include``/``%include_folder`` and
fwknopd.conf's ``ACCESS_FOLDER`` as fwknopd 2.6 does (server/access.c): stanzas of an
included file are doors like any other, warnings and errors name the included file and
line, cycles and nesting are bounded, a missing file is an error."""

from __future__ import annotations

import base64
import posixpath
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gatekeeper import cli
from gatekeeper.importers.fwknop import Conversion, FwknopError, convert
from gatekeeper.importers.fwknop_conf import conf_names

K = base64.b64encode(bytes(range(32))).decode()
H = base64.b64encode(bytes(range(100, 164))).decode()
KEYS = f"KEY_BASE64 {K}\nHMAC_KEY_BASE64 {H}\n"


def stanza(port: int, source: str = "ANY") -> str:
    return f"SOURCE {source}\nOPEN_PORTS tcp/{port}\n{KEYS}"


class DictFiles:
    """Files from a dict of path: text; a folder is any path that holds files."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files
        self.read_paths: list[str] = []

    def read(self, path: str) -> str:
        self.read_paths.append(path)
        if path not in self.files:
            raise FileNotFoundError(2, "No such file or directory", path)
        return self.files[path]

    def names(self, folder: str) -> list[str]:
        names = [posixpath.basename(p) for p in self.files if posixpath.dirname(p) == folder]
        if not names:
            raise FileNotFoundError(2, "No such file or directory", folder)
        return names


def conv(access: str, files: dict[str, str], server: str | None = None) -> Conversion:
    return convert(access, "/a.conf", "/k", server, "/s.conf", DictFiles(files))


def opened(result: Conversion) -> list[tuple[str, list[str]]]:
    """(name, opens) of each door written."""
    found: list[dict[str, Any]] = tomllib.loads(result.toml).get("door", [])
    return [(d["name"], d["opens"]) for d in found]


def warned(result: Conversion, where: str, text: str) -> bool:
    return any(w.startswith(f"{where} warning:") and text in w for w in result.warnings)


def test_an_included_files_stanzas_are_doors_where_its_include_line_is() -> None:
    # fwknopd: the lines after %include still belong to the stanza before it
    access = f"{stanza(22)}%include /inc.conf\nRESTRICT_PORTS tcp/22\nOPEN_PORTS tcp/22,tcp/25\n{stanza(80)}"
    result = conv(access, {"/inc.conf": "KEY lost\n" + stanza(443) + "REQUIRE_USERNAME bob\n"})
    assert opened(result) == [("spa", ["25:tcp"]), ("spa-2", ["443:tcp"]), ("spa-3", ["80:tcp"])]
    assert "# SOURCE ANY: /inc.conf, line 2" in result.toml
    assert warned(result, "/inc.conf:1:", "KEY before any SOURCE line")
    assert warned(result, "/inc.conf:6:", "[spa-2] REQUIRE_USERNAME bob")
    assert warned(result, "/inc.conf:2:", "[spa-2] gatekeeper takes one key an SPA port")
    assert warned(result, "/a.conf:7:", "OPEN_PORTS is set again (line 2)")  # the first stanza's
    assert warned(result, "/a.conf:6:", "[spa] tcp/22 is in OPEN_PORTS and RESTRICT_PORTS")
    # warnings in the order the files were read
    files = [w.split(":")[0] for w in result.warnings]
    assert files == sorted(files, key=lambda f: ["/a.conf", "/inc.conf"].index(f))


def test_an_error_in_an_included_file_names_that_file_and_line() -> None:
    with pytest.raises(FwknopError, match=r"^/inc.conf:3: 'tcp/x' is not tcp/PORT"):
        conv(f"%include /inc.conf\n{stanza(22)}", {"/inc.conf": f"# x\nSOURCE ANY\nOPEN_PORTS tcp/x\n{KEYS}"})
    with pytest.raises(FwknopError, match=r"^/inc.conf:1: the stanza of SOURCE ANY has no KEY"):
        conv(f"%include /inc.conf\n{stanza(22)}", {"/inc.conf": "SOURCE ANY\nOPEN_PORTS tcp/1\n"})


def test_a_missing_included_file_or_folder_is_an_error_naming_it() -> None:
    with pytest.raises(FwknopError, match=r"^/a.conf:6: %include /gone.conf: cannot read /gone.conf: "
                       "No such file"):
        conv(f"{stanza(22)}\n%include /gone.conf\n", {})
    with pytest.raises(FwknopError, match=r"^/inc.conf:1: %include_folder /d/: cannot open the folder "
                       "/d: No such file"):
        conv(f"{stanza(22)}%include /inc.conf\n", {"/inc.conf": "%include_folder /d/\n"})
    with pytest.raises(FwknopError, match=r"^a.conf:1: %include /x: cannot read /x"):
        convert("%include /x\n", "a.conf", "/k")  # a text alone: nothing to include from


def test_an_include_cycle_is_an_error_on_one_line() -> None:
    files = {"/b.conf": stanza(80) + "%include /c.conf\n", "/c.conf": "%include /b.conf\n"}
    with pytest.raises(FwknopError) as err:
        conv(f"{stanza(22)}%include /b.conf\n", files)
    assert str(err.value) == ("/c.conf:1: %include /b.conf: include cycle (/b.conf -> /c.conf -> "
                              "/b.conf): fwknopd does not start with it either")
    with pytest.raises(FwknopError, match=r"^/a.conf:1: %include /a.conf: include cycle"):
        conv("%include /a.conf\n", {"/a.conf": "x"})
    with pytest.raises(FwknopError, match=r"^/d/x.conf:1: %include_folder /d: include cycle"):
        conv(f"{stanza(22)}%include_folder /d\n", {"/d/x.conf": "%include_folder /d\n"})


def test_includes_go_three_files_deep_as_in_fwknopd() -> None:
    files = {"/1.conf": stanza(1) + "%include /2.conf\n", "/2.conf": stanza(2)}
    assert [o for _, o in opened(conv(f"{stanza(22)}%include /1.conf\n", files))] == \
        [["22:tcp"], ["1:tcp"], ["2:tcp"]]
    files["/2.conf"] = stanza(2) + "%include /3.conf\n"
    files["/3.conf"] = stanza(3)
    with pytest.raises(FwknopError) as err:
        conv(f"{stanza(22)}%include /1.conf\n", files)
    assert str(err.value) == ("/2.conf:5: %include /3.conf: an %include deeper than 3 files (fwknopd "
                              "refuses it too)")


def test_include_folder_reads_its_conf_files_in_name_order() -> None:
    files = {"/d/b.conf": stanza(2), "/d/a.conf": stanza(1), "/d/notes.txt": "junk",
             "/d/c.conf.bak": "junk", "/d/README": "junk", "/d/e.conf~": stanza(3)}
    result = conv(f"{stanza(22)}%include_folder /d/\n", files)
    assert [o for _, o in opened(result)] == [["22:tcp"], ["1:tcp"], ["2:tcp"], ["3:tcp"]]
    assert conf_names(["x.conf", ".conf", "x.conference", "x.conf.bak", "conf", "x.cfg"]) == \
        [".conf", "x.conf", "x.conference"]  # fwknopd's test: the last dot's part starts .conf


def test_access_folder_is_read_instead_of_access_file_as_fwknopd_does() -> None:
    files = {"/d/one.conf": stanza(1), "/d/two.conf": "%include /inc.conf\n", "/inc.conf": stanza(2)}
    result = conv(stanza(22), files, "ACCESS_FOLDER /d\n")
    assert [o for _, o in opened(result)] == [["1:tcp"], ["2:tcp"]]
    assert warned(result, "/s.conf:1:", "ACCESS_FOLDER /d: fwknopd reads its *.conf files instead of "
                  "ACCESS_FILE, and so does the import (/d/one.conf, /d/two.conf, /inc.conf); /a.conf "
                  "is not imported")
    assert warned(result, "/s.conf:1:", "only the stanzas of the file it read last")  # fwknopd's bug
    result = convert(stanza(1), "/d/one.conf", "/k", "ACCESS_FOLDER /d/", "/s.conf",
                     DictFiles({"/d/one.conf": stanza(1) + "%include /inc.conf\n", "/inc.conf": stanza(2)}))
    assert [o for _, o in opened(result)] == [["1:tcp"], ["2:tcp"]]
    assert not any("is not imported" in w or "read last" in w for w in result.warnings)
    with pytest.raises(FwknopError, match=r"^/s.conf:2: ACCESS_FOLDER /e: cannot open the folder /e"):
        conv(stanza(22), files, "# folder\nACCESS_FOLDER /e\n")
    with pytest.raises(FwknopError, match=r"^/e: no SOURCE line"):
        conv(stanza(22), {"/e/x.conf": "# nothing\n"}, "ACCESS_FOLDER /e\n")


def test_a_relative_include_is_read_from_the_current_directory_with_a_warning() -> None:
    files = DictFiles({"more.conf": stanza(80)})
    result = convert(f"{stanza(22)}%include more.conf\n", "/a.conf", "/k", None, "", files)
    assert files.read_paths == ["more.conf"] and len(opened(result)) == 2
    assert warned(result, "/a.conf:5:", "read from the current directory")


def test_the_command_reads_included_files_and_folders_from_disk(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.conf").write_text(stanza(443) + "REQUIRE_USERNAME bob\n")
    (tmp_path / "inc.conf").write_text(f"%include_folder {tmp_path}/d\n")
    access = tmp_path / "access.conf"
    access.write_text(f"{stanza(22)}%include {tmp_path}/inc.conf\n")
    out = tmp_path / "gk.toml"
    rc = cli.main(["import-fwknop", str(access), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0 and [o for _, o in opened(Conversion(out.read_text(), (), 0, ()))] == \
        [["22:tcp"], ["443:tcp"]]
    assert f"{tmp_path}/d/x.conf:5: warning: [spa-2] REQUIRE_USERNAME bob" in err
    (tmp_path / "d" / "sub.conf").mkdir()  # fwknopd refuses what is not a file
    assert cli.main(["import-fwknop", str(access), "-o", str(tmp_path / "2.toml")]) == 2
    assert f"{tmp_path}/d/sub.conf: Is a directory" in capsys.readouterr().err
    (tmp_path / "inc.conf").write_text(f"%include {tmp_path}/gone.conf\n")
    assert cli.main(["import-fwknop", str(access), "-o", str(tmp_path / "2.toml")]) == 2
    assert f"{tmp_path}/inc.conf:1: %include {tmp_path}/gone.conf: cannot read" in capsys.readouterr().err


# --- %include_keys -----------------------------------------------------------------------


def test_include_keys_sets_the_stanzas_keys_and_they_land_in_its_key_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys.conf"
    keys.write_text(f"# keys\n{KEYS}OPEN_PORTS tcp/99\nGPG_REMOTE_ID x\n")
    access = tmp_path / "access.conf"
    access.write_text(f"SOURCE ANY\nOPEN_PORTS tcp/22\n%include_keys {keys}\n")
    out = tmp_path / "gk.toml"
    assert cli.main(["import-fwknop", str(access), "-o", str(out)]) == 0
    assert [o for _, o in opened(Conversion(out.read_text(), (), 0, ()))] == [["22:tcp"]]
    key_file = tmp_path / "spa.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert f"KEY_BASE64: {K}" in key_file.read_text() and f"HMAC_KEY_BASE64: {H}" in key_file.read_text()
    err = capsys.readouterr().err
    assert f"{keys}:4: warning: OPEN_PORTS in a keys file (%include_keys): ignored" in err
    assert f"{keys}:5:" not in err  # GPG_REMOTE_ID is a keys-file setting


def test_include_keys_counts_where_its_line_is_and_a_later_stanza_line_wins() -> None:
    other = base64.b64encode(bytes(range(1, 33))).decode()
    files = {"/k.conf": f"KEY_BASE64 {other}\nHMAC_KEY_BASE64 {H}\n"}
    result = conv("SOURCE ANY\nOPEN_PORTS tcp/22\nKEY early-phrase\n%include_keys /k.conf\n", files)
    assert "KEY_BASE64: " + other in result.key_files[0].text  # the keys file's, not the KEY before
    result = conv(f"SOURCE ANY\nOPEN_PORTS tcp/22\n%include_keys /k.conf\nKEY_BASE64 {K}\n", files)
    assert "KEY_BASE64: " + K in result.key_files[0].text  # the stanza's line after it
    assert warned(result, "/a.conf:4:", "KEY_BASE64 is set again (line 1 of /k.conf)")
    with pytest.raises(FwknopError, match=r"^/a.conf:2: KEY_BASE64 is not base64"):
        conv("SOURCE ANY\nKEY_BASE64 x*\n%include_keys /k.conf\n", {"/k.conf": f"HMAC_KEY_BASE64 {H}\n"})
    assert len(opened(conv("SOURCE ANY\n%include_keys /k.conf\nOPEN_PORTS tcp/22\n", files))) == 1


def test_a_missing_keys_file_is_an_error_naming_it() -> None:
    with pytest.raises(FwknopError, match=r"^/a.conf:3: %include_keys /gone.keys: cannot read the keys "
                       "file /gone.keys: No such file"):
        conv("SOURCE ANY\nOPEN_PORTS tcp/22\n%include_keys /gone.keys\n", {})
    with pytest.raises(FwknopError, match=r"^/a.conf:2: %include_keys /k: the stanza of SOURCE ANY has "
                       "no KEY or KEY_BASE64 after its keys file"):  # fwknopd checks it there
        conv(f"SOURCE ANY\n%include_keys /k\n{KEYS}", {"/k": "HMAC_KEY hmac-only\n"})


@pytest.mark.parametrize(("text", "error"), [
    ("# ok\nKEY\n", "/k:2: 'KEY' is not NAME value"),
    ("\n  \n", "/k:2: '' is not NAME value"),
    (f"HMAC_KEY_BASE64 {H}\nKEY_BASE64 not*base64\n", "/k:2: KEY_BASE64 is not base64"),
    ("KEY __changeme__\n", "/k:1: KEY is __CHANGEME__"),
    (f"KEY_BASE64 {K}\nHMAC_KEY_BASE64 {K}\n", "/k:2: the encryption and HMAC keys are the same"),
])
def test_a_keys_file_line_fwknopd_refuses_is_an_error_naming_file_and_line(text: str, error: str) -> None:
    with pytest.raises(FwknopError, match="^" + error.replace("*", r"\*")):
        conv("SOURCE ANY\nOPEN_PORTS tcp/22\n%include_keys /k\n", {"/k": text})


def test_access_folder_does_not_need_the_named_access_conf(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.conf").write_text(stanza(22))
    server = tmp_path / "fwknopd.conf"
    server.write_text(f"ACCESS_FOLDER {tmp_path}/d\n")
    out = tmp_path / "gk.toml"
    rc = cli.main(["import-fwknop", str(tmp_path / "none.conf"), "--server-conf", str(server),
                   "-o", str(out)])
    assert rc == 0 and [o for _, o in opened(Conversion(out.read_text(), (), 0, ()))] == [["22:tcp"]]
    assert "none.conf is not imported" in capsys.readouterr().err
    assert cli.main(["import-fwknop", str(tmp_path / "none.conf"), "-o", str(out)]) == 2
    assert "none.conf: no such file" in capsys.readouterr().err


def test_a_keys_file_gives_a_gnupg_stanza_its_passphrase_but_not_its_home() -> None:
    keys = f"GPG_DECRYPT_ID 1234ABCD\nGPG_REMOTE_ID 1111AAAA\nGPG_DECRYPT_PW  pass word\nGPG_HOME_DIR /x\n" \
        f"HMAC_KEY_BASE64 {H}\n"
    result = conv("SOURCE ANY\nOPEN_PORTS tcp/22\nGPG_HOME_DIR /g\n%include_keys /k\n", {"/k": keys})
    files = {f.path: f.text for f in result.key_files}
    assert files["/k/spa.gpg-passphrase"] == "pass word\n" and f"HMAC_KEY_BASE64: {H}" in files["/k/spa.key"]
    assert tomllib.loads(result.toml)["door"][0]["spa_gpg"]["home"] == "/g"
    assert warned(result, "/k:4:", "GPG_HOME_DIR in a keys file (%include_keys): ignored")


def test_a_relative_keys_file_is_read_from_the_current_directory_with_a_warning() -> None:
    files = DictFiles({"k.conf": KEYS})
    result = convert("SOURCE ANY\nOPEN_PORTS tcp/22\n%include_keys k.conf\n", "/a.conf", "/k", None, "",
                     files)
    assert files.read_paths == ["k.conf"] and len(opened(result)) == 1
    assert warned(result, "/a.conf:3:", "%include_keys k.conf: read from the current directory")
