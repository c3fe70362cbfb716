"""The one reader of /proc/net/netfilter/nfnetlink_queue."""

from __future__ import annotations

from pathlib import Path

from gatekeeper.metrics import read_queues as metrics_queues
from gatekeeper.netfilter.procfs import QueueStat, parse_queues, read_queues

# two bound queues as the kernel prints them (fields padded to its widths)
TEXT = ("    0  12345     3 2 65531     7     9   120  1\n"
        "    4 -4100      0 2 65531     0     1    42  1\n")


def test_each_queue_line_is_read_by_its_number() -> None:
    assert parse_queues(TEXT) == {0: QueueStat(12345, 3, 7, 9, 120), 4: QueueStat(-4100, 0, 0, 1, 42)}


def test_a_line_that_is_not_the_kernels_is_skipped() -> None:
    assert parse_queues("garbage\n    1 2 3\n" + TEXT.splitlines()[0]) == {0: QueueStat(12345, 3, 7, 9, 120)}


def test_an_unreadable_file_is_no_queue_and_metrics_name_the_drop_causes(tmp_path: Path) -> None:
    assert read_queues(str(tmp_path / "absent")) == {}
    (tmp_path / "q").write_text(TEXT)
    assert metrics_queues(str(tmp_path / "q"))[0] == {"portid": 12345, "waiting": 3, "queue_full": 7,
                                                      "socket_full": 9}
