"""gatekeeper.config: what loads, what it loads into, and the one-line error for each mistake."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from gatekeeper.config import ConfigError
from gatekeeper.config.load import load, loads
from gatekeeper.model import ICMP, TCP, UDP, Config, Door, Port, TcpFlags, port_key
from tests.fixtures.configs import EXAMPLE as EXAMPLE_PATH

EXAMPLE = EXAMPLE_PATH
NAME = "test.toml"
FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

Table = dict[str, object]


def value(v: object) -> str:
    """A Python value as a TOML value (strings as JSON, which TOML reads the same)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(value(x) for x in v) + "]"
    raise TypeError(v)


def door(**keys: object) -> Table:
    """An SSH door; keyword arguments override keys, ``None`` removes one."""
    base: Table = {"name": "ssh", "sequence": ["7000:udp", "8000", "9000:udp"], "opens": ["22"]}
    base.update(keys)
    return {k: v for k, v in base.items() if v is not None}


def toml(settings: Table | None = None, doors: list[Table] | None = None, top: str = "") -> str:
    lines = [top]
    if settings is not None:
        lines.append("[gatekeeper]")
        lines += [f"{k} = {value(v)}" for k, v in settings.items()]
    for d in [door()] if doors is None else doors:
        lines.append("[[door]]")
        lines += [f"{k} = {value(v)}" for k, v in d.items()]
    return "\n".join(lines) + "\n"


def fails(text: str) -> str:
    """The ConfigError message for ``text``, checked to be a single line naming the file."""
    with pytest.raises(ConfigError) as info:
        loads(text, NAME)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    assert message.startswith(f"{NAME}: "), message
    return message


# -- what loads ---------------------------------------------------------------------------


def test_example_file_loads() -> None:
    config = load(EXAMPLE)
    assert config.path == str(EXAMPLE)
    settings = config.settings
    assert settings.queue == 0
    assert settings.interfaces == ("eth0",)
    assert settings.public == (Port(TCP, 80), Port(TCP, 443))
    assert settings.max_sources == 65536
    ssh, rdp = config.doors
    assert ssh == Door(
        name="ssh",
        sequence=(Port(UDP, 7000), Port(TCP, 8000), Port(UDP, 9000)),
        opens=(Port(TCP, 22),),
        sequence_timeout=5.0,
        tcp_flags=TcpFlags(SYN, 0),
        open_for=30,
        close_sequence=(Port(TCP, 9000), Port(UDP, 8000), Port(TCP, 7000)),
    )
    assert rdp.sequence == (Port(TCP, 4001), Port(UDP, 4002), Port(TCP, 4003))
    assert rdp.opens == (Port(TCP, 3389),)
    assert rdp.open_for == 60
    assert rdp.host == ipaddress.IPv4Address("198.51.100.10")
    assert config.protected == {port_key(TCP, 22), port_key(TCP, 3389)}


def test_example_file_loads_the_same_through_loads() -> None:
    assert loads(EXAMPLE.read_text(), str(EXAMPLE)) == load(EXAMPLE)


def test_defaults() -> None:
    config = loads(toml(doors=[{"name": "a", "sequence": ["1000"], "opens": ["22"]}]))
    assert config.path == "<config>"
    settings = config.settings
    assert (settings.queue, settings.interfaces, settings.public, settings.max_sources) == (0, (), (), 65536)
    assert (settings.prefix_quota, settings.failure_limit, settings.prefix_failure_limit,
            settings.failure_lockout) == (64, 10, 100, 300)
    assert settings.batch == 4
    (d,) = config.doors
    assert d == Door(name="a", sequence=(Port(TCP, 1000),), opens=(Port(TCP, 22),))
    assert d.sequence_timeout == 5.0
    assert d.tcp_flags == TcpFlags(required=SYN, forbidden=0)
    assert d.open_for == 30
    assert d.close_sequence == ()
    assert d.start_command == () and d.stop_command == ()
    assert d.command_timeout == 10.0
    assert d.host is None
    assert config.protected == {port_key(TCP, 22)}


