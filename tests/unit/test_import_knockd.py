"""gatekeeper import-knockd: knockd.conf parser, firewall-command reader, converter.

Golden files: each ``tests/fixtures/golden/knockd/NAME.conf`` is converted by the real command
(``gatekeeper import-knockd NAME.conf``, run from that folder); stdout must equal
``NAME.toml`` and stderr ``NAME.warnings``, with the folder's absolute path written
``@GOLDEN@``. ``GATEKEEPER_REGEN_GOLDEN=1 pytest tests/unit/test_import_knockd.py`` rewrites
them from the current output (review the diff); without it the tests never write.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatekeeper.config.load import loads
from gatekeeper.importers.knockd import (
    DEFAULT_CMD_TIMEOUT,
    DEFAULT_OPEN_FOR,
    DEFAULT_SEQ_TIMEOUT,
    convert_file,
)
from gatekeeper.importers.knockd_conf import knockd_reads
from tests.fixtures.configs import GOLDEN as GOLDEN_DIR
from tests.fixtures.knockd import (
    KNOCKD_READS,
    ONE_TIME_LINES,
    ONE_TIME_STEPS,
    conv,
    door_table,
    one_time_files,
    one_time_lines,
    run_cli,
)

GOLDEN = GOLDEN_DIR / "knockd"
CASES = sorted(GOLDEN.glob("*.conf"))
REGEN = os.environ.get("GATEKEEPER_REGEN_GOLDEN") == "1"
HERE = "@GOLDEN@"  # the golden folder's absolute path, in the expected output (a one-time file's)


# --- golden files ------------------------------------------------------------------------


def test_golden_cases_are_there() -> None:
    names = {c.stem for c in CASES}
    assert {"basic_ssh", "open_close", "start_stop", "one_time", "ipv6", "debian", "gateway"} <= names
    if not REGEN:
        for case in CASES:
            assert case.with_suffix(".toml").is_file(), case
            assert case.with_suffix(".warnings").is_file(), case
    orphans = {p.stem for p in GOLDEN.glob("*.toml")} | {p.stem for p in GOLDEN.glob("*.warnings")}
    assert orphans <= names


def test_debian_golden_is_debians_file() -> None:
    shipped = Path("/etc/knockd.conf")
    if not shipped.is_file():
        pytest.skip("knockd is not installed")
    if "openHTTPS" not in shipped.read_text():
        pytest.skip("/etc/knockd.conf was edited locally")
    assert (GOLDEN / "debian.conf").read_text() == shipped.read_text()


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_golden(case: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(GOLDEN)
    rc, out, err = run_cli([case.name], capsys)
    assert rc == 0
    out, err = out.replace(str(GOLDEN), HERE), err.replace(str(GOLDEN), HERE)
    expected_toml, expected_warnings = case.with_suffix(".toml"), case.with_suffix(".warnings")
    if REGEN:
        expected_toml.write_text(out)
        expected_warnings.write_text(err)
    assert out == expected_toml.read_text()
    assert err == expected_warnings.read_text()


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_golden_output_loads(case: Path) -> None:
    text = case.with_suffix(".toml").read_text().replace(HERE, str(GOLDEN))
    cfg = loads(text, case.with_suffix(".toml").name)
    assert cfg.doors


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_golden_warnings_are_one_line_with_file_line_and_section(case: Path) -> None:
    for line in case.with_suffix(".warnings").read_text().splitlines():
        head, _, rest = line.partition(" warning: ")
        assert head.startswith(f"{case.name}:") and head.endswith(":"), line
        assert head[len(case.name) + 1 : -1].isdigit(), line
        assert rest.startswith("["), line


def test_output_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "gatekeeper.toml"
    rc, out, err = run_cli([str(GOLDEN / "debian.conf"), "-o", str(out_file)], capsys)
    assert rc == 0 and out == ""
    assert "warning:" in err
    assert loads(out_file.read_text()).doors[0].name == "openSSH"


# --- the command's errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sequence = 1,2\n", "x.conf:1: 'sequence' comes before any [section]"),
        ("[a]\n  sequence = 1,2\n  bogus = 3\n", "x.conf:3: unknown directive 'BOGUS' in [a]"),
        ("[a]\n  sequence = 1,x,3\n", "x.conf:2: [a] sequence: 'x': port must be a number 1-65535"),
        ("[a]\n  seq_timeout = 5\n", "x.conf:1: [a] has no sequence"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    text: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "x.conf").write_text(text)
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli(["x.conf"], capsys)
    assert rc == 2 and out == ""
    assert err.startswith(f"gatekeeper: {message}")
    assert err.count("\n") == 1


def test_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli([str(tmp_path / "missing.conf")], capsys)
    assert rc == 2 and err == f"gatekeeper: {tmp_path / 'missing.conf'}: no such file\n"
    rc, _, err = run_cli([str(tmp_path)], capsys)
    assert rc == 2 and err.startswith(f"gatekeeper: {tmp_path}: cannot read:") and err.count("\n") == 1


def test_manual_example_opening_every_port_converts_to_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """knockd(1)'s example 2 as written: -p tcp --syn with no --dport opens every tcp
    port, which no gatekeeper door can; nothing is left to run, so exit 2."""
    conf = tmp_path / "all.conf"
    conf.write_text(
        "[options]\n\tlogfile = /var/log/knockd.log\n\n[opencloseSSH]\n"
        "\tsequence = 2000:udp,3000:tcp,4000:udp\n\tseq_timeout = 15\n\ttcpflags = syn,ack\n"
        "\tstart_command = /usr/sbin/iptables -A INPUT -s %IP% -p tcp --syn -j ACCEPT\n"
        "\tcmd_timeout = 5\n"
        "\tstop_command = /usr/sbin/iptables -D INPUT -s %IP% -p tcp --syn -j ACCEPT\n"
    )
    rc, out, err = run_cli([str(conf)], capsys)
    assert rc == 2 and out == ""
    lines = err.splitlines()
    assert lines[-1] == (f"gatekeeper: {conf}: no section could be converted into a gatekeeper door "
                         "(see the warnings above)")
    assert any(":8: warning: [opencloseSSH] start_command:" in ln and "no --dport" in ln for ln in lines)
    assert any(":4: warning: [opencloseSSH] it opens no port" in ln for ln in lines)


# --- converter --------------------------------------------------------------------------------


def test_defaults_come_from_knockd(tmp_path: Path) -> None:
    result = conv(
        "[options]\ninterface = eth1\n[a]\nsequence = 1:udp,2:udp\n"
        "start_command = iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\n"
        "stop_command = iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\n"
    )
    a = door_table(result, "a")
    assert a["sequence_timeout"] == DEFAULT_SEQ_TIMEOUT == 25
    assert a["open_for"] == DEFAULT_CMD_TIMEOUT == 10
    assert "tcp_flags" not in a  # a udp-only sequence needs none
    assert "start_command" not in a and "stop_command" not in a
    assert loads(result.toml).settings.interfaces == ("eth1",)


def test_open_only_section_gets_the_stated_default() -> None:
    result = conv("[a]\nsequence = 1,2\ntcpflags = syn\ncmd_timeout = 99\n"
                  "command = iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\n")
    assert door_table(result, "a")["open_for"] == DEFAULT_OPEN_FOR
    assert any("knockd kept 22:tcp open (no stop_command" in w for w in result.warnings)


def test_rest_of_commands_is_kept_and_shell_only_when_needed() -> None:
    result = conv(
        "[a]\nsequence = 1,2\ntcpflags = syn\ncmd_timeout = 60\n"
        "start_command = iptables -I INPUT -s %IP% -p tcp --dport 22 -j ACCEPT && logger 'in %IP%'\n"
        "stop_command = iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT; echo %IP% >> /tmp/out\n"
    )
    a = door_table(result, "a")
    assert a["opens"] == ["22:tcp"] and a["open_for"] == 60
    assert a["start_command"] == ["logger", "in %IP%"]
    assert a["stop_command"] == ["/bin/sh", "-c", "echo %IP% >> /tmp/out"]
    assert any(":6: warning: [a] stop_command needs a shell (a redirection)" in w for w in result.warnings)


def test_stop_command_that_does_not_delete_the_rule() -> None:
    result = conv("[a]\nsequence = 1,2\ntcpflags = syn\n"
                  "start_command = iptables -A INPUT -s %IP% -p udp --dport 53 -j ACCEPT\n"
                  "stop_command = logger closed %IP%\n")
    assert door_table(result, "a")["stop_command"] == ["logger", "closed", "%IP%"]
    assert any("does not delete the rule for 53:udp" in w for w in result.warnings)


def test_open_close_pair_becomes_one_door_with_close_sequence() -> None:
    result = conv(
        "[close]\nsequence = 3,2,1\ntcpflags = syn\n"
        "command = iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT ; logger bye %IP%\n"
        "[open]\nsequence = 1,2,3\ntcpflags = syn\n"
        "command = iptables -I INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\n"
    )
    assert result.doors == 1
    door = door_table(result, "open")
    assert door["close_sequence"] == ["3:tcp", "2:tcp", "1:tcp"]
    assert door["stop_command"] == ["logger", "bye", "%IP%"]
    assert any("[close] the rest of its command becomes door 'open'" in w for w in result.warnings)


def test_section_deleting_rules_nobody_adds_is_commented_out() -> None:
    result = conv(
        "[a]\nsequence = 1,2\ntcpflags = syn\n"
        "command = iptables -I INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\n"
        "[b]\nsequence = 2,1\ntcpflags = syn\n"
        "command = iptables -D INPUT -s %IP% -p tcp --dport 80 -j ACCEPT\n"
    )
    assert result.doors == 1
    assert "# NOT CONVERTED: it only deletes rules" in result.toml
    assert "# name = \"b\"" in result.toml


def test_ipv6_commands() -> None:
    result = conv(
        "[a]\nsequence = 1,2\ntcpflags = syn\n"
        "start_command = iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\n"
        "start_command_6 = ip6tables -A INPUT -s %IP% -p tcp --dport 2222 -j ACCEPT; logger v6\n"
    )
    a = door_table(result, "a")
    assert a["opens"] == ["22:tcp", "2222:tcp"]
    assert "start_command" not in a
    assert "# start_command_6 = \"logger v6\"" in result.toml
    assert any("knockd opened 22:tcp for IPv4 knockers and 2222:tcp for IPv6 ones" in w
               for w in result.warnings)
    empty6 = conv("[a]\nsequence = 1,2\ntcpflags = syn\n"
                  "start_command = iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\n"
                  "start_command_6 =\n")
    assert any("and nothing for IPv6 ones" in w for w in empty6.warnings)


def test_names_are_made_valid_and_unique() -> None:
    grant = "command = iptables -A INPUT -s %IP% -p tcp --dport {} -j ACCEPT\ntcpflags = syn\n"
    result = conv(f"[open ssh!]\nsequence = 1,2\n{grant.format(22)}[open ssh?]\nsequence = 3,4\n"
                  f"{grant.format(23)}[{'x' * 30}]\nsequence = 5,6\n{grant.format(24)}")
    assert [d.name for d in loads(result.toml).doors] == ["open_ssh", "open_ssh-2", "x" * 24]


def test_doors_gatekeeper_refuses_are_commented_out() -> None:
    grant = "command = iptables -A INPUT -s %IP% -p tcp --dport {} -j ACCEPT\ntcpflags = syn\n"
    result = conv(f"[a]\nsequence = 1,1,2\n{grant.format(22)}"  # a repeat looks like a retransmit
                  f"[b]\nsequence = 5,6\n{grant.format(23)}"
                  f"[c]\nsequence = 5,6\n{grant.format(24)}"  # same sequence as b
                  f"[d]\nsequence = 7,22\n{grant.format(25)}")  # knocks on a port a opens... once a is out
    assert [d.name for d in loads(result.toml).doors] == ["b", "d"]
    assert any(":1: warning: [a] gatekeeper refuses it: sequence[1]: 1:tcp repeats" in w
               for w in result.warnings)
    assert ("k.conf:9: warning: [c] gatekeeper refuses it: sequence: same sequence as b.sequence: door "
            "left commented out") in result.warnings


# --- one-time sequences ------------------------------------------------------------------

def test_one_time_sequences_become_a_one_time_door_with_every_line(tmp_path: Path) -> None:
    result = convert_file(str(one_time_files(tmp_path, seq="once.txt")))
    table = door_table(result, "opencloseWeb")
    assert table["one_time_sequences"] == str(tmp_path / "once.txt")
    assert "sequence" not in table, "a one-time door must not become a sequence anyone can replay"
    assert (table["opens"], table["open_for"], table["sequence_timeout"]) == (["8443:tcp"], 30, 10)
    assert table["tcp_flags"] == "syn"  # knockd's tcpflags carries over, as on a plain door
    assert one_time_lines(result.toml) == ONE_TIME_STEPS
    assert "not supported" not in result.toml + "\n".join(result.warnings)
    seq = str(tmp_path / "once.txt")
    about_file = [w for w in result.warnings if "[opencloseWeb]" in w]
    assert len(about_file) == 3, about_file
    assert any(w.startswith(f"{tmp_path / 'knockd.conf'}:6: warning: [opencloseWeb] one_time_sequences "
                            f"once.txt is relative") and seq in w for w in about_file), about_file
    assert any(f"{seq}:4: knockd reads only 3001:tcp" in w and "3001:tcp,3002:tcp,3003:tcp" in w
               for w in about_file), about_file
    assert any("/var/lib/gatekeeper" in w and seq in w for w in about_file), about_file
    # the file stays knockd's: nothing written to it
    assert (tmp_path / "once.txt").read_text() == ONE_TIME_LINES


def test_one_time_file_under_the_state_dir_needs_no_move(tmp_path: Path) -> None:
    conf = one_time_files(tmp_path)
    result = convert_file(str(conf))
    assert any("/var/lib/gatekeeper" in w for w in result.warnings)
    moved = conv(conf.read_text().replace(str(tmp_path / "once.txt"), "/var/lib/gatekeeper/once.txt"))
    assert not any("/var/lib/gatekeeper" in w and "under" in w for w in moved.warnings), moved.warnings


@pytest.mark.parametrize(
    ("lines", "expected", "warning"),
    [
        # knockd skips a line it cannot read; gatekeeper reads icmp too
        ("1,2,3\n 9:icmp\n", [(1, ["1:tcp", "2:tcp", "3:tcp"]), (2, ["9:icmp"])],
         ":2: knockd skips this line ('9:icmp'); gatekeeper reads it as 9:icmp"),
        # a '#' after the start: knockd's atoi() stops there, gatekeeper takes it as a comment
        ("5,6#x,7\n", [(1, ["5:tcp", "6:tcp"])],
         ":1: knockd reads 5:tcp,6:tcp,7:tcp from '5,6#x,7'; gatekeeper reads 5:tcp,6:tcp"),
    ],
)
def test_one_time_lines_read_differently_by_knockd_are_named(
        tmp_path: Path, lines: str, expected: list[tuple[int, list[str]]], warning: str) -> None:
    result = convert_file(str(one_time_files(tmp_path, lines=lines)))
    assert one_time_lines(result.toml) == expected
    assert any(f"{tmp_path / 'once.txt'}{warning}" in w for w in result.warnings), result.warnings


def test_one_time_file_gatekeeper_refuses_leaves_the_door_commented_out(tmp_path: Path) -> None:
    # stock knockd starts with this file (it reads line 1 and skips line 2 when it gets there)
    result = convert_file(str(one_time_files(tmp_path, lines=" 1,2,3\n 4:sctp\n")))
    assert result.doors == 0
    assert any(f"{tmp_path / 'once.txt'}:2" in w and "sctp" in w and "door left commented out" in w
               for w in result.warnings), result.warnings
    assert "sequence = " not in result.toml.replace("# sequence_timeout", "")


def test_one_time_file_with_no_line_left_and_missing_file(tmp_path: Path) -> None:
    used_up = convert_file(str(one_time_files(tmp_path, lines="#1,2,3\n")))
    assert used_up.doors == 1 and one_time_lines(used_up.toml) == []
    assert any("no unused sequence" in w for w in used_up.warnings), used_up.warnings
    assert "sequence = [" not in used_up.toml
    missing = convert_file(str(one_time_files(tmp_path, seq=str(tmp_path / "nope"))))
    assert missing.doors == 0
    assert any("no such file" in w and "door left commented out" in w for w in missing.warnings)
    assert "sequence = [" not in missing.toml


def test_one_time_sequences_win_over_a_sequence(tmp_path: Path) -> None:
    conf = one_time_files(tmp_path)
    conf.write_text(conf.read_text().replace("\tseq_timeout", "\tsequence = 7,8,9\n\tseq_timeout"))
    result = convert_file(str(conf))
    assert "sequence" not in door_table(result, "opencloseWeb")
    assert one_time_lines(result.toml) == ONE_TIME_STEPS
    assert any(":7: warning: [opencloseWeb] sequence 7:tcp,8:tcp,9:tcp is not carried over" in w
               for w in result.warnings), result.warnings


@pytest.mark.parametrize(("line", "expected"), KNOCKD_READS)
def test_knockd_reads(line: str, expected: str | None) -> None:
    knocks = knockd_reads(line)
    assert (None if knocks is None else ",".join(map(str, knocks))) == expected


def test_interfaces() -> None:
    grant = ("[a]\nsequence = 1,2\ntcpflags = syn\n"
             "command = iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\n")
    alias = conv(f"[options]\ninterface = eth0:1\n{grant}")
    assert loads(alias.toml).settings.interfaces == ("eth0",)
    loopback = conv(f"[options]\ninterface = lo\n{grant}")
    assert loads(loopback.toml).settings.interfaces == ()
    assert any("interface 'lo' cannot be guarded" in w for w in loopback.warnings)


def test_target_and_unusual_commands_warn() -> None:
    result = conv("[a]\nsequence = 1,2\ntcpflags = syn\ntarget = 192.0.2.9\n"
                  "command = iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT # ssh\n")
    assert door_table(result, "a")["opens"] == ["22:tcp"]
    assert any("target 192.0.2.9 not carried over" in w for w in result.warnings)
    assert any("'# ssh' is a comment to the shell" in w for w in result.warnings)


def test_toml_strings_are_escaped() -> None:
    result = conv('[a b"c]\nsequence = 1,2\ntcpflags = syn\n'
                  'command = iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT; '
                  'logger "quote \\" back\\\\slash \x7f\ttab" | cat\n')
    assert door_table(result, "a_b_c")["start_command"] == [
        "/bin/sh", "-c", 'logger "quote \\" back\\\\slash \x7f\ttab" | cat']
    assert '# [a b"c], line 1' in result.toml
    weird = conv("[options]\nlogfile = /var/log/\x01k\n[a\x7fb]\nsequence = 1,2\ntcpflags = syn\n"
                 "command = iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\n")
    assert "# [a\\x7fb], line 3" in weird.toml and "/var/log/\\x01k" in weird.toml
    assert loads(weird.toml).doors[0].name == "a_b"
    assert all(w.isprintable() for w in weird.warnings)


# --- property: any config the parser takes converts to TOML that loads ------------------------

_commands = st.sampled_from([
    "",
    "/sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT",
    "/sbin/iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT",
    "iptables -I INPUT -s %IP% -p udp --dport 7000 -j ACCEPT",
    "iptables -D INPUT -s %IP% -p udp --dport 7000 -j ACCEPT",
    "iptables -A FORWARD -s %IP% -d 192.0.2.1 -p tcp --dport 3389 -j ACCEPT",
    "iptables -A FORWARD -s %IP% -d 192.0.2.2 -p tcp --dport 22 -j ACCEPT",
    "iptables -A INPUT -s %IP% -p tcp -j ACCEPT",
    "logger knocked %IP% && iptables -A INPUT -s %IP% -p tcp --dport 80 -j ACCEPT",
    "echo %IP% > /tmp/x",
])
_knock = st.tuples(st.sampled_from([22, 80, 7000, 7001, 7002, 9000]), st.sampled_from(["", ":udp", ":tcp"]))
_section = st.fixed_dictionaries(
    {"sequence": st.lists(_knock, min_size=1, max_size=4)},
    optional={
        "start_command": _commands, "stop_command": _commands, "start_command_6": _commands,
        "cmd_timeout": st.integers(0, 10**7), "seq_timeout": st.integers(0, 5000),
        "tcpflags": st.sampled_from(["syn", "syn,!ack", "fin", "!ack", "ack,urg"]),
        "target": st.just("192.0.2.1"),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_section, min_size=1, max_size=4), st.sampled_from(["", "eth1", "lo", "br0.5"]))
def test_any_parsed_config_converts_to_toml_that_loads(sections: list[dict[str, object]], iface: str) -> None:
    lines = ["[options]", "UseSyslog"] + ([f"Interface = {iface}"] if iface else [])
    for i, sec in enumerate(sections):
        lines.append(f"[door{i}]")
        for key, value in sec.items():
            if key == "sequence":
                assert isinstance(value, list)
                value = ",".join(f"{p}{proto}" for p, proto in value)
            lines.append(f"{key} = {value}")
    result = conv("\n".join(lines) + "\n")
    tomllib.loads(result.toml)  # valid TOML even with every door commented out
    if result.doors:
        assert len(loads(result.toml).doors) == result.doors
    for warning in result.warnings:
        assert "\n" not in warning and warning.startswith("k.conf:")
