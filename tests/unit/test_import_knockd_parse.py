"""The knockd importer's readers: knockd.conf's syntax as knockd reads it, and the shell and
iptables commands of a section (which become grants, which stay commands). (Golden files, the
command and the converter: test_import_knockd.py.)"""

from __future__ import annotations

import pytest

from gatekeeper.importers.firewall import (
    NotAGrant,
    Port,
    Rule,
    needs_shell,
    parse_iptables,
    shell_comment,
    split_script,
)
from gatekeeper.importers.knockd import (
    Knock,
    KnockdError,
    parse,
    parse_sequence,
)

# --- parser ---------------------------------------------------------------------------------


def test_keys_are_case_insensitive_and_aliases_resolve() -> None:
    cfg = parse(
        "[OPTIONS-not]\nSEQUENCE = 1,2\n"
        "[options]\nlogFILE = /l\nINTERFACE = eth1\n"
        "[a]\nSeQuEnCe = 7000:UDP, 8000 ,9000:Tcp\nTimeout = 7\nCOMMAND = /bin/true %IP%\n"
        "Cmd_Timeout = 9\nTCPFLAGS = SYN,!Ack\n",
        "k.conf",
    )
    assert [s.name for s in cfg.sections] == ["OPTIONS-not", "a"]
    a = cfg.sections[1]
    assert a.sequence == (Knock(7000, "udp"), Knock(8000, "tcp"), Knock(9000, "tcp"))
    assert a.seq_timeout == 7 and a.cmd_timeout == 9
    assert a.values["START_COMMAND"].text == "/bin/true %IP%"
    assert a.tcp_flags == "syn,!ack"
    assert cfg.options.values["LOGFILE"].text == "/l"
    assert cfg.options.values["INTERFACE"].text == "eth1"


def test_options_section_name_is_case_sensitive_as_in_knockd() -> None:
    with pytest.raises(KnockdError, match=r"^k.conf:2: .*\[Options\].*lower case"):
        parse("[Options]\nlogfile = /var/log/knockd.log\n", "k.conf")


def test_comments_and_blank_lines() -> None:
    cfg = parse(
        "# a comment\n\n   # an indented one\n[options]\n\t# in a section\n  UseSyslog\n"
        "[a]\n sequence = 1,2,3   # ssh\n start_command = /usr/bin/logger '#1' %IP%\n",
        "k.conf",
    )
    a = cfg.sections[0]
    assert a.sequence == (Knock(1, "tcp"), Knock(2, "tcp"), Knock(3, "tcp"))
    assert any("'# ssh' taken as a comment" in n.message for n in cfg.notices)
    # only a line that starts with '#' is a comment: in a value, '#' stays
    assert a.values["START_COMMAND"].text == "/usr/bin/logger '#1' %IP%"


def test_bare_flags() -> None:
    cfg = parse("[options]\nUseSyslog\n[a]\nusesyslog\nsequence = 1,2\n", "k.conf")
    assert cfg.options.usesyslog == 4  # knockd takes it in any section; the last one counts
    with pytest.raises(KnockdError, match=r"^k.conf:2: 'Interface': expected KEY = VALUE"):
        parse("[options]\nInterface\n", "k.conf")
    for text in ("[a]\nUseSyslog = yes\nsequence = 1\n", "[options]\nUseSyslog = yes\n"):
        with pytest.raises(KnockdError, match=r"^k.conf:2: UseSyslog takes no value"):
            parse(text, "k.conf")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("UseSyslog\n", 1, "comes before any [section]"),
        ("[]\n", 1, "bad section name"),
        ("[options]\nsequence = 1,2\n", 2, "it belongs in a [name] section"),
        ("[a]\nlogfile = /x\nsequence = 1\n", 2, "it belongs in [options]"),
        ("[a]\nsequence = 1,,2\n", 2, "empty entry"),
        ("[a]\nsequence = 1,2,\n", 2, "empty entry"),
        ("[a]\nsequence = 0,2\n", 2, "port must be a number 1-65535"),
        ("[a]\nsequence = 65536\n", 2, "port must be a number 1-65535"),
        ("[a]\nsequence = 1:icmp\n", 2, "protocol must be tcp or udp"),
        ("[a]\nsequence = " + ",".join(str(p) for p in range(1, 34)) + "\n", 2, "more than 32 ports"),
        ("[a]\nsequence = 1\nseq_timeout = soon\n", 3, "expected a number of seconds"),
        ("[a]\nsequence = 1\ncmd_timeout = -5\n", 3, "expected a number of seconds"),
        ("[a]\nsequence = 1\ntcpflags = syn, fun\n", 3, "unknown flag 'fun'"),
        ("[a]\nsequence = 1\ntcpflags =\n", 3, "unknown flag ''"),
        ("[a]\nsequence = 1\none_time_sequences =\n", 3, "expected a file name"),
        ("[options]\nlogfile = x\n[b]\nseq_timeout = 3\n", 3, "[b] has no sequence"),
        ("[a]\r\nsequence = 1\r\nfoo = 2\r\n", 3, "unknown directive 'FOO'"),
    ],
)
def test_syntax_errors_name_the_line(text: str, line: int, message: str) -> None:
    with pytest.raises(KnockdError) as exc:
        parse(text, "k.conf")
    assert str(exc.value).startswith(f"k.conf:{line}: ")
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_tcpflags_lines_add_up_and_the_last_mention_of_a_flag_wins() -> None:
    cfg = parse("[a]\nsequence = 1\ntcpflags = syn,ack\ntcpflags = !ack,fin\n", "k.conf")
    assert cfg.sections[0].tcp_flags == "fin,syn,!ack"
    assert not cfg.notices