def test_empty_gatekeeper_table_and_empty_public_are_defaults() -> None:
    settings = loads(toml({"public": [], "interfaces": []})).settings
    assert (settings.interfaces, settings.hotplug_interfaces, settings.public) == ((), (), ())
    assert loads(toml({})).settings == loads(toml()).settings


def test_all_settings() -> None:
    config = loads(toml(
        {"queue": 100, "interfaces": ["eth0", "wg0", "br-lan.10", "ppp+"], "hotplug_interfaces": ["wg0"],
         "public": ["80", "53:udp", 443],
         "max_sources": 16, "prefix_quota": 0, "failure_limit": 3, "prefix_failure_limit": 0,
         "failure_lockout": 86400, "batch": 1024},
        [door(sequence_timeout=0.5, open_for=604800, command_timeout=3600, tcp_flags="syn,!ack",
              close_sequence=["1:icmp", "0:icmp"], host="2001:db8::10")],
    ))
    settings = config.settings
    assert settings.queue == 100
    assert settings.interfaces == ("eth0", "wg0", "br-lan.10", "ppp+")
    assert settings.hotplug_interfaces == ("wg0",)
    assert settings.public == (Port(TCP, 80), Port(UDP, 53), Port(TCP, 443))
    assert settings.max_sources == 16 and settings.batch == 1024
    assert (settings.prefix_quota, settings.failure_limit, settings.prefix_failure_limit,
            settings.failure_lockout) == (0, 3, 0, 86400)
    (d,) = config.doors
    assert d.sequence_timeout == 0.5 and isinstance(d.sequence_timeout, float)
    assert d.open_for == 604800
    assert d.command_timeout == 3600.0 and isinstance(d.command_timeout, float)
    assert d.tcp_flags == TcpFlags(SYN, ACK)
    assert d.close_sequence == (Port(ICMP, 1), Port(ICMP, 0))
    assert d.host == ipaddress.IPv6Address("2001:db8::10")
    # a door with a host protects ports behind the gateway, so its knocks may reuse them
    assert config.protected == {port_key(TCP, 22)}


@pytest.mark.parametrize(
    ("written", "step"),
    [
        ("7000", Port(TCP, 7000)),
        (7000, Port(TCP, 7000)),
        ("7000:tcp", Port(TCP, 7000)),
        ("7000:udp", Port(UDP, 7000)),
        (" 7000:UDP ", Port(UDP, 7000)),
        ("1", Port(TCP, 1)),
        ("65535:udp", Port(UDP, 65535)),
        ("0:icmp", Port(ICMP, 0)),
        ("65507:icmp", Port(ICMP, 65507)),
        ("007", Port(TCP, 7)),
    ],
)
def test_step_forms(written: object, step: Port) -> None:
    (d,) = loads(toml(doors=[door(sequence=[written])])).doors
    assert d.sequence == (step,)


def test_step_text_and_key() -> None:
    assert str(Port(UDP, 7000)) == "7000:udp"
    assert str(Port(ICMP, 64)) == "64:icmp"
    assert Port(UDP, 7000).key == port_key(UDP, 7000) == UDP << 16 | 7000


def test_a_step_may_come_back_later_in_a_sequence() -> None:
    (d,) = loads(toml(doors=[door(sequence=["1000", "2000", "1000", "1000:udp"])])).doors
    assert d.sequence == (Port(TCP, 1000), Port(TCP, 2000), Port(TCP, 1000), Port(UDP, 1000))


def test_knock_may_share_a_port_number_with_another_protocol_and_with_a_host_door() -> None:
    config = loads(toml({"public": ["80"]}, [
        door(sequence=["22:udp", "80:udp", "3389"]),
        door(name="rdp", sequence=["4001"], opens=["3389"], host="198.51.100.10"),
    ]))
    assert [d.name for d in config.doors] == ["ssh", "rdp"]


