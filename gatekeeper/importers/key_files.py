"""The key files ``import-fwknop`` writes beside the config it makes: mode 0600, never over
another file, and all of them removed again if any one (or the config) cannot be written."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gatekeeper.importers.fwknop_conf import FwknopError


@dataclass(frozen=True, slots=True)
class KeyFile:
    """A key file to write (mode 0600): its absolute path and text."""

    path: str
    text: str


def write_key_files(files: tuple[KeyFile, ...]) -> tuple[list[str], list[str]]:
    """Write each key file, mode 0600, never over another file (the same text is fine),
    making its folder (0750) if need be: the files and folders made. On any failure those
    are removed again."""
    written: list[str] = []
    made: list[str] = []
    try:
        for key in files:
            folder = os.path.dirname(key.path)
            if not os.path.isdir(folder):
                os.makedirs(folder, 0o750)
                made.append(folder)
            data = key.text.encode("utf-8", "surrogateescape")
            try:
                fd = os.open(key.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                if Path(key.path).read_bytes() == data:
                    continue
                raise FwknopError(f"{key.path}: exists with other keys; not overwritten (remove it, "
                                  "or give another --key-dir)") from None
            written.append(key.path)
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(data)
    except OSError as exc:
        remove(written, made)
        raise FwknopError(f"{exc.filename or 'key file'}: cannot write: {exc.strerror or exc}") from None
    except FwknopError:
        remove(written, made)
        raise
    return written, made


def remove(files: list[str], folders: list[str]) -> None:
    """Undo :func:`write_key_files`."""
    for path in files:
        os.unlink(path)
    for folder in reversed(folders):
        os.rmdir(folder)
