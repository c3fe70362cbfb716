"""Replay caches that outlive a restart: one append-only file a door under ``state_dir``.

A line per authenticated SPA packet or encrypted sequence: its replay key (hex) and the
wall-clock time until which it must stay refused. Workers only read the file (at start)
and append to it; the supervisor alone compacts it, once, before it forks them. Lines
are appended with one write each (no fsync: a packet captured just before a power cut
could be replayed after it; a crash or restart of the daemon loses nothing).
"""

from __future__ import annotations

import logging
import os
import re
import time

log = logging.getLogger(__name__)


def _path(state_dir: str, door: str) -> str:
    return os.path.join(state_dir, f"replay-{re.sub(r'[^A-Za-z0-9_-]', '_', door)}.log")


def load(state_dir: str, door: str, now: float | None = None) -> list[tuple[bytes, float]]:
    """The entries still live in the door's file."""
    now = time.time() if now is None else now
    path = _path(state_dir, door)
    live: list[tuple[bytes, float]] = []
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                key, _, expires = line.strip().partition(" ")
                try:
                    if float(expires) > now:
                        live.append((bytes.fromhex(key), float(expires)))
                except ValueError:
                    continue  # a line cut short by a crash
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.error("replay log %s: cannot read (%s); replays of earlier packets are not "
                  "refused until their windows pass", path, exc.strerror)
        return []
    return live


def compact(state_dir: str, door: str) -> None:
    """Rewrite the door's file with its live entries only (the supervisor, before any
    worker has it open)."""
    path = _path(state_dir, door)
    if not os.path.exists(path):
        return
    live = load(state_dir, door)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.writelines(f"{k.hex()} {e:.3f}\n" for k, e in live)
    os.replace(tmp, path)


class Journal:
    """Appends a door's new replay entries to its file (one small write each)."""

    def __init__(self, state_dir: str, door: str) -> None:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        self.path = _path(state_dir, door)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def __call__(self, key: bytes, expires: float) -> None:
        try:
            os.write(self._fd, f"{key.hex()} {expires:.3f}\n".encode())
        except OSError as exc:
            log.error("replay log %s: cannot write (%s)", self.path, exc.strerror)

    def close(self) -> None:
        os.close(self._fd)