def test_repeated_key_and_lenient_numbers_are_notices() -> None:
    cfg = parse("[a]\nsequence = 1\nsequence = 2,3\nseq_timeout = 10s\n", "k.conf")
    assert cfg.sections[0].sequence == (Knock(2, "tcp"), Knock(3, "tcp"))
    assert cfg.sections[0].seq_timeout == 10
    messages = [(n.line, n.message) for n in cfg.notices]
    assert (3, "sequence is set again (line 2); the last one counts, as in knockd") in messages
    assert (4, "seq_timeout = '10s' read as 10, as knockd reads it") in messages


def test_parse_sequence() -> None:
    assert parse_sequence("7000,8000:udp,9000:TCP") == (
        Knock(7000, "tcp"), Knock(8000, "udp"), Knock(9000, "tcp"))
    with pytest.raises(ValueError, match="protocol"):
        parse_sequence("7000:tcp:x")


# --- shell and iptables ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ("/sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT", None),
        ("/usr/bin/logger -t knockd 'opened for %IP%; really'", None),
        ('/usr/bin/logger "a | b > c"', None),
        ("a | b", "a pipe '|'"),
        ("a; b", "';'"),
        ("a && b", "'&&'"),
        ("a || b", "'||'"),
        ("a > /tmp/x", "a redirection"),
        ("echo $HOME", "an expansion ('$')"),
        ('echo "$(date)"', "an expansion ('$' or '`')"),
        ("ls *.conf", "a wildcard or '~'"),
        ("cat ~/x", "a wildcard or '~'"),
        ("a # note", "a comment ('#')"),
        ("cd /tmp", "the shell word 'cd'"),
        ("FOO=1 bar", "a variable assignment"),
        ("a 'unclosed", "an unclosed quote"),
    ],
)
def test_needs_shell(command: str, reason: str | None) -> None:
    assert needs_shell(command) == reason


def test_shell_comment() -> None:
    assert shell_comment("iptables -A INPUT # open") == 18
    assert shell_comment("logger 'a # b' c#d") is None


def test_split_script_and_take_parts_out() -> None:
    script = split_script("a x; ipt 1 && b 'y;z'; c")
    assert script.parts == ("a x", "ipt 1", "b 'y;z'", "c")
    assert script.separators == (";", "&&", ";")
    assert script.without(set()) == "a x; ipt 1 && b 'y;z'; c"
    assert script.without({1}) == "a x; b 'y;z'; c"
    assert script.without({0, 1}) == "b 'y;z'; c"
    assert script.without({3}) == "a x; ipt 1 && b 'y;z'"
    assert script.without({0, 1, 2, 3}) == ""
    assert split_script("ipt 1;").parts == ("ipt 1",)
    for nested in ("(a; b)", "a $(b; c)", "if a; then b; fi", "{ a; b; }", "a # x; y"):
        assert split_script(nested).parts == (nested,)


SSH = Port("tcp", 22)


