"""``gatekeeper import-knockd``: convert a knockd.conf into gatekeeper's TOML.

The parser follows knockd 0.8's own (``parseconfig()`` in knockd.c): a line is a
``[section]`` header, ``KEY = value`` or the bare flag ``UseSyslog``; keys are
case-insensitive, the section name ``options`` is not; only a line that *starts* with
``#`` is a comment. knockd keeps a later ``#`` in the value, where the shell takes it as
a comment in a command and ``atoi()`` stops before it in a sequence; the importer reads
both the same way, with a warning. A directive outside a section, an unknown key or a
malformed value is an error naming the file and line.

The converter makes one ``[[door]]`` a section:

* ``sequence`` / ``seq_timeout`` (default 25 s, knockd's) / ``tcpflags`` carry over;
* ``iptables -A|-I INPUT -s %IP% [-p tcp|udp] --dport N -j ACCEPT`` in the start command
  becomes ``opens``: gatekeeper grants by itself, and the matching ``-D`` in the stop
  command is dropped; a FORWARD rule with ``-d HOST`` becomes the door's ``host``;
* ``open_for`` is ``cmd_timeout`` (default 10 s, knockd's) when a stop command closes
  the door, otherwise :data:`DEFAULT_OPEN_FOR`;
* a section whose command deletes exactly the rules another section adds becomes that
  door's ``close_sequence``;
* any other command stays a ``start_command``/``stop_command`` argv list, wrapped in
  ``/bin/sh -c`` when it needs a shell (knockd ran everything through one).

What does not carry over is reported as warnings, one line each naming the knockd file,
line and section. A door that would not load (nothing to open, a sequence gatekeeper
refuses) is written commented out, with a warning, so the output always loads; when no
door is left at all, the command fails instead.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from gatekeeper import config as config_mod
from gatekeeper.errors import GatekeeperError
from gatekeeper.importers.firewall import (
    NotAGrant,
    Port,
    Rule,
    Script,
    needs_shell,
    parse_iptables,
    shell_comment,
    split_script,
    split_words,
)

DEFAULT_SEQ_TIMEOUT = 25  # knockd's SEQ_TIMEOUT
DEFAULT_CMD_TIMEOUT = 10  # knockd's CMD_TIMEOUT
DEFAULT_INTERFACE = "eth0"  # where knockd listens without Interface or -i
DEFAULT_OPEN_FOR = 30  # when knockd never closed the port itself: gatekeeper's own default
SEQ_MAX = 32  # knockd's SEQ_MAX (and gatekeeper's limit too)
TCP_FLAGS = ("fin", "syn", "rst", "psh", "ack", "urg")

_OPTION_KEYS = frozenset({"LOGFILE", "PIDFILE", "INTERFACE"})
_DOOR_KEYS = frozenset({
    "TARGET", "SEQUENCE", "ONE_TIME_SEQUENCES", "SEQ_TIMEOUT", "START_COMMAND", "START_COMMAND_6",
    "CMD_TIMEOUT", "STOP_COMMAND", "STOP_COMMAND_6", "TCPFLAGS",
})
_ALIASES = {"TIMEOUT": "SEQ_TIMEOUT", "COMMAND": "START_COMMAND", "COMMAND_6": "START_COMMAND_6"}
_NUMBER = re.compile(r"\s*([+-]?\d+)")
_CHECK_NAME = "<import>"


class KnockdError(GatekeeperError):
    """A knockd config that cannot be read or parsed: one line naming file and line."""


# --- the knockd config ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Knock:
    port: int
    proto: str  # "tcp" or "udp"

    def __str__(self) -> str:
        return f"{self.port}:{self.proto}"


@dataclass(frozen=True, slots=True)
class Value:
    """A directive's value (trimmed) and the line it is on."""

    text: str
    line: int


@dataclass(frozen=True, slots=True)
class Notice:
    """A warning: what did not carry over, where in the knockd file."""

    line: int | None
    section: str | None
    message: str

    def render(self, name: str) -> str:
        where = f"{name}:{self.line}:" if self.line is not None else f"{name}:"
        section = f" [{self.section}]" if self.section is not None else ""
        return f"{where} warning:{section} {self.message}"


