"""``gatekeeper import-fwknop`` as a command: read access.conf (and fwknopd.conf), convert
them (:mod:`gatekeeper.importers.fwknop`), write the key files and the TOML, and remove
what was written when the result does not load."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import gatekeeper.config.load as config_mod
from gatekeeper.config import ConfigError
from gatekeeper.importers.fwknop import DEFAULT_KEY_DIR, convert
from gatekeeper.importers.fwknop_conf import FwknopError, parse_server
from gatekeeper.importers.key_files import remove, write_key_files

__all__ = ["main"]


def _read(path: str) -> str:
    try:
        return Path(path).read_bytes().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        raise FwknopError(f"{path}: no such file") from None
    except OSError as exc:
        raise FwknopError(f"{path}: cannot read: {exc.strerror or exc}") from None


class DiskFiles:
    """The files an access.conf includes, read from the disk (paths as fwknopd takes them)."""

    def read(self, path: str) -> str:
        return Path(path).read_bytes().decode("utf-8", "surrogateescape")

    def names(self, folder: str) -> list[str]:
        return [p.name for p in Path(folder).iterdir()]  # a folder named x.conf: fwknopd fails too


def main(path: str, server_conf: str | None = None, output: str | None = None,
         key_dir: str | None = None) -> int:
    """``gatekeeper import-fwknop``: TOML to stdout (or ``output``), key files under
    ``key_dir`` (default: ``output``'s directory, else /etc/gatekeeper), warnings to
    stderr. Raises :class:`FwknopError` (exit status 2) on bad input, when no door
    converts, or when a file cannot be written; then nothing is written."""
    if key_dir is None:
        key_dir = os.path.dirname(os.path.abspath(output)) if output else DEFAULT_KEY_DIR
    server_text = None if server_conf is None else _read(server_conf)
    folder = server_text is not None and "ACCESS_FOLDER" in parse_server(server_text, "").values
    result = convert("" if folder else _read(path), path, os.path.abspath(key_dir),  # not read then
                     server_text, server_conf or "fwknopd.conf", DiskFiles())
    for line in result.warnings:
        print(line, file=sys.stderr)
    if not result.doors:
        raise FwknopError(f"{path}: no stanza could be converted into a gatekeeper door (see the "
                          "warnings above)")
    written, made = write_key_files(result.key_files)
    try:
        config_mod.loads(result.toml, output or "<stdout>")  # reads the key files just written
        if output is not None:
            Path(output).write_text(result.toml, encoding="utf-8")
    except (ConfigError, OSError) as exc:
        remove(written, made)
        if isinstance(exc, OSError):
            raise FwknopError(f"{output}: cannot write: {exc.strerror or exc}") from None
        raise FwknopError(f"the converted config does not load (a bug of import-fwknop): {exc}") from None
    if output is None:
        sys.stdout.write(result.toml)
    return 0
