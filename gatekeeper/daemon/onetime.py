"""Mark a line of a one-time sequences file used, atomically (the worker does, before the grant).

knockd's format: a sequence a line, ``#`` comments. A used line is commented out in
place (``#used# <the line>``), so line numbers never move and a restart (which reads the
file again) never revives it. The file is rewritten whole: a temporary file in the same
directory, fsync, ``os.replace``, then fsync of the directory.
"""

from __future__ import annotations

import os
import tempfile

from gatekeeper.model import ONE_TIME_USED as USED


def _normal(body: str) -> str:
    return ",".join(body.replace(",", " ").lower().split())


def mark_used(path: str, line: int, steps: str) -> bool:
    """Comment out ``line`` (1-based) if it still holds ``steps``; False if it does not
    (already used, or the file changed). Raises OSError if the file cannot be written."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
        mode = os.fstat(f.fileno()).st_mode & 0o7777
    lines = text.splitlines(keepends=True)
    if not 1 <= line <= len(lines):
        return False
    body = lines[line - 1].split("#", 1)[0].strip()
    if not body or _normal(_with_protos(body)) != _normal(steps):
        return False
    lines[line - 1] = USED + lines[line - 1]
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".gatekeeper-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return True


def _with_protos(body: str) -> str:
    """``7000 8000:udp`` -> ``7000:tcp,8000:udp`` (the form Port prints)."""
    out = []
    for word in body.replace(",", " ").split():
        out.append(word if ":" in word else f"{word}:tcp")
    return ",".join(out)
