"""Refused SPA packets get a log line with their source and stage (for fail2ban and the
admin), a bounded number of them: a flood is counted, not logged packet by packet."""

from __future__ import annotations

from gatekeeper import messages as msg
from gatekeeper.daemon.supervisor import refusal_line
from gatekeeper.model import Config
from gatekeeper.queue.refusals import OVERALL_PER_SECOND, PER_SOURCE_BURST, PER_SOURCE_EVERY, RefusalLimit
from gatekeeper.queue.worker import Worker
from gatekeeper.spa import fwknop
from tests.fixtures.doors import CLIENT, CLIENT_B, WALL, spa_packet, udp
from tests.fixtures.fakes import FakeGrants

WRONG = fwknop.SpaKeys(bytes(range(1, 33)), bytes(range(101, 165)), "wrong")


def source(i: int) -> bytes:
    return bytes([198, 51, 100, i])


def test_a_source_gets_a_burst_then_one_line_every_few_seconds() -> None:
    limit = RefusalLimit()
    admitted = [limit.admit(CLIENT_B, 100.0 + i * 0.01) for i in range(PER_SOURCE_BURST + 3)]
    assert admitted == [0] * PER_SOURCE_BURST + [None] * 3
    assert limit.admit(CLIENT_B, 100.0 + PER_SOURCE_EVERY / 2) is None
    assert limit.admit(CLIENT_B, 100.1 + PER_SOURCE_EVERY) == 4  # the four held back
    assert limit.admit(source(1), 100.2 + PER_SOURCE_EVERY) == 0  # another source: its own


def test_every_source_together_is_held_to_the_overall_rate() -> None:
    limit = RefusalLimit()
    first = [limit.admit(source(i), 50.0) for i in range(OVERALL_PER_SECOND + 10)]
    assert first.count(None) == 10 and first[:OVERALL_PER_SECOND] == [0] * OVERALL_PER_SECOND
    assert limit.admit(source(200), 51.0) == 10  # the next second, saying how many were not


def test_a_flood_of_refused_packets_reports_a_few_lines_and_counts_them_all(cfg: Config) -> None:
    reports: list[msg.Message] = []
    worker = Worker(cfg, FakeGrants(), reports.append, clock=lambda: 5.0, wall=lambda: WALL)
    bad = udp(spa_packet(keys=WRONG))
    for i in range(1000):
        assert not worker.on_packet(bad, 5.0 + i / 10_000)
    refused = [r for r in reports if isinstance(r, msg.Refused)]
    assert refused == [msg.Refused("spa", CLIENT, "hmac", 0)] * PER_SOURCE_BURST
    assert worker.snapshot().wire()["spa"]["spa"]["hmac"] == 1000
    assert worker.on_packet(udp(spa_packet(now=WALL)), 5.5) is False  # a good one still works
    assert worker.grants.added == [(CLIENT, "spa")]  # type: ignore[attr-defined]
    line = msg.encode(msg.Refused("spa", CLIENT, "hmac", 12), msg.Sender(0, 0, 1))
    assert msg.decode_report(line)[1] == msg.Refused("spa", CLIENT, "hmac", 12)


def test_the_supervisor_logs_one_line_fail2ban_can_read() -> None:
    assert refusal_line(msg.Refused("spa", CLIENT, "hmac", 0)) == (
        f"spa refused door=spa address={CLIENT} stage=hmac")
    assert refusal_line(msg.Refused("spa", CLIENT, "stale", 37)) == (
        f"spa refused door=spa address={CLIENT} stage=stale (37 more refused, not logged)")
