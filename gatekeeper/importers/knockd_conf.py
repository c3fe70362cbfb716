"""knockd.conf as knockd 0.8 reads it, for ``gatekeeper import-knockd``.

The parser follows knockd 0.8's own (``parseconfig()`` in knockd.c): a line is a
``[section]`` header, ``KEY = value`` or the bare flag ``UseSyslog``; keys are
case-insensitive, the section name ``options`` is not; only a line that *starts* with
``#`` is a comment. knockd keeps a later ``#`` in the value, where the shell takes it as
a comment in a command and ``atoi()`` stops before it in a sequence; the importer reads
both the same way, with a warning. A directive outside a section, an unknown key or a
malformed value is an error naming the file and line.

A one-time sequences file is knockd's too: :func:`knockd_reads` says what knockd makes
of one of its lines (the converter names the lines gatekeeper reads otherwise).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from gatekeeper.errors import GatekeeperError
from gatekeeper.importers.output import Notice

DEFAULT_SEQ_TIMEOUT = 25  # knockd's SEQ_TIMEOUT
DEFAULT_CMD_TIMEOUT = 10  # knockd's CMD_TIMEOUT
SEQ_MAX = 32  # knockd's SEQ_MAX (and gatekeeper's limit too)
TCP_FLAGS = ("fin", "syn", "rst", "psh", "ack", "urg")

_OPTION_KEYS = frozenset({"LOGFILE", "PIDFILE", "INTERFACE"})
_DOOR_KEYS = frozenset({
    "TARGET", "SEQUENCE", "ONE_TIME_SEQUENCES", "SEQ_TIMEOUT", "START_COMMAND", "START_COMMAND_6",
    "CMD_TIMEOUT", "STOP_COMMAND", "STOP_COMMAND_6", "TCPFLAGS",
})
_ALIASES = {"TIMEOUT": "SEQ_TIMEOUT", "COMMAND": "START_COMMAND", "COMMAND_6": "START_COMMAND_6"}
_NUMBER = re.compile(r"\s*([+-]?\d+)")
_ATOI = re.compile(r"\s*([+-]?\d*)")  # what C's atoi() reads: the rest is ignored


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


def knockd_reads(line: str) -> tuple[Knock, ...] | None:
    """The sequence knockd 0.8 takes from a line of a one-time sequences file, or None
    when it skips the line (a comment, a blank line or one it cannot read).

    knockd splits the trimmed line at commas only and reads each port with ``atoi()``, so
    ``7000 8000`` is port 7000 alone and a word that is no number is port 0; the text
    after a ``:`` is the protocol, tcp or udp in any case; more than :data:`SEQ_MAX`
    ports, a port above 65535 or another protocol make it skip the line.
    """
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    items = text.split(",")
    if len(items) > SEQ_MAX:
        return None
    knocks: list[Knock] = []
    for item in items:
        port_text, colon, rest = item.partition(":")
        digits = _ATOI.match(port_text)
        number = int(digits.group(1)) if digits and digits.group(1).lstrip("+-") else 0
        if number > 65535:
            return None
        proto = rest.partition(":")[0].strip().lower() if colon else "tcp"
        if proto not in ("tcp", "udp"):
            return None
        knocks.append(Knock(number & 0xFFFF, proto))  # a negative number wraps, as in C
    return tuple(knocks)


def parse(text: str, name: str = "<knockd.conf>") -> KnockdConfig:
    """Parse knockd.conf text; raises :class:`KnockdError` naming ``name`` and the line."""
    return _Parser(name).parse(text)


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
