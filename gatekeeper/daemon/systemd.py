"""sd_notify(3) without a dependency: one datagram to $NOTIFY_SOCKET, if there is one."""

from __future__ import annotations

import os
import socket
import time


def notify(*fields: str) -> bool:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto("\n".join(fields).encode(), path)
    except OSError:
        return False
    return True


def reloading() -> bool:
    """RELOADING=1 with the MONOTONIC_USEC that Type=notify-reload expects."""
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