@dataclass
class Section:
    """One ``[name]`` knock/event section, keys upper-cased and aliases resolved."""

    name: str
    line: int
    values: dict[str, Value] = field(default_factory=dict)
    sequence: tuple[Knock, ...] = ()
    seq_timeout: int | None = None
    cmd_timeout: int | None = None
    flags: dict[str, bool] = field(default_factory=dict)  # flag -> must be set / must not

    @property
    def tcp_flags(self) -> str | None:
        """gatekeeper's (and knockd's) syntax, e.g. ``syn,!ack``; None when not given."""
        if not self.flags:
            return None
        return ",".join(("" if self.flags[f] else "!") + f for f in TCP_FLAGS if f in self.flags)


@dataclass
class Options:
    line: int | None = None  # the first [options] header
    values: dict[str, Value] = field(default_factory=dict)
    usesyslog: int | None = None  # line of the bare UseSyslog


@dataclass
class KnockdConfig:
    name: str
    options: Options
    sections: list[Section]
    notices: list[Notice]


def parse_sequence(text: str) -> tuple[Knock, ...]:
    """knockd's ``PORT[:tcp|udp],...``; raises ValueError with a message."""
    knocks: list[Knock] = []
    for item in text.split(","):
        port_text, colon, proto_text = item.partition(":")
        port_text, proto = port_text.strip(), proto_text.strip().lower() if colon else "tcp"
        if not item.strip():
            raise ValueError(f"empty entry in sequence {text!r}")
        if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"{item.strip()!r}: port must be a number 1-65535")
        if proto not in ("tcp", "udp"):
            raise ValueError(f"{item.strip()!r}: protocol must be tcp or udp")
        knocks.append(Knock(int(port_text), proto))
    if len(knocks) > SEQ_MAX:
        raise ValueError(f"more than {SEQ_MAX} ports in a knock sequence")
    return tuple(knocks)


