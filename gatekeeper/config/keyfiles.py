"""The files a config names: key files (only their owner may read them) and knockd's
one-time sequences files (the daemon must be able to mark a used line in them).

Each function takes ``fail(key, message)``, the loader's way of phrasing a
:class:`~gatekeeper.config.ConfigError` that names the config file and the key.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gatekeeper.config import ConfigError

Fail = Callable[[str, str], ConfigError]


def key_file(path: str, key: str, fail: Fail) -> str:
    """A key file's text. Only its owner may read it (mode & 0o077 == 0), and the owner
    is root or the user gatekeeper runs as (the systemd unit's ``gatekeeper``)."""
    if not path.startswith("/"):
        raise fail(key, f"{path!r}: must be an absolute path")
    try:
        with open(path, encoding="utf-8") as f:
            st = os.fstat(f.fileno())
            mode = st.st_mode
            if mode & 0o077:
                raise fail(key, f"{path}: must be readable only by root or the daemon's "
                           f"user (mode {mode & 0o777:04o}; chmod 600 {path})")
            if st.st_uid not in (0, os.geteuid()):
                raise fail(key, f"{path}: owned by uid {st.st_uid}; it must belong to "
                           "root or the user gatekeeper runs as")
            return f.read(1 << 16)
    except FileNotFoundError:
        raise fail(key, f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(key, f"{path}: cannot read: {exc}") from None


def spa_keys(path: str, key: str, fail: Fail, with_hmac: bool = True) -> Any:
    """The keys of an SPA door (a :class:`gatekeeper.spa.fwknop.SpaKeys`): fwknop's
    ``access.conf`` spellings, read lazily (plain configs need no crypto); no HMAC key
    unless ``with_hmac``."""
    text = key_file(path, key, fail)
    from gatekeeper.spa.fwknop import parse_key_file
    from gatekeeper.spa.keyfile import KeyFileError

    try:
        return parse_key_file(text, path, with_hmac=with_hmac)
    except KeyFileError as exc:
        raise fail(key, str(exc)) from None


def sequence_key(path: str, key: str, fail: Fail) -> bytes:
    """The AES key of an encrypted sequence: a ``KEY_BASE64: ...`` line."""
    from gatekeeper.spa.keyfile import KeyFileError
    from gatekeeper.spa.sequence import parse_key_file

    try:
        return parse_key_file(key_file(path, key, fail), path)
    except KeyFileError as exc:
        raise fail(key, str(exc)) from None


def one_time_text(path: str, key: str, fail: Fail) -> str:
    """The text of a one-time sequences file (an absolute path)."""
    if not path.startswith("/"):
        raise fail(key, f"{path!r}: must be an absolute path")
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise fail(key, f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(key, f"{path}: cannot read: {exc}") from None


def check_writable(path: str, key: str, fail: Fail) -> None:
    """A used line is marked in the file (a new copy beside it, then a rename) before its
    grant is given: a file the daemon cannot rewrite would grant nothing, so refuse it."""
    directory = os.path.dirname(path) or "/"
    for what, target in (("file", path), ("directory", directory)):
        if not os.access(target, os.W_OK):
            raise fail(key, f"{path}: the daemon cannot write its {what} {target} "
                       "(a used line is marked there before its grant); keep the "
                       "file where it may write, e.g. under state_dir")
