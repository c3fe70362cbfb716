"""What the lab reads from a running daemon's status (``gatekeeper status --json``, the
answer of its control socket: :func:`gatekeeper.daemon.control.request`)."""

from __future__ import annotations

from typing import Any


def worker_pids(status: dict[str, Any]) -> dict[int, int]:
    """Queue -> pid of the worker reading it, in queue order, from the status' ``workers``.

    Raises ValueError when the status holds no such list."""
    workers = status.get("workers")
    if not isinstance(workers, list):
        raise ValueError(f"the status holds no workers list: {sorted(status)}")
    try:
        return {int(w["queue"]): int(w["pid"]) for w in sorted(workers, key=lambda w: int(w["queue"]))}
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"a worker in the status without a queue and a pid: {exc}") from None