class _Parser:
    def __init__(self, name: str) -> None:
        self.name = name
        self.options = Options()
        self.sections: list[Section] = []
        self.notices: list[Notice] = []

    def fail(self, line: int, message: str) -> KnockdError:
        return KnockdError(f"{self.name}:{line}: {message}")

    def parse(self, text: str) -> KnockdConfig:
        current: Section | Options | None = None
        for lineno, raw in enumerate(text.split("\n"), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("[") and line.endswith("]") and len(line) > 1:
                current = self._header(line[1:-1], lineno)
                continue
            key_text, eq, value = line.partition("=")
            key = key_text.strip().upper()
            if current is None:
                raise self.fail(lineno, f"{key_text.strip()!r} comes before any [section]; "
                                "knockd wants every directive in [options] or a [name] section")
            if not eq:
                if key != "USESYSLOG":
                    raise self.fail(lineno, f"{line!r}: expected KEY = VALUE (only UseSyslog "
                                    "stands alone)")
                self.options.usesyslog = lineno
                continue
            if isinstance(current, Options):
                self._option(key, Value(value.strip(), lineno))
            else:
                self._directive(current, _ALIASES.get(key, key), key, Value(value.strip(), lineno))
        for section in self.sections:
            if not section.sequence and "ONE_TIME_SEQUENCES" not in section.values:
                raise self.fail(section.line, f"[{section.name}] has no sequence (knockd refuses "
                                "an empty knock sequence)")
        return KnockdConfig(self.name, self.options, self.sections, self.notices)

    def _header(self, name: str, lineno: int) -> Section | Options:
        if not name:
            raise self.fail(lineno, "bad section name '[]'")
        if name == "options":
            if self.options.line is None:
                self.options.line = lineno
            return self.options
        section = Section(name, lineno)
        self.sections.append(section)
        return section

    def _option(self, key: str, value: Value) -> None:
        if key == "USESYSLOG":
            raise self.fail(value.line, "UseSyslog takes no value: write it alone on its line")
        if key not in _OPTION_KEYS:
            hint = " (it belongs in a [name] section)" if _ALIASES.get(key, key) in _DOOR_KEYS else ""
            raise self.fail(value.line, f"[options] has no {key}{hint}; it takes LogFile, PidFile, "
                            "Interface and UseSyslog")
        self._remember(self.options.values, key, value, "options")

    def _remember(self, values: dict[str, Value], key: str, value: Value, section: str) -> None:
        old = values.get(key)
        if old is not None and key != "TCPFLAGS":  # knockd adds up TCPFlags lines
            self.notices.append(Notice(value.line, section, f"{key.lower()} is set again (line "
                                       f"{old.line}); the last one counts, as in knockd"))
        values[key] = value

    def _directive(self, section: Section, key: str, written: str, value: Value) -> None:
        where = f"[{section.name}] {written.lower()}"
        if key == "USESYSLOG":
            raise self.fail(value.line, "UseSyslog takes no value: write it alone on its line")
        if key not in _DOOR_KEYS:
            hint = " (it belongs in [options])" if key in _OPTION_KEYS else ""
            if section.name.lower() == "options":
                hint = " ([options] must be written in lower case, as knockd reads it)"
            raise self.fail(value.line, f"unknown directive {written!r} in [{section.name}]{hint}")
        self._remember(section.values, key, value, section.name)
        if key == "SEQUENCE":
            text = value.text
            comment = re.search(r"\s#", text)
            if comment:  # knockd reads the number before it and ignores the rest
                text = text[: comment.start()]
                self.notices.append(Notice(value.line, section.name, f"{written.lower()}: "
                                           f"{value.text[comment.start():].strip()!r} taken as a comment"))
            try:
                section.sequence = parse_sequence(text)
            except ValueError as exc:
                raise self.fail(value.line, f"{where}: {exc}") from None
        elif key in ("SEQ_TIMEOUT", "CMD_TIMEOUT"):
            match = _NUMBER.match(value.text)
            if not match or int(match.group(1)) < 0:
                raise self.fail(value.line, f"{where} = {value.text!r}: expected a number of seconds")
            seconds = int(match.group(1))
            if match.end() != len(value.text):
                self.notices.append(Notice(value.line, section.name, f"{written.lower()} = "
                                           f"{value.text!r} read as {seconds}, as knockd reads it"))
            if key == "SEQ_TIMEOUT":
                section.seq_timeout = seconds
            else:
                section.cmd_timeout = seconds
        elif key == "TCPFLAGS":
            for raw in value.text.split(","):
                word = raw.strip().lower()
                flag = word.removeprefix("!")
                if flag not in TCP_FLAGS:
                    raise self.fail(value.line, f"{where}: unknown flag {raw.strip()!r} (flags are "
                                    f"{', '.join(TCP_FLAGS)}, '!' to exclude)")
                section.flags[flag] = not word.startswith("!")  # the last mention decides
        elif key == "ONE_TIME_SEQUENCES" and not value.text:
            raise self.fail(value.line, f"{where}: expected a file name")


def parse(text: str, name: str = "<knockd.conf>") -> KnockdConfig:
    """Parse knockd.conf text; raises :class:`KnockdError` naming ``name`` and the line."""
    return _Parser(name).parse(text)


# --- converting -------------------------------------------------------------------------


@dataclass
class _Command:
    """One knockd command: its parts, the iptables rules recognised among them and the
    parts taken out because the door's grant does their work."""

    key: str  # knockd's directive, lower case
    value: Value | None
    script: Script | None = None
    rules: dict[int, Rule] = field(default_factory=dict)
    taken: set[int] = field(default_factory=set)

    def ports(self, delete: bool) -> list[Port]:
        return _unique(p for r in self.rules.values() if r.delete == delete for p in r.ports)

    def rest(self) -> str:
        return self.script.without(self.taken) if self.script else ""

    @property
    def line(self) -> int | None:
        return self.value.line if self.value else None


def _distinct(*commands: _Command) -> list[_Command]:
    """Each command once (an IPv6 command that falls back to the IPv4 one *is* it)."""
    out: list[_Command] = []
    for cmd in commands:
        if all(cmd is not seen for seen in out):
            out.append(cmd)
    return out


def _unique(ports: Iterable[Port]) -> list[Port]:
    return list(dict.fromkeys(ports))


def _ports_text(ports: Iterable[Port]) -> str:
    return ", ".join(str(p) for p in ports) or "nothing"


@dataclass
class _Section:
    """A section with its commands read; the IPv6 ones fall back to IPv4's, as in knockd."""

    sec: Section
    start: _Command
    start6: _Command
    stop: _Command
    stop6: _Command

    @property
    def has_stop(self) -> bool:
        return any(c.value is not None and c.value.text for c in (self.stop, self.stop6))

    @property
    def one_time(self) -> bool:
        return "ONE_TIME_SEQUENCES" in self.sec.values

    def adds(self) -> list[Port]:
        return _unique([*self.start.ports(False), *self.start6.ports(False)])

    def deletes(self) -> list[Port]:
        return _unique([*self.start.ports(True), *self.start6.ports(True)])


@dataclass
class _Door:
    sec: Section
    name: str
    origin: str
    keys: list[tuple[str, str, str]] = field(default_factory=list)  # key, TOML value, comment
    extra: list[str] = field(default_factory=list)  # comment lines after the keys
    problem: str | None = None  # why the door is written commented out

    def add(self, key: str, value: str, comment: str = "") -> None:
        self.keys.append((key, value, comment))

    def lines(self) -> list[str]:
        out = ["[[door]]", f"# {self.origin}"]
        out += [f"{k} = {v}" + (f"  # {c}" if c else "") for k, v, c in self.keys]
        out += self.extra
        if self.problem is None:
            return out
        return [f"# NOT CONVERTED: {self.problem}"] + [f"# {ln}" for ln in out]


def _toml_str(text: str) -> str:
    escapes = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    out = []
    for ch in text:
        if ch in escapes:
            out.append(escapes[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_list(items: Iterable[object]) -> str:
    return "[" + ", ".join(_toml_str(str(i)) for i in items) + "]"


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _printable(text: str) -> str:
    """Control characters shown as ``\\xNN``: TOML comments may not hold them, and a
    warning stays one line. (Values are escaped by _toml_str and hold none.)"""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


_DOOR_PREFIX = re.compile(r"^door\[\d+\] \([^)]*\)\.")


def _config_reason(exc: config_mod.ConfigError) -> str:
    """A ConfigError from checking a candidate, without the candidate's name and index."""
    return _DOOR_PREFIX.sub("", str(exc).removeprefix(f"{_CHECK_NAME}: "))


class _Converter:
    def __init__(self, cfg: KnockdConfig, base_dir: Path | None) -> None:
        self.cfg = cfg
        self.base_dir = base_dir
        self.notices: list[Notice] = list(cfg.notices)

    def warn(self, line: int | None, section: str | None, message: str) -> None:
        self.notices.append(Notice(line, section, message))

    # reading commands

    def command(self, sec: Section, key: str) -> _Command:
        value = sec.values.get(key)
        cmd = _Command(key.lower(), value)
        if value is None or not value.text:
            return cmd
        code = value.text
        comment = shell_comment(code)
        if comment is not None:
            code = code[:comment].rstrip()
            self.warn(value.line, sec.name, f"{cmd.key}: {value.text[comment:]!r} is a comment to the "
                      "shell knockd ran the command with; left out")
        cmd.script = split_script(code)
        for i, part in enumerate(cmd.script.parts):
            if needs_shell(part):
                continue
            rule = parse_iptables(split_words(part))
            if isinstance(rule, Rule):
                cmd.rules[i] = rule
            elif isinstance(rule, NotAGrant):
                message = f"{cmd.key}: {part!r} is not made a grant: {rule.reason}; kept as a command"
                if rule.appended:
                    message += " (appended to INPUT below gatekeeper's jump, it never sees a new packet)"
                self.warn(value.line, sec.name, message)
        return cmd

    def read(self, sec: Section) -> _Section:
        start, stop = self.command(sec, "START_COMMAND"), self.command(sec, "STOP_COMMAND")
        start6 = self.command(sec, "START_COMMAND_6") if "START_COMMAND_6" in sec.values else start
        stop6 = self.command(sec, "STOP_COMMAND_6") if "STOP_COMMAND_6" in sec.values else stop
        return _Section(sec, start, start6, stop, stop6)

    @staticmethod
    def pair(plans: list[_Section]) -> dict[int, _Section]:
        """Opening section's index -> the section whose command deletes exactly the rules
        it adds (knockd's open/close pair), for sections with no stop command of their own."""
        closers: dict[int, _Section] = {}
        used: set[int] = set()
        for i, opener in enumerate(plans):
            adds = set(opener.adds())
            if not adds or opener.has_stop or opener.one_time:
                continue
            for j, closer in enumerate(plans):
                if (j == i or j in used or closer.adds() or closer.has_stop or closer.one_time
                        or closer.sec.sequence == opener.sec.sequence):
                    continue
                if set(closer.deletes()) == adds:
                    closers[i] = closer
                    used.add(j)
                    break
        return closers

    # one door

    def door(self, plan: _Section, closer: _Section | None, names: set[str]) -> _Door:
        sec = plan.sec
        name = re.sub(r"[^A-Za-z0-9_-]+", "_", sec.name).strip("_")[:24] or "door"
        base, n = name, 2
        while name in names:
            suffix = f"-{n}"
            name, n = base[: 24 - len(suffix)] + suffix, n + 1
        names.add(name)
        if name != sec.name:
            self.warn(sec.line, sec.name, f"door name {name!r}: gatekeeper's are 1-24 letters, digits, "
                      "'-' or '_', and unique")
        origin = f"[{sec.name}], line {sec.line}"
        if closer is not None:
            origin += f"; close_sequence from [{closer.sec.name}], line {closer.sec.line}"
        door = _Door(sec, name, origin)
        door.add("name", _toml_str(name))
        self.sequence(door)
        self.timeout(door)
        self.flags(door, closer)
        opens = self.opens(door, plan)
        self.open_for(door, plan, closer, opens)
        if closer is not None:
            door.add("close_sequence", _toml_list(closer.sec.sequence))
        self.commands(door, plan, closer, opens)
        return door

    def sequence(self, door: _Door) -> None:
        sec = door.sec
        one_time = sec.values.get("ONE_TIME_SEQUENCES")
        if one_time is None:
            door.add("sequence", _toml_list(sec.sequence))
            return
        door.extra.append(f"# one_time_sequences = {_toml_str(one_time.text)}  # not supported by "
                          "gatekeeper yet")
        path = Path(one_time.text)
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
            self.warn(one_time.line, sec.name, f"one_time_sequences {one_time.text} is read next to "
                      f"{self.cfg.name}; knockd read it from its working directory")
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
        except OSError as exc:
            lines, why = [], f"cannot read {one_time.text}: {exc.strerror or exc}"
        else:
            why = f"{one_time.text} has no unused sequence left"
        found: list[tuple[int, tuple[Knock, ...]]] = []
        for number, line in enumerate(lines, start=1):
            text = line.strip()
            if text and not text.startswith("#"):
                try:
                    found.append((number, parse_sequence(text)))
                except ValueError:
                    continue  # knockd skips a line it cannot read, too
        if found:
            number, knocks = found[0]
            door.add("sequence", _toml_list(knocks), f"line {number} of {one_time.text}")
            self.warn(one_time.line, sec.name, f"one_time_sequences cannot be carried over yet: the "
                      f"door keeps line {number} of {one_time.text}, its next unused sequence, for good "
                      f"(anyone who sees it can replay it); the file's other {len(found) - 1} sequence(s) "
                      "are not used")
        elif sec.sequence:
            door.add("sequence", _toml_list(sec.sequence))
            self.warn(one_time.line, sec.name, f"one_time_sequences cannot be carried over yet and "
                      f"{why}: the door keeps its fixed sequence")
        else:
            door.add("sequence", "[]")
            door.problem = f"one_time_sequences cannot be carried over yet, and {why}"
            self.warn(one_time.line, sec.name, f"{door.problem}: door left commented out")

    def timeout(self, door: _Door) -> None:
        sec = door.sec
        if sec.seq_timeout is None:
            door.add("sequence_timeout", str(DEFAULT_SEQ_TIMEOUT), "knockd's default")
            return
        seconds = min(max(sec.seq_timeout, 1), config_mod.MAX_SEQUENCE_TIMEOUT)
        if seconds != sec.seq_timeout:
            self.warn(sec.values["SEQ_TIMEOUT"].line, sec.name, f"seq_timeout {sec.seq_timeout} is "
                      f"outside gatekeeper's range; sequence_timeout = {seconds}")
        door.add("sequence_timeout", str(seconds))

    def flags(self, door: _Door, closer: _Section | None) -> None:
        sec = door.sec
        flags = sec.tcp_flags
        if flags is not None:
            door.add("tcp_flags", _toml_str(flags))
        elif any(k.proto == "tcp" for k in sec.sequence):
            self.warn(sec.line, sec.name, "no tcpflags: knockd counted any tcp packet as a knock, "
                      "gatekeeper counts only those with tcp_flags (\"syn\", what knock clients send)")
            door.add("tcp_flags", _toml_str("syn"), "knockd had none: any tcp packet")
        if closer is not None:
            other = closer.sec
            if other.tcp_flags != sec.tcp_flags or other.seq_timeout != sec.seq_timeout:
                self.warn(other.line, other.name, f"its tcpflags or seq_timeout differ from [{sec.name}]'s; "
                          f"door {door.name!r} uses [{sec.name}]'s for both sequences")

    def opens(self, door: _Door, plan: _Section) -> list[Port]:
        """Take the grants out of the start command(s) and write ``host``/``opens``."""
        sec = plan.sec
        opens: list[Port] = []
        for cmd in _distinct(plan.start, plan.start6):
            for i, rule in sorted(cmd.rules.items()):
                if rule.delete:
                    if plan.adds():  # else the door's problem says it
                        self.warn(cmd.line, sec.name, f"{cmd.key} deletes the rule for "
                                  f"{_ports_text(rule.ports)}; kept as a command")
                elif opens and rule.ports[0].host != opens[0].host:
                    self.warn(cmd.line, sec.name, f"a door opens ports on one host; the rule for "
                              f"{_ports_text(rule.ports)} on {rule.ports[0].host or 'the gateway'} is kept "
                              "as a command")
                else:
                    cmd.taken.add(i)
                    opens = _unique([*opens, *rule.ports])
                    for note in rule.notes:
                        self.warn(cmd.line, sec.name, note)
        host = opens[0].host if opens else None
        if host is not None:
            door.add("host", _toml_str(host), "the FORWARD rule's -d")
        target = sec.values.get("TARGET")
        if target is not None and target.text != host:
            self.warn(target.line, sec.name, f"target {target.text} not carried over: gatekeeper takes "
                      "knocks to the gateway's own addresses (and to a door's host)")
        four = [p for p in plan.start.ports(False) if p in opens]
        six = [p for p in plan.start6.ports(False) if p in opens]
        if opens and set(four) != set(six):
            self.warn(plan.start6.line or sec.line, sec.name, f"knockd opened {_ports_text(four)} for "
                      f"IPv4 knockers and {_ports_text(six)} for IPv6 ones; the door opens "
                      f"{_ports_text(opens)} for both")
        door.add("opens", _toml_list(opens))
        if not opens and door.problem is None:
            if plan.deletes() and not plan.adds():
                door.problem = "it only deletes rules, and no section adds exactly those with no " \
                    "stop_command of its own, so it cannot become a door's close_sequence"
            else:
                door.problem = "it opens no port gatekeeper can grant (no iptables ... -s %IP% " \
                    "--dport N -j ACCEPT command), and a door needs opens"
            self.warn(sec.line, sec.name, f"{door.problem}: door left commented out")
        return opens

    def open_for(self, door: _Door, plan: _Section, closer: _Section | None, opens: list[Port]) -> None:
        sec = plan.sec
        if plan.has_stop:
            seconds = DEFAULT_CMD_TIMEOUT if sec.cmd_timeout is None else sec.cmd_timeout
            clamped = min(max(seconds, 1), config_mod.MAX_OPEN_FOR)
            if clamped != seconds:
                self.warn(sec.values["CMD_TIMEOUT"].line, sec.name, f"cmd_timeout {seconds} is outside "
                          f"gatekeeper's range; open_for = {clamped}")
            comment = f"knockd's default cmd_timeout ({DEFAULT_CMD_TIMEOUT} s)" \
                if sec.cmd_timeout is None else "knockd's cmd_timeout"
            door.add("open_for", str(clamped), comment)
            return
        comment = f"until [{closer.sec.name}] in knockd" if closer else "knockd never closed it by itself"
        door.add("open_for", str(DEFAULT_OPEN_FOR), comment)
        if opens:
            until = f"until [{closer.sec.name}] was knocked" if closer else \
                "(no stop_command, no section deletes the rule)"
            self.warn(sec.line, sec.name, f"knockd kept {_ports_text(opens)} open {until}; gatekeeper "
                      f"closes it after open_for = {DEFAULT_OPEN_FOR} s (established connections carry "
                      "on)" + (" or on the close_sequence" if closer else ""))

    def commands(self, door: _Door, plan: _Section, closer: _Section | None, opens: list[Port]) -> None:
        """start_command/stop_command: what is left once the grants are taken out."""
        sec = plan.sec
        start = self.kept(door, plan.start, plan.start6, "start_command", sec)
        if start:
            door.add("start_command", _toml_list(start))
        deleted: set[Port] = set()
        for cmd in _distinct(plan.stop, plan.stop6):
            for i, rule in sorted(cmd.rules.items()):
                if rule.delete and set(rule.ports) <= set(opens):
                    cmd.taken.add(i)
                    deleted.update(rule.ports)
                else:
                    what = "deletes a rule the start command does not add" if rule.delete else "adds a rule"
                    self.warn(cmd.line, sec.name, f"{cmd.key} {what} ({_ports_text(rule.ports)}); kept as "
                              "a command")
        left = [p for p in opens if p not in deleted]
        if plan.has_stop and left:
            self.warn(plan.stop.line or plan.stop6.line, sec.name, f"the stop command does not delete "
                      f"the rule for {_ports_text(left)}: knockd left it open, gatekeeper closes it after "
                      "open_for")
        if closer is None:
            stop = self.kept(door, plan.stop, plan.stop6, "stop_command", sec)
        else:
            for cmd in _distinct(closer.start, closer.start6):
                cmd.taken.update(i for i, r in cmd.rules.items() if r.delete)
            stop = self.kept(door, closer.start, closer.start6, "stop_command", closer.sec)
            if stop:
                self.warn(closer.start.line or closer.start6.line, closer.sec.name, "the rest of its command "
                          f"becomes door {door.name!r}'s stop_command: it runs when the grant ends, by the "
                          "close_sequence or after open_for")
        if stop:
            door.add("stop_command", _toml_list(stop))

    def kept(self, door: _Door, four: _Command, six: _Command, key: str, sec: Section) -> list[str]:
        """The argv for the rest of a command; gatekeeper runs one command for IPv4 and IPv6
        knockers, so an IPv6 variant that differs is written commented out, with a warning."""
        rest = four.rest()
        argv: list[str] = []
        if rest and four.value is not None:
            reason = needs_shell(rest)
            if reason is None:
                argv = split_words(rest)
            else:
                argv = ["/bin/sh", "-c", rest]
                self.warn(four.value.line, sec.name, f"{key} needs a shell ({reason}): kept as /bin/sh -c, "
                          "as knockd ran it (gatekeeper substitutes %IP% in it, too)")
        if six is not four and six.rest() != rest and six.value is not None:
            self.warn(six.value.line, sec.name, f"{six.key}: gatekeeper runs one {key} for IPv4 and IPv6 "
                      f"knockers; this IPv6 one ({six.rest() or 'nothing'!r}) is not carried over")
            door.extra.append(f"# {six.key} = {_toml_str(six.rest())}  # IPv6 only, not carried over")
        return argv

    # the whole file

    def settings(self) -> list[str]:
        opts = self.cfg.options
        value = opts.values.get("INTERFACE")
        line = value.line if value else opts.line
        if value is None:
            iface, comment = DEFAULT_INTERFACE, "knockd's default interface"
            self.warn(line, "options", f"no Interface: knockd listens on {DEFAULT_INTERFACE} unless started "
                      "with -i (see KNOCKD_OPTS in /etc/default/knockd); interfaces = "
                      f"[\"{DEFAULT_INTERFACE}\"]: check it")
        else:
            iface, alias, _ = value.text.partition(":")
            comment = "knockd's Interface"
            if alias:
                self.warn(line, "options", f"interface {value.text} is an alias; gatekeeper guards the "
                          f"device, {iface}")
        out = ["[gatekeeper]"]
        check = (f"[gatekeeper]\ninterfaces = [{_toml_str(iface)}]\n"
                 "[[door]]\nname = \"x\"\nsequence = [\"1:udp\"]\nopens = [\"2:tcp\"]\n")
        try:
            config_mod.loads(check, _CHECK_NAME)
        except config_mod.ConfigError as exc:
            reason = _config_reason(exc)
            self.warn(line, "options", f"interface {iface!r} cannot be guarded ({reason}); interfaces "
                      "left out, which guards every interface but loopback: set it")
            out.append(f"# interfaces = [{_toml_str(iface)}]  # {comment}: {reason}")
            guarded = "every interface but loopback"
        else:
            out.append(f"interfaces = [{_toml_str(iface)}]  # {comment}")
            guarded = iface
        self.warn(line, "options", f"gatekeeper drops every new connection on {guarded} that no door "
                  "grants (knockd only added rules): list what must stay reachable in [gatekeeper] public")
        out.append("# public = [\"80:tcp\"]  # reachable without knocking; everything else on a guarded "
                   "interface is dropped")
        return out

    def header(self) -> list[str]:
        opts = self.cfg.options
        out = [f"# gatekeeper config converted from knockd's {self.cfg.name} by `gatekeeper import-knockd`.",
               "# Read the warnings printed with it before use."]
        spelled = {"LOGFILE": "LogFile", "PIDFILE": "PidFile"}
        ignored = [f"{spelled[k]} = {v.text}" for k, v in sorted(opts.values.items()) if k in spelled]
        if opts.usesyslog is not None:
            ignored.insert(0, "UseSyslog")
        if ignored:
            out.append(f"# Not needed: knockd's {', '.join(ignored)} (gatekeeper logs to stderr, the journal "
                       "under systemd, and runs in the foreground).")
        return out

    def convert(self) -> Conversion:
        plans = [self.read(sec) for sec in self.cfg.sections]
        closers = self.pair(plans)
        closing = {id(c) for c in closers.values()}
        names: set[str] = set()
        doors = [self.door(plan, closers.get(i), names) for i, plan in enumerate(plans)
                 if id(plan) not in closing]
        head = [*self.header(), "", *self.settings()]
        accepted: list[str] = []  # the doors so far that load, to check the next one against
        body: list[str] = []
        for door in doors:
            if door.problem is None:
                try:
                    config_mod.loads(_printable("\n".join([*head, *accepted, *door.lines()])), _CHECK_NAME)
                except config_mod.ConfigError as exc:
                    door.problem = f"gatekeeper refuses it: {_config_reason(exc)}"
                    self.warn(door.sec.line, door.sec.name, f"{door.problem}: door left commented out")
                else:
                    accepted += door.lines()
            body += ["", *door.lines()]
        notices = sorted(self.notices, key=lambda n: n.line or 0)
        return Conversion(
            toml=_printable("\n".join([*head, *body])) + "\n",
            warnings=tuple(_printable(n.render(self.cfg.name)) for n in notices),
            doors=sum(d.problem is None for d in doors),
        )


@dataclass(frozen=True, slots=True)
class Conversion:
    toml: str
    warnings: tuple[str, ...]  # one line each: FILE:LINE: warning: [section] message
    doors: int  # doors converted (not commented out); 0 leaves nothing to run


def convert(cfg: KnockdConfig, base_dir: Path | None = None) -> Conversion:
    """gatekeeper TOML for a parsed knockd config; relative one_time_sequences paths are
    read from ``base_dir``."""
    return _Converter(cfg, base_dir).convert()


def read(path: str) -> KnockdConfig:
    """Read and parse the knockd config at ``path``; raises :class:`KnockdError`."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise KnockdError(f"{path}: no such file") from None
    except OSError as exc:
        raise KnockdError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return parse(data.decode("utf-8"), path)
    except UnicodeDecodeError as exc:  # knockd reads bytes; a Latin-1 comment is no error
        cfg = parse(data.decode("latin-1"), path)
        line = data[: exc.start].count(b"\n") + 1
        cfg.notices.insert(0, Notice(line, None, "not UTF-8: read as Latin-1"))
        return cfg


def convert_file(path: str) -> Conversion:
    """Read, parse and convert the knockd config at ``path``."""
    return convert(read(path), Path(path).parent)


def main(path: str, output: str | None = None) -> int:
    """``gatekeeper import-knockd``: TOML to stdout (or ``output``), warnings to stderr.
    Raises :class:`KnockdError` (exit status 2) on bad input or when no door converts."""
    result = convert_file(path)
    for line in result.warnings:
        print(line, file=sys.stderr)
    if not result.doors:
        raise KnockdError(f"{path}: no section could be converted into a gatekeeper door (see the "
                          "warnings above)")
    if output is None:
        sys.stdout.write(result.toml)
        return 0
    try:
        Path(output).write_text(result.toml, encoding="utf-8")
    except OSError as exc:
        raise KnockdError(f"{output}: cannot write: {exc.strerror or exc}") from None
    return 0
