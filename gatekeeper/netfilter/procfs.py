"""The one reader of ``/proc/net/netfilter/nfnetlink_queue``: the kernel's NFQUEUE instances.

A line a bound queue: its number, the peer's netlink portid, packets waiting, the copy
mode and range, then the kernel's drop counters (queue full: ``queue_dropped``; the
reader's socket full: ``user_dropped``), the last packet id and a constant 1.
"""

from __future__ import annotations

from typing import NamedTuple

PROC_QUEUES = "/proc/net/netfilter/nfnetlink_queue"


class QueueStat(NamedTuple):
    portid: int
    waiting: int
    queue_dropped: int  # the queue was full (queue_maxlen)
    user_dropped: int  # the reader's socket buffer was full
    id_sequence: int  # the last packet id: it moves when the queue gets a packet


def parse_queues(text: str) -> dict[int, QueueStat]:
    """The file's text, by queue number (a line that is not the kernel's is skipped)."""
    out: dict[int, QueueStat] = {}
    for line in text.splitlines():
        try:
            v = [int(x) for x in line.split()]
            out[v[0]] = QueueStat(v[1], v[2], v[5], v[6], v[7])
        except (ValueError, IndexError):
            continue
    return out


def read_queues(path: str = PROC_QUEUES) -> dict[int, QueueStat]:
    """This network namespace's queues (``path``: another's, ``/proc/PID/net/...``); none
    when the file cannot be read (no queue bound since nfnetlink_queue was loaded)."""
    try:
        with open(path, encoding="ascii") as f:
            return parse_queues(f.read())
    except OSError:
        return {}
