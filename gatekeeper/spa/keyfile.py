"""Key files, and the one parser for them (the SPA door, the encrypted-sequence door and
both clients read keys through :func:`read_keys`).

Every generator writes what ``fwknop --key-gen`` prints, one ``NAME: base64`` line a key::

    KEY_BASE64: <base64>
    HMAC_KEY_BASE64: <base64>

(an encrypted-sequence key file holds the first line only). Read are also ``NAME=value``
and ``NAME = value`` (what gatekeeper documented before) and fwknop's ``access.conf``
spelling ``NAME    value``; blank lines, ``#`` comments, and the ``[*] Creating initial
rc file: ...`` line a first run of ``fwknop --key-gen`` prints before the keys (it is
not a key: skipped without a word). The ``=`` padding of a value is optional, as fwknop
strips it. fwknop's passphrase lines ``KEY passphrase`` and ``HMAC_KEY passphrase`` (as in
``access.conf``; also with ``:`` or ``=``) give the key as typed: the rest of the line,
surrounding blanks removed, where the caller allows them. Any other line is one
:class:`KeyFileError` naming the file and line (never the key) and the command that writes a good file.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Collection, Mapping

from gatekeeper.errors import GatekeeperError

KEY = "KEY_BASE64"
HMAC_KEY = "HMAC_KEY_BASE64"
PASSPHRASE = "KEY"  # access.conf's KEY: the Rijndael passphrase as typed
HMAC_PASSPHRASE = "HMAC_KEY"

_LINE = re.compile(r"([A-Z][A-Z0-9_]*)(?:\s*[:=]\s*|\s+)(\S.*)\Z")
_RC_NOTICE = "[*] Creating initial rc file: "  # fwknop's first run, on stdout with the keys
_B64_CHARS = re.compile(rb"[A-Za-z0-9+/]*={0,2}\Z")


class KeyFileError(GatekeeperError):
    """A malformed key file; the message names the file and line, never the key."""


def b64decode(text: bytes) -> bytes:
    """Strict base64, the padding optional (fwknop strips it); ValueError otherwise."""
    if not _B64_CHARS.match(text):
        raise ValueError("not base64")
    text = text.rstrip(b"=")
    if len(text) % 4 == 1:
        raise ValueError("not base64")
    return base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)


def _sizes(sizes: Collection[int]) -> str:
    ordered = sorted(sizes)
    if ordered == list(range(ordered[0], ordered[-1] + 1)) and len(ordered) > 2:
        return f"{ordered[0]}-{ordered[-1]}"
    return ", ".join(map(str, ordered[:-1])) + f" or {ordered[-1]}"


def _value(field: str, value: str, where: str,
           phrases: Mapping[str, tuple[str, Collection[int]]]) -> tuple[str, bytes]:
    """The key a line gives: (the field it fills, its bytes)."""
    if field in phrases:
        return phrases[field][0], value.encode("utf-8")
    if " " in value or "\t" in value:
        raise KeyFileError(f"{where}: {field} is not valid base64")
    try:
        return field, b64decode(value.encode("ascii"))
    except (ValueError, UnicodeError):
        raise KeyFileError(f"{where}: {field} is not valid base64") from None


def read_keys(text: str, name: str, fields: Mapping[str, Collection[int]],
              make: str,
              phrases: Mapping[str, tuple[str, Collection[int]]] | None = None,
              ) -> dict[str, bytes]:
    """Every key of ``fields`` (name -> the sizes in bytes it may have), each given once,
    as base64 or as a passphrase line of ``phrases`` (its name -> the field it fills and
    the sizes its text may have).

    ``name`` is the file for messages, ``make`` the command that writes a good one.
    """
    phrases = phrases or {}
    names = [*fields, *phrases]
    expected = " or ".join(f"'{field}: ...'" for field in names)
    found: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith(_RC_NOTICE):
            continue
        match = _LINE.match(stripped)
        if match is None or match.group(1) not in names:
            raise KeyFileError(f"{name}:{number}: expected {expected} (as printed by {make})")
        given, value = match.group(1), match.group(2).rstrip()
        field, key = _value(given, value, f"{name}:{number}", phrases)
        if field in found:
            raise KeyFileError(f"{name}:{number}: {field} given twice")
        if given in phrases:
            sizes = phrases[given][1]
            if len(key) not in sizes:
                raise KeyFileError(f"{name}:{number}: {given} is {len(key)} bytes, fwknop "
                                   f"takes {_sizes(sizes)}")
        elif len(key) not in fields[field]:
            raise KeyFileError(f"{name}:{number}: {field} decodes to {len(key)} bytes, must be "
                               f"{_sizes(fields[field])} (make new keys with {make})")
        found[field] = key
    for field in fields:
        if field not in found:
            raise KeyFileError(f"{name}: no {field} line (as printed by {make})")
    return found


def format_keys(keys: Mapping[str, bytes]) -> str:
    """The documented format: ``NAME: base64`` a line, in the order given."""
    return "".join(f"{field}: {base64.b64encode(key).decode()}\n" for field, key in keys.items())
