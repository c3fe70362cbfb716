"""What the importers (``import-knockd``, ``import-fwknop``) share: the warnings they
print, one line each naming the file and line, and the TOML text they write."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import gatekeeper.config.load as config_mod
from gatekeeper.config import ConfigError

CHECK_NAME = "<import>"  # the name a candidate config is checked under


@dataclass(frozen=True, slots=True)
class Notice:
    """A warning: what did not carry over, where in the imported file."""

    line: int | None
    section: str | None
    message: str

    def render(self, name: str) -> str:
        where = f"{name}:{self.line}:" if self.line is not None else f"{name}:"
        section = f" [{self.section}]" if self.section is not None else ""
        return f"{where} warning:{section} {self.message}"


def toml_str(text: str) -> str:
    """``text`` as a TOML basic string."""
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


def toml_list(items: Iterable[object]) -> str:
    """A TOML array of the items as strings."""
    return "[" + ", ".join(toml_str(str(i)) for i in items) + "]"


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def printable(text: str) -> str:
    """Control characters shown as ``\\xNN``: TOML comments may not hold them, and a
    warning stays one line. (Values are escaped by toml_str and hold none.)"""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


_DOOR_PREFIX = re.compile(r"^door\[\d+\] \([^)]*\)\.")


def config_reason(exc: ConfigError) -> str:
    """A ConfigError from checking a candidate, without the candidate's name and index."""
    return _DOOR_PREFIX.sub("", str(exc).removeprefix(f"{CHECK_NAME}: "))


def interface_problem(iface: str) -> str | None:
    """Why gatekeeper cannot guard the interface an imported file names, or None."""
    check = (f"[gatekeeper]\ninterfaces = [{toml_str(iface)}]\n"
             "[[door]]\nname = \"x\"\nsequence = [\"1:udp\"]\nopens = [\"2:tcp\"]\n")
    try:
        config_mod.loads(check, CHECK_NAME)
    except ConfigError as exc:
        return config_reason(exc)
    return None