@pytest.mark.parametrize(
    ("written", "flags"),
    [
        ("syn", TcpFlags(SYN, 0)),
        ("syn,!ack", TcpFlags(SYN, ACK)),
        (" SYN , !Ack ", TcpFlags(SYN, ACK)),
        ("syn,ack", TcpFlags(SYN | ACK, 0)),
        ("!rst,!fin", TcpFlags(0, RST | FIN)),
        ("fin,syn,rst,psh,ack,urg", TcpFlags(FIN | SYN | RST | PSH | ACK | URG, 0)),
        ("syn,syn", TcpFlags(SYN, 0)),
    ],
)
def test_tcp_flags_parsing(written: str, flags: TcpFlags) -> None:
    (d,) = loads(toml(doors=[door(tcp_flags=written)])).doors
    assert d.tcp_flags == flags


def test_tcp_flags_match() -> None:
    flags = TcpFlags(SYN, ACK)
    assert flags.matches(SYN)
    assert flags.matches(SYN | PSH)
    assert not flags.matches(SYN | ACK)
    assert not flags.matches(ACK)
    assert not flags.matches(0)


@pytest.mark.parametrize(
    ("written", "argv"),
    [
        ("/usr/bin/logger opened %IP%", ("/usr/bin/logger", "opened", "%IP%")),
        ("/usr/bin/logger 'opened ssh' \"for %IP%\"", ("/usr/bin/logger", "opened ssh", "for %IP%")),
        (["/usr/bin/logger", "opened ssh", "%IP%"], ("/usr/bin/logger", "opened ssh", "%IP%")),
        (["/bin/true"], ("/bin/true",)),
    ],
)
def test_commands(written: object, argv: tuple[str, ...]) -> None:
    (d,) = loads(toml(doors=[door(start_command=written, stop_command=written)])).doors
    assert d.start_command == argv
    assert d.stop_command == argv


def test_config_objects_are_frozen() -> None:
    config = loads(toml())
    with pytest.raises(AttributeError):
        config.doors[0].open_for = 5  # type: ignore[misc]
    assert isinstance(config, Config)


# -- errors: file and TOML ----------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == f"{path}: no such file"


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path)  # a directory
    message = str(info.value)
    assert message.startswith(f"{tmp_path}: cannot read: ") and "\n" not in message


