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
strips it. Any other line is one :class:`KeyFileError` naming the file and line (never
the key) and the command that writes a good file.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Collection, Mapping

from gatekeeper.errors import GatekeeperError

KEY = "KEY_BASE64"
HMAC_KEY = "HMAC_KEY_BASE64"

_LINE = re.compile(r"([A-Z][A-Z0-9_]*)(?:\s*[:=]\s*|\s+)(\S+)\Z")
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


def read_keys(text: str, name: str, fields: Mapping[str, Collection[int]],
              make: str) -> dict[str, bytes]:
    """Every key of ``fields`` (name -> the sizes in bytes it may have), each given once.

    ``name`` is the file for messages, ``make`` the command that writes a good one.
    """
    expected = " or ".join(f"'{field}: ...'" for field in fields)
    found: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith(_RC_NOTICE):
            continue
        match = _LINE.match(stripped)
        if match is None or match.group(1) not in fields:
            raise KeyFileError(f"{name}:{number}: expected {expected} (as printed by {make})")
        field, value = match.group(1), match.group(2)
        if field in found:
            raise KeyFileError(f"{name}:{number}: {field} given twice")
        try:
            key = b64decode(value.encode("ascii"))
        except (ValueError, UnicodeError):
            raise KeyFileError(f"{name}:{number}: {field} is not valid base64") from None
        if len(key) not in fields[field]:
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