@pytest.mark.parametrize(
    ("command", "delete", "ports"),
    [
        ("/sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT", False, [SSH]),
        ("iptables -I INPUT 1 -s %IP% -p tcp --dport 22 -j ACCEPT", False, [SSH]),
        ("iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT", True, [SSH]),
        ("/usr/sbin/ip6tables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT", False, [SSH]),
        ("iptables-nft -w 5 -I INPUT -s %IP%/32 -p 6 --dport=22 -j ACCEPT", False, [SSH]),
        ("iptables -A INPUT -p tcp -m state --state NEW -s %IP% --dport 22 -j ACCEPT", False, [SSH]),
        ("iptables -A INPUT -s %IP% -p tcp -m conntrack --ctstate NEW,ESTABLISHED -m tcp --dport 22 "
         "--syn -m comment --comment 'knockd' -j ACCEPT", False, [SSH]),
        ("iptables -t filter -A INPUT -s %IP% -p UDP --dport 51820 -j ACCEPT", False,
         [Port("udp", 51820)]),
        ("iptables -A INPUT -s %IP% -p tcp -m multiport --dports 80,443,8000:8002 -j ACCEPT", False,
         [Port("tcp", p) for p in (80, 443, 8000, 8001, 8002)]),
        ("iptables -A FORWARD -s %IP% -d 192.0.2.7 -p tcp --dport 3389 -j ACCEPT", False,
         [Port("tcp", 3389, "192.0.2.7")]),
        ("/usr/local/sbin/knock_add -i -c INPUT -p tcp -d 443 -f %IP%", False, [Port("tcp", 443)]),
        ("/usr/sbin/knock_helper_ipt.sh -x -f %IP% -d 53 -p udp -m", True, [Port("udp", 53)]),
    ],
)
def test_iptables_grants(command: str, delete: bool, ports: list[Port]) -> None:
    rule = parse_iptables(command.replace("'", "").split())
    assert isinstance(rule, Rule)
    assert rule.delete == delete
    assert list(rule.ports) == ports


def test_iptables_notes() -> None:
    command = "iptables -A INPUT -i eth1 -d 203.0.113.1 -s %IP% --dport 22 -j ACCEPT"
    rule = parse_iptables(command.split())
    assert isinstance(rule, Rule) and rule.ports == (SSH,)
    assert [n.split(":")[0] for n in rule.notes] == [
        "-i eth1 left out", "no -p", "-d 203.0.113.1 left out"]


@pytest.mark.parametrize(
    ("command", "reason", "appended"),
    [
        ("iptables -A INPUT -s %IP% -p tcp --syn -j ACCEPT", "no --dport", True),
        ("iptables -A INPUT -p tcp --dport 22 -j ACCEPT", "no -s %IP%", True),
        ("iptables -I INPUT -s %IP% -p tcp --dport 22 -j DROP", "jumps to DROP", False),
        ("iptables -t nat -A PREROUTING -s %IP% -p tcp --dport 22 -j ACCEPT", "nat table", False),
        ("iptables -A OUTPUT -d %IP% -p tcp --sport 22 -j ACCEPT", "--sport", False),
        ("iptables -A INPUT -s %IP% -p icmp --dport 1 -j ACCEPT", "-p icmp", True),
        ("iptables -A INPUT -s %IP% -p tcp --dport 1:100 -j ACCEPT", "more than 32 ports", True),
        ("iptables -A INPUT -s %IP% -p tcp --dport 22 -m limit --limit 1/s -j ACCEPT", "-m limit", True),
        ("iptables -A INPUT ! -s %IP% -p tcp --dport 22 -j ACCEPT", "negates", True),
        ("iptables -D INPUT 3", "by its number", False),
        ("iptables -A FORWARD -s %IP% -p tcp --dport 22 -j ACCEPT", "without one -d", False),
        ("iptables -A FORWARD -s %IP% -d 10.0.0.0/8 -p tcp --dport 22 -j ACCEPT", "not one address", False),
        ("iptables -A INPUT -s %IP%/24 -p tcp --dport 22 -j ACCEPT", "not the knocker's address", True),
        ("iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT --state ESTABLISHED", "no new", True),
        ("iptables -F", "option -F", False),
        ("knock_add -t -a -f %IP% -d 22", "changes nothing", False),
    ],
)
def test_iptables_not_grants(command: str, reason: str, appended: bool) -> None:
    rule = parse_iptables(command.split())
    assert isinstance(rule, NotAGrant)
    assert reason in rule.reason
    assert rule.appended == appended


def test_not_iptables() -> None:
    assert parse_iptables(["/usr/bin/logger", "-A", "INPUT"]) is None
    assert parse_iptables([]) is None