def test_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(toml().encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: cannot read: ") and "\n" not in message


def test_load_names_the_file_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "gatekeeper.toml"
    path.write_text(toml({"queue": -1}))
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: gatekeeper.queue: ")


@pytest.mark.parametrize(
    "text",
    [
        "[[door]\nname = 'a'\n",
        "[gatekeeper]\nqueue = \n",
        "[gatekeeper]\nqueue = 1\nqueue = 2\n",
        "door = [\n",
        "name = \"unterminated\n",
    ],
)
def test_not_toml(text: str) -> None:
    assert fails(text).startswith(f"{NAME}: not valid TOML: ")


# -- errors: every key --------------------------------------------------------------------

S = "gatekeeper"
D = "door[0] (ssh)"

# (test id, the config, the key path the message must name, a piece of the message)
ERRORS: list[tuple[str, str, str, str]] = [
    # top level
    ("relative state_dir", toml({"state_dir": "var/lib/gk"}), "gatekeeper.state_dir",
     "an absolute path"),
    ("metrics host name", toml(top='[metrics]\nlisten = "localhost:9464"'), "metrics.listen",
     "expected ADDRESS:PORT"),
    ("metrics port zero", toml(top='[metrics]\nlisten = "127.0.0.1:0"'), "metrics.listen",
     "port must be 1-65535"),
    ("metrics unknown key", toml(top='[metrics]\nport = 1'), "metrics.port", "unknown key"),
    ("unknown top-level key", toml(top="doors = 1"), "doors",
     "unknown key (allowed: cluster, door, gatekeeper, metrics)"),
    ("unprintable unknown key", toml(top='"a\\nb" = 1'), "'a\\nb'", "unknown key"),
    ("no door", "[gatekeeper]\nqueue = 1\n", "door", "no [[door]] defined"),
    ("empty door list", "door = []\n", "door", "no [[door]] defined"),
    ("door not a list", "door = 1\n", "door", "must be a list"),
    ("door is a table", "[door]\nname = 'a'\n", "door", "must be a list"),
    ("gatekeeper not a table", "gatekeeper = 1\n" + toml(), S, "must be a table"),
    # [gatekeeper]
    ("unknown settings key", toml({"queues": 1}), f"{S}.queues", "unknown key"),
    ("queue bool", toml({"queue": True}), f"{S}.queue", "must be a whole number, got True"),
    ("queue string", toml({"queue": "0"}), f"{S}.queue", "must be a whole number"),
    ("queue float", toml({"queue": 1.0}), f"{S}.queue", "must be a whole number"),
    ("queue negative", toml({"queue": -1}), f"{S}.queue", "between 0 and 65535, got -1"),
    ("queue too big", toml({"queue": 65536}), f"{S}.queue", "between 0 and 65535, got 65536"),
    ("interfaces string", toml({"interfaces": "eth0"}), f"{S}.interfaces", "must be a list"),
    ("interface not a string", toml({"interfaces": ["eth0", 1]}), f"{S}.interfaces[1]", "must be a string"),
    ("interface with space", toml({"interfaces": ["eth 0"]}), f"{S}.interfaces[0]", "not an interface name"),
    ("interface with slash", toml({"interfaces": ["a/b"]}), f"{S}.interfaces[0]", "not an interface name"),
    ("interface with colon", toml({"interfaces": ["eth0:1"]}), f"{S}.interfaces[0]", "not an interface name"),
    ("interface empty", toml({"interfaces": [""]}), f"{S}.interfaces[0]", "not an interface name"),
    ("interface too long", toml({"interfaces": ["x" * 16]}), f"{S}.interfaces[0]", "not an interface name"),
    ("interface newline", toml({"interfaces": ["eth0\n"]}), f"{S}.interfaces[0]", "not an interface name"),
    ("interface lo", toml({"interfaces": ["eth0", "lo"]}), f"{S}.interfaces[1]", "loopback is never guarded"),
    ("interface twice", toml({"interfaces": ["eth0", "eth1", "eth0"]}), f"{S}.interfaces", "twice"),
    ("hotplug string", toml({"interfaces": ["wg0"], "hotplug_interfaces": "wg0"}), f"{S}.hotplug_interfaces",
     "must be a list"),
    ("hotplug not guarded", toml({"interfaces": ["eth0"], "hotplug_interfaces": ["wg0"]}),
     f"{S}.hotplug_interfaces[0]", "'wg0' is not in gatekeeper.interfaces"),
    ("hotplug with all interfaces", toml({"hotplug_interfaces": ["wg0"]}), f"{S}.hotplug_interfaces[0]",
     "not in gatekeeper.interfaces"),
    ("hotplug wildcard", toml({"interfaces": ["ppp+"], "hotplug_interfaces": ["ppp+"]}),
     f"{S}.hotplug_interfaces[0]", "'ppp+' is a wildcard, which never has to exist"),
    ("hotplug twice", toml({"interfaces": ["wg0"], "hotplug_interfaces": ["wg0", "wg0"]}),
     f"{S}.hotplug_interfaces", "twice"),
    ("public string", toml({"public": "80"}), f"{S}.public", "must be a list"),
    ("public bool", toml({"public": False}), f"{S}.public", "must be a list"),
    ("public icmp", toml({"public": ["80", "8:icmp"]}), f"{S}.public[1]", "only tcp or udp is allowed here"),
    ("public port 0", toml({"public": ["0"]}), f"{S}.public[0]", "port must be 1-65535"),
    ("public port 65536", toml({"public": ["65536:udp"]}), f"{S}.public[0]", "port must be 1-65535"),
    ("public twice", toml({"public": ["80", "443", "80:tcp"]}), f"{S}.public", "lists a port twice"),
    ("max_sources small", toml({"max_sources": 15}), f"{S}.max_sources", "between 16 and 10000000"),
    ("batch zero", toml({"batch": 0}), f"{S}.batch", "between 1 and 1024"),
    ("batch big", toml({"batch": 1025}), f"{S}.batch", "between 1 and 1024"),
    ("max_sources big", toml({"max_sources": 10_000_001}), f"{S}.max_sources", "between 16 and 10000000"),
    ("max_sources bool", toml({"max_sources": True}), f"{S}.max_sources", "must be a whole number"),
    ("prefix_quota negative", toml({"prefix_quota": -1}), f"{S}.prefix_quota", "between 0 and"),
    ("failure_limit string", toml({"failure_limit": "10"}), f"{S}.failure_limit", "must be a whole number"),
    ("prefix_failure_limit negative", toml({"prefix_failure_limit": -5}), f"{S}.prefix_failure_limit",
     "between 0 and"),
    ("failure_lockout 0", toml({"failure_lockout": 0}), f"{S}.failure_lockout", "between 1 and 86400"),
    # [[door]]: structure and name
    ("door not a table", "door = [1]\n", "door[0]", "must be a table"),
    ("unknown door key", toml(doors=[door(open_fro=5)]), "door[0].open_fro", "unknown key"),
    ("unknown key in 2nd door", toml(doors=[door(), door(name="b", sequence=["1"], bogus=1)]),
     "door[1].bogus", "unknown key"),
    ("no name", toml(doors=[door(name=None)]), "door[0].name", "is required"),
    ("name not a string", toml(doors=[door(name=1)]), "door[0].name", "must be a string"),
    ("name empty", toml(doors=[door(name="")]), "door[0].name", "use 1-24 letters"),
    ("name with space", toml(doors=[door(name="my door")]), "door[0].name", "use 1-24 letters"),
    ("name too long", toml(doors=[door(name="x" * 25)]), "door[0].name", "use 1-24 letters"),
    ("name newline", toml(doors=[door(name="ssh\n")]), "door[0].name", "use 1-24 letters"),
    ("name dot", toml(doors=[door(name="a.b")]), "door[0].name", "use 1-24 letters"),
    ("no sequence", toml(doors=[door(sequence=None)]), f"{D}.sequence", "is required"),
    ("no opens", toml(doors=[door(opens=None)]), f"{D}.opens", "is required"),
    # sequence
    ("sequence string", toml(doors=[door(sequence="7000")]), f"{D}.sequence", "must be a list"),
    ("sequence empty", toml(doors=[door(sequence=[])]), f"{D}.sequence", "must not be empty"),
    ("sequence too long", toml(doors=[door(sequence=[str(1000 + i) for i in range(33)])]),
     f"{D}.sequence", "at most 32 entries"),
    ("step bool", toml(doors=[door(sequence=["7000", True])]), f"{D}.sequence[1]", "must be a string"),
    ("step float", toml(doors=[door(sequence=[7000.0])]), f"{D}.sequence[0]", "must be a string"),
    ("step bad proto", toml(doors=[door(sequence=["7000:sctp"])]), f"{D}.sequence[0]",
     "protocol must be tcp, udp or icmp"),
    ("step two colons", toml(doors=[door(sequence=["7000:udp:tcp"])]), f"{D}.sequence[0]",
     "protocol must be tcp, udp or icmp"),
    ("step not a number", toml(doors=[door(sequence=["ssh"])]), f"{D}.sequence[0]", "expected PORT[:PROTO]"),
    ("step negative", toml(doors=[door(sequence=[-1])]), f"{D}.sequence[0]", "expected PORT[:PROTO]"),
    ("step empty", toml(doors=[door(sequence=[""])]), f"{D}.sequence[0]", "expected PORT[:PROTO]"),
    ("step no port", toml(doors=[door(sequence=[":udp"])]), f"{D}.sequence[0]", "expected PORT[:PROTO]"),
    ("step port range", toml(doors=[door(sequence=["1000-2000"])]), f"{D}.sequence[0]",
     "expected PORT[:PROTO]"),
    ("step superscript digit", toml(doors=[door(sequence=["7000", "\u00b2"])]), f"{D}.sequence[1]",
     "expected PORT[:PROTO]"),
    ("step arabic digits", toml(doors=[door(sequence=["\u0667\u0660\u0660\u0660"])]), f"{D}.sequence[0]",
     "expected PORT[:PROTO]"),
    ("step port 0", toml(doors=[door(sequence=["7000", "0"])]), f"{D}.sequence[1]", "port must be 1-65535"),
    ("step port 0 udp", toml(doors=[door(sequence=["0:udp"])]), f"{D}.sequence[0]", "port must be 1-65535"),
    ("step port 65536", toml(doors=[door(sequence=["65536"])]), f"{D}.sequence[0]", "port must be 1-65535"),
    ("step int 65536", toml(doors=[door(sequence=[65536])]), f"{D}.sequence[0]", "port must be 1-65535"),
    ("icmp too big", toml(doors=[door(sequence=["65508:icmp"])]), f"{D}.sequence[0]",
     "icmp payload size must be 0-65507"),
    ("repeated step", toml(doors=[door(sequence=["7000:udp", "8000", "8000:tcp"])]), f"{D}.sequence[2]",
     "8000:tcp repeats the step before it"),
    ("repeated icmp step", toml(doors=[door(sequence=["64:icmp", "64:icmp"])]), f"{D}.sequence[1]",
     "repeats the step before it"),
    # opens
    ("opens string", toml(doors=[door(opens="22")]), f"{D}.opens", "must be a list"),
    ("opens empty", toml(doors=[door(opens=[])]), f"{D}.opens", "must not be empty"),
    ("opens icmp", toml(doors=[door(opens=["22", "0:icmp"])]), f"{D}.opens[1]", "only tcp or udp"),
    ("opens port 0", toml(doors=[door(opens=["0"])]), f"{D}.opens[0]", "port must be 1-65535"),
    ("opens twice", toml(doors=[door(opens=["22", "2222", "22"])]), f"{D}.opens", "lists a port twice"),
    # close_sequence
    ("close empty", toml(doors=[door(close_sequence=[])]), f"{D}.close_sequence", "must not be empty"),
    ("close repeated step", toml(doors=[door(close_sequence=["1", "2", "2"])]), f"{D}.close_sequence[2]",
     "repeats the step before it"),
    ("close bad step", toml(doors=[door(close_sequence=["1", "x:udp"])]), f"{D}.close_sequence[1]",
     "'x:udp': expected PORT[:PROTO]"),
    # timings
    ("sequence_timeout 0", toml(doors=[door(sequence_timeout=0)]), f"{D}.sequence_timeout",
     "more than 0 and at most 3600, got 0"),
    ("sequence_timeout negative", toml(doors=[door(sequence_timeout=-1.5)]), f"{D}.sequence_timeout",
     "more than 0"),
    ("sequence_timeout big", toml(doors=[door(sequence_timeout=3600.5)]), f"{D}.sequence_timeout",
     "at most 3600"),
    ("sequence_timeout bool", toml(doors=[door(sequence_timeout=True)]), f"{D}.sequence_timeout",
     "must be a number of seconds, got True"),
    ("sequence_timeout string", toml(doors=[door(sequence_timeout="5")]), f"{D}.sequence_timeout",
     "must be a number of seconds"),
    ("sequence_timeout nan", toml(top="", doors=[door()]).replace('opens = ["22"]',
     'opens = ["22"]\nsequence_timeout = nan'), f"{D}.sequence_timeout", "more than 0"),
    ("sequence_timeout inf", toml(doors=[door()]).replace('opens = ["22"]',
     'opens = ["22"]\nsequence_timeout = inf'), f"{D}.sequence_timeout", "at most 3600"),
    ("open_for 0", toml(doors=[door(open_for=0)]), f"{D}.open_for", "between 1 and 604800, got 0"),
    ("open_for big", toml(doors=[door(open_for=604801)]), f"{D}.open_for", "between 1 and 604800"),
    ("open_for float", toml(doors=[door(open_for=30.0)]), f"{D}.open_for", "must be a whole number"),
    ("open_for bool", toml(doors=[door(open_for=True)]), f"{D}.open_for", "must be a whole number"),
    ("command_timeout 0", toml(doors=[door(command_timeout=0)]), f"{D}.command_timeout", "more than 0"),
    ("command_timeout big", toml(doors=[door(command_timeout=3601)]), f"{D}.command_timeout", "at most 3600"),
    # tcp_flags
    ("tcp_flags not a string", toml(doors=[door(tcp_flags=2)]), f"{D}.tcp_flags", "must be a string"),
    ("tcp_flags list", toml(doors=[door(tcp_flags=["syn"])]), f"{D}.tcp_flags", "must be a string"),
    ("tcp_flags unknown", toml(doors=[door(tcp_flags="syn,ece")]), f"{D}.tcp_flags",
     "'ece': flags are fin, syn, rst, psh, ack, urg"),
    ("tcp_flags empty", toml(doors=[door(tcp_flags="")]), f"{D}.tcp_flags", "flags are"),
    ("tcp_flags trailing comma", toml(doors=[door(tcp_flags="syn,")]), f"{D}.tcp_flags", "flags are"),
    ("tcp_flags bare bang", toml(doors=[door(tcp_flags="syn,!")]), f"{D}.tcp_flags", "flags are"),
    ("tcp_flags double bang", toml(doors=[door(tcp_flags="!!ack")]), f"{D}.tcp_flags", "flags are"),
    ("tcp_flags plus", toml(doors=[door(tcp_flags="syn+ack")]), f"{D}.tcp_flags", "flags are"),
    ("tcp_flags both", toml(doors=[door(tcp_flags="syn,ack,!syn")]), f"{D}.tcp_flags",
     "both requires and forbids a flag"),
    # commands
    ("command empty string", toml(doors=[door(start_command="")]), f"{D}.start_command",
     "must name a program"),
    ("command blank", toml(doors=[door(stop_command="   ")]), f"{D}.stop_command", "must name a program"),
    ("command empty list", toml(doors=[door(start_command=[])]), f"{D}.start_command", "must name a program"),
    ("command empty program", toml(doors=[door(start_command=["", "x"])]), f"{D}.start_command",
     "must name a program"),
    ("command quoted empty", toml(doors=[door(stop_command="'' x")]), f"{D}.stop_command",
     "must name a program"),
    ("command unbalanced quote", toml(doors=[door(start_command="logger 'open")]), f"{D}.start_command",
     "cannot split into arguments"),
    ("command not a string", toml(doors=[door(start_command=["logger", 1])]), f"{D}.start_command[1]",
     "must be a string"),
    ("command number", toml(doors=[door(stop_command=1)]), f"{D}.stop_command", "must be a list"),
    # host
    ("host bad", toml(doors=[door(host="198.51.100.300")]), f"{D}.host", "not an IPv4 or IPv6 address"),
    ("host name", toml(doors=[door(host="server.example")]), f"{D}.host", "not an IPv4 or IPv6 address"),
    ("host network", toml(doors=[door(host="198.51.100.0/24")]), f"{D}.host", "not an IPv4 or IPv6"),
    ("host empty", toml(doors=[door(host="")]), f"{D}.host", "not an IPv4 or IPv6 address"),
    ("host number", toml(doors=[door(host=1)]), f"{D}.host", "must be a string"),
    # special doors (key files and one-time files: tests/unit/test_doors.py)
    ("spa and sequence", toml(doors=[door(spa=True)]), f"{D}.spa", "exactly one of sequence, spa"),
    ("spa without key file", toml(doors=[door(sequence=None, spa=True)]), f"{D}.key_file",
     "is required with spa = true"),
    ("spa key file relative", toml(doors=[door(sequence=None, spa=True, key_file="k")]),
     f"{D}.key_file", "must be an absolute path"),
    ("spa key file missing", toml(doors=[door(sequence=None, spa=True, key_file="/nonexistent/k")]),
     f"{D}.key_file", "/nonexistent/k: no such file"),
    ("spa_port on a plain door", toml(doors=[door(spa_port=62201)]), f"{D}.spa_port",
     "only for a door with spa = true"),
    ("spa not a bool", toml(doors=[door(sequence=None, spa=1)]), f"{D}.spa", "must be true or false"),
    ("close_sequence on spa door", toml(doors=[door(sequence=None, spa=True, key_file="/k",
                                                     close_sequence=["1"])]),
     f"{D}.close_sequence", "only for a plain sequence door"),
    ("tcp_flags on spa door", toml(doors=[door(sequence=None, spa=True, key_file="/k",
                                                tcp_flags="syn")]),
     f"{D}.tcp_flags", "only for a sequence or one-time door"),
    ("one-time file missing", toml(doors=[door(sequence=None, one_time_sequences="/nonexistent/o")]),
     f"{D}.one_time_sequences", "/nonexistent/o: no such file"),
    # across doors
    ("duplicate door name", toml(doors=[door(), door(sequence=["1"], opens=["2222"])]), "door[1].name",
     "'ssh' is used by another door"),
    ("same sequence", toml(doors=[door(), door(name="b", opens=["2222"])]), "door[1] (b).sequence",
     "same sequence as ssh.sequence"),
    ("sequence is other close", toml(doors=[door(close_sequence=["1", "2"]),
                                            door(name="b", sequence=["1", "2"], opens=["2222"])]),
     "door[1] (b).sequence", "same sequence as ssh.close_sequence"),
    ("close is other sequence", toml(doors=[door(), door(name="b", sequence=["1"], opens=["2222"],
                                                         close_sequence=["7000:udp", "8000", "9000:udp"])]),
     "door[1] (b).close_sequence", "same sequence as ssh.sequence"),
    ("close is own sequence", toml(doors=[door(close_sequence=["7000:udp", "8000", "9000:udp"])]),
     f"{D}.close_sequence", "same sequence as ssh.sequence"),
    ("knock port is own opens", toml(doors=[door(sequence=["7000", "22"])]), f"{D}.sequence[1]",
     "knock port 22:tcp is also protected by door 'ssh'"),
    ("knock port opened by a later door", toml(doors=[door(), door(name="web", sequence=["1"],
                                                                   opens=["8000"])]),
     f"{D}.sequence[1]", "knock port 8000:tcp is also protected by door 'web'"),
    ("knock port opened by an earlier door", toml(doors=[door(), door(name="b", sequence=["1", "22"],
                                                                      opens=["2222"])]),
     "door[1] (b).sequence[1]", "also protected by door 'ssh'"),
    ("close knock protected", toml(doors=[door(close_sequence=["1", "22"])]), f"{D}.close_sequence[1]",
     "also protected by door 'ssh'"),
    ("knock port public", toml({"public": ["80", "9000:udp"]}), f"{D}.sequence[2]",
     "knock port 9000:udp is also public"),
    ("close knock public", toml({"public": ["443"]}, [door(close_sequence=["443"])]),
     f"{D}.close_sequence[0]", "knock port 443:tcp is also public"),
    ("opens public", toml({"public": ["22"]}), f"{D}.opens", "22:tcp is also public"),
    ("host door opens public", toml({"public": ["3389"]}, [door(), door(
        name="rdp", sequence=["4001"], opens=["3389"], host="198.51.100.10")]),
     "door[1] (rdp).opens", "3389:tcp is also public"),
]


@pytest.mark.parametrize(("text", "key", "text_in_message"), [e[1:] for e in ERRORS],
                         ids=[e[0] for e in ERRORS])
def test_error(text: str, key: str, text_in_message: str) -> None:
    message = fails(text)
    assert message.startswith(f"{NAME}: {key}: "), message
    assert text_in_message in message, message


def test_error_ids_are_unique() -> None:
    ids = [e[0] for e in ERRORS]
    assert len(ids) == len(set(ids))


def test_default_name_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        loads("door = []\n")
    assert str(info.value).startswith("<config>: door: ")


def test_error_names_the_door_by_index_and_name() -> None:
    text = toml(doors=[door(), door(name="web", sequence=["1", "x"], opens=["8080"])])
    assert fails(text).startswith(f"{NAME}: door[1] (web).sequence[1]: 'x': ")
