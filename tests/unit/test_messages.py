"""The worker <-> supervisor vocabulary: one definition a message, both ways, and a line
that is no message is refused with a reason (the supervisor logs, counts and carries on)."""

from __future__ import annotations

import json
import select

import pytest

from gatekeeper import messages as msg


@pytest.mark.parametrize("message", [
    msg.Ready(3), msg.Failed("NFQUEUE 1: cannot bind"),
    msg.Stats([1, 2], [0, 1], 5, {"ssh": [1, 0, 0, 0, 0, 0, 0]}, {"spa": {"ok": 1}}, [0] * 6, 2, None),
    msg.Granted("ssh", "203.0.113.10", ["22:tcp"], None, seconds=29.5, renewed=False),
    msg.Revoked("ssh", "203.0.113.10", ["22:tcp"], "ipset: no such set", cause="closed"),
    msg.Used("once", "/etc/gk/once", 3, "1001,1002:udp", ""), msg.Reloaded(), msg.Counts([0, 1], 4),
])
def test_a_report_reads_back_as_it_was_written(message: msg.Message) -> None:
    line = msg.encode(message, msg.Sender(1, 7, 4242))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert msg.decode_report(line) == (msg.Sender(1, 7, 4242), message)


@pytest.mark.parametrize("order", [msg.Reload("[gatekeeper]\n", "/etc/gk.toml"),
                                   msg.Forget("2001:db8::1", "ssh"), msg.CountsRequest()])
def test_an_order_reads_back_as_it_was_written(order: msg.Message) -> None:
    assert msg.decode_order(msg.encode(order)) == order


def test_the_wire_keeps_its_t_keyed_json_lines() -> None:
    line = msg.encode(msg.Ready(2), msg.Sender(0, 5, 99))
    assert json.loads(line) == {"worker": 0, "queue": 5, "pid": 99, "t": "ready", "adopted": 2}


SENDER = '"worker":0,"queue":1,"pid":2,'


@pytest.mark.parametrize(("line", "problem"), [
    (b"not json", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"t":"ready","adopted":1}', "sender's worker"),
    ('{' + SENDER + '"t":"launch"}', "unknown message kind 'launch'"),
    ('{' + SENDER + '"t":"grant","door":"ssh"}', "without 'address'"),
    ('{' + SENDER + '"t":"ready","adopted":"many"}', "adopted is str"),
    ('{' + SENDER + '"t":"ready","adopted":true}', "adopted is bool"),
    (b"\xff\xfe", "not JSON"),
])
def test_a_line_that_is_no_report_is_refused_with_the_reason(line: bytes | str, problem: str) -> None:
    with pytest.raises(msg.MessageError, match=problem):
        msg.decode_report(line.encode() if isinstance(line, str) else line)


def test_an_order_is_not_a_report() -> None:
    with pytest.raises(msg.MessageError, match="unknown message kind 'reload'"):
        msg.decode_report(msg.encode(msg.Reload("", ""), msg.Sender(0, 0, 0)))


def test_stats_too_big_for_one_atomic_write_drop_their_knock_counts_first() -> None:
    knocks = {f"door{i}": [1] * 7 for i in range(200)}
    stats = msg.Stats([1], [1], 1, knocks, {"spa": {"ok": 1}}, [0], 0, None)
    line = msg.encode(stats, msg.Sender(0, 0, 0))
    assert len(line) <= select.PIPE_BUF
    _, back = msg.decode_report(line)
    assert isinstance(back, msg.Stats) and back.knocks == {} and back.spa == {"spa": {"ok": 1}}


def test_the_supervisor_counts_and_skips_a_report_it_cannot_read() -> None:
    import os

    from gatekeeper.daemon.supervisor import Supervisor

    sup = Supervisor.__new__(Supervisor)  # the report reader alone: no config, no workers
    from gatekeeper.metrics import Stats

    sup.stats = Stats()
    sup.workers = {}
    sup._report_r, write = os.pipe()
    os.set_blocking(sup._report_r, False)
    sup._buffer = b""
    try:
        os.write(write, b'{"t":"nonsense"}\n' + msg.encode(msg.Reloaded(), msg.Sender(0, 1, 2)))
        sup._read_reports()
        assert sup.stats.bad_reports == 1
    finally:
        os.close(sup._report_r)
        os.close(write)
