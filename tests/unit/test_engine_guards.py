"""The pure engine against hostile traffic, with an injected clock: scanners, spoofed wrong knocks,
per-prefix quotas, eviction and failed-sequence lockouts. (Sequences, grants and closes:
test_engine.py.)"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.config.load import loads
from gatekeeper.engine import Engine, Granted, Guard, Knocked, Outcome, Reason, Verdict
from gatekeeper.model import TCP, UDP
from tests.fixtures.engine import (
    CONFIG,
    SSH,
    A,
    B,
    knock,
    send,
    ssh_open,
    step_strategy,
)

SCAN_CONFIG = """
[gatekeeper]
scan_lockout = 60

[[door]]
name = "udp"
sequence = ["1001:udp", "1002:udp", "1003:udp"]
sequence_timeout = 5
opens = ["2203:tcp"]
"""


def test_an_ascending_scan_cannot_walk_through_consecutive_ports() -> None:
    engine = Engine(loads(SCAN_CONFIG))
    now = 0.0
    completed = []
    for port in range(1, 2000):  # nmap -sU -r: every port in order
        now += 0.0001
        _, reason, events = send(engine, A, UDP, port, now)
        completed += [e for e in events if isinstance(e, Granted)]
        if port == 1003:
            assert reason is Reason.SCANNER
            assert Knocked("udp", Outcome.LOCKED) in events
    assert completed == []
    assert send(engine, A, TCP, 2203, now)[0] is Verdict.DROP


def test_a_scanner_stays_locked_out_for_the_lockout_then_may_knock() -> None:
    engine = Engine(loads(SCAN_CONFIG))
    for port in range(100, 110):  # 10 distinct probes: more than 3 steps + 3
        send(engine, A, UDP, port, port * 0.001)
    knock(engine, A, [(UDP, 1001), (UDP, 1002), (UDP, 1003)], start=1.0)
    assert send(engine, A, TCP, 2203, 1.5)[0] is Verdict.DROP, "locked out"
    knock(engine, B, [(UDP, 1001), (UDP, 1002), (UDP, 1003)], start=1.0)
    assert send(engine, B, TCP, 2203, 1.5)[0] is Verdict.ACCEPT, "another source is not"
    knock(engine, A, [(UDP, 1001), (UDP, 1002), (UDP, 1003)], start=62.0)
    assert send(engine, A, TCP, 2203, 62.5)[0] is Verdict.ACCEPT, "after the lockout"


def test_a_client_that_retries_the_protected_port_is_no_scanner() -> None:
    engine = Engine(loads(SCAN_CONFIG))
    for i in range(20):  # SYN retransmits of an ssh started before the knock
        send(engine, A, TCP, 2203, i * 0.1)
    send(engine, A, UDP, 53, 2.0)
    knock(engine, A, [(UDP, 1001), (UDP, 1002), (UDP, 1003)], start=2.1)
    assert send(engine, A, TCP, 2203, 2.5)[0] is Verdict.ACCEPT


def test_spoofed_wrong_knocks_break_a_sequence_by_default() -> None:
    engine = Engine(loads(CONFIG))
    for i, step in enumerate(SSH):
        send(engine, A, *step, i * 0.1)
        send(engine, A, UDP, 31337, i * 0.1 + 0.05)  # injected with the victim's address
    assert not ssh_open(engine, A, 1.0)


def test_wrong_knock_ignore_makes_the_victim_immune() -> None:
    engine = Engine(loads(CONFIG.replace("open_for = 30\n", 'open_for = 30\nwrong_knock = "ignore"\n', 1)))
    for i, step in enumerate(SSH):
        send(engine, A, *step, i * 0.1)
        send(engine, A, UDP, 31337 + i, i * 0.1 + 0.05)
    assert ssh_open(engine, A, 1.0)


def test_wrong_knock_ignore_still_does_not_open_to_a_sweep() -> None:
    """Without resets an ascending sweep would walk through 1001, 1002, 1003: the
    scanner lockout is what stops it."""
    engine = Engine(loads(SCAN_CONFIG.replace("opens =", 'wrong_knock = "ignore"\nopens =')))
    now = 0.0
    for port in range(1, 5000):
        now += 0.0001
        send(engine, A, UDP, port, now)
    assert send(engine, A, TCP, 2203, now)[0] is Verdict.DROP


# -- per-prefix quotas, eviction, failed-sequence limits (hostile traffic) ------------

GUARD_CONFIG = """
[gatekeeper]
max_sources = {max_sources}
prefix_quota = {quota}
failure_limit = 3
prefix_failure_limit = 5
failure_lockout = 60

[[door]]
name = "ssh"
sequence = ["7000:udp", "8000:tcp", "9000:udp"]
sequence_timeout = 5
opens = ["22:tcp"]
"""


def guard_engine(max_sources: int = 1000, quota: int = 4) -> Engine:
    return Engine(loads(GUARD_CONFIG.format(max_sources=max_sources, quota=quota)))


def v4(a: int, b: int, c: int, d: int) -> bytes:
    return bytes((a, b, c, d))


def v6(net: int, host: int) -> bytes:
    return (0x20010DB8 << 96 | net << 64 | host).to_bytes(16, "big")


def test_one_prefix_cannot_hold_more_than_its_quota_of_sequences() -> None:
    engine = guard_engine(quota=4)
    for host in range(4):
        assert send(engine, v4(198, 51, 100, host), *SSH[0], 0.0)[1] is Reason.KNOCK
    assert send(engine, v4(198, 51, 100, 9), *SSH[0], 0.0)[1] is Reason.REFUSED
    assert send(engine, v6(1, 1), *SSH[0], 0.0)[1] is Reason.KNOCK
    for host in range(2, 6):
        send(engine, v6(1, host), *SSH[0], 0.0)
    assert send(engine, v6(1, 99), *SSH[0], 0.0)[1] is Reason.REFUSED, "one /64 is one prefix"
    assert engine.guards[Guard.REFUSED_QUOTA] == 2 + 1
    # another network is not affected, and completes its sequence
    knock(engine, A, SSH)
    assert ssh_open(engine, A, 1.0)
    # a refused source made no progress: its next knocks are not a sequence
    knock(engine, v4(198, 51, 100, 9), SSH[1:], start=0.1)
    assert not ssh_open(engine, v4(198, 51, 100, 9), 1.0)


def test_a_prefix_gets_its_quota_back_as_its_sequences_end() -> None:
    engine = guard_engine(quota=2)
    x, y, z = v4(198, 51, 100, 1), v4(198, 51, 100, 2), v4(198, 51, 100, 3)
    send(engine, x, *SSH[0], 0.0)
    send(engine, y, *SSH[0], 0.0)
    assert send(engine, z, *SSH[0], 0.1)[1] is Reason.REFUSED
    knock(engine, x, SSH[1:], start=0.2)  # x completes: no longer in progress
    assert send(engine, z, *SSH[0], 0.5)[1] is Reason.KNOCK
    assert send(engine, x, *SSH[0], 0.6)[1] is Reason.REFUSED
    # y's and z's attempts expire: the prefix may start two again
    assert send(engine, x, *SSH[0], 10.0)[1] is Reason.KNOCK
    assert send(engine, v4(198, 51, 100, 4), *SSH[0], 10.0)[1] is Reason.KNOCK


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), step_strategy, st.floats(0, 3)), max_size=60))
def test_quota_bookkeeping_never_drifts(packets: list[tuple[int, tuple[int, int], float]]) -> None:
    """Whatever happened before, once every attempt has ended a prefix may again start
    exactly its quota of sequences (a leak would shut a network out for good)."""
    engine = guard_engine(max_sources=16, quota=3)
    now = 0.0
    for host, (proto, port), gap in packets:
        now += gap
        send(engine, v4(198, 51, 100 + host % 2, host), proto, port, now)
    now += 10.0
    engine.tick(now)
    for net in (100, 101):
        reasons = [send(engine, v4(198, 51, net, 100 + h), *SSH[0], now)[1] for h in range(4)]
        assert reasons == [Reason.KNOCK] * 3 + [Reason.REFUSED]


def test_a_flood_of_first_knocks_cannot_evict_a_source_two_steps_in() -> None:
    engine = guard_engine(max_sources=64, quota=0)
    knock(engine, A, SSH[:2])  # the victim, two steps in
    for i in range(10_000):  # spoofed first knocks from 10,000 sources
        send(engine, i.to_bytes(4, "big"), *SSH[0], 0.2 + i * 1e-5)
    assert engine.tracked_sources == 64
    assert engine.guards[Guard.EVICTED] > 9_000
    assert send(engine, A, *SSH[2], 0.5)[1] is Reason.COMPLETED
    assert ssh_open(engine, A, 0.6)


def test_a_table_full_of_sources_two_steps_in_refuses_new_ones() -> None:
    engine = guard_engine(max_sources=16, quota=0)
    for i in range(16):
        knock(engine, i.to_bytes(4, "big"), SSH[:2], start=i * 0.01)
    assert send(engine, A, *SSH[0], 1.0)[1] is Reason.REFUSED
    assert engine.guards[Guard.REFUSED_FULL] == 1
    for i in range(16):  # every one of them still completes
        assert send(engine, i.to_bytes(4, "big"), *SSH[2], 1.1)[1] is Reason.COMPLETED
    assert send(engine, A, *SSH[0], 1.2)[1] is Reason.KNOCK, "room again"


def brute_force(engine: Engine, src: bytes, tries: int, start: float) -> float:
    """``tries`` wrong guesses: the right first step, then a wrong one (a reset each)."""
    now = start
    for _ in range(tries):
        send(engine, src, *SSH[0], now)
        send(engine, src, UDP, 1234, now + 0.01)
        now += 0.1
    return now


def test_too_many_failed_sequences_lock_a_source_out() -> None:
    engine = guard_engine()
    now = brute_force(engine, A, 3, 0.0)
    knock(engine, A, SSH, start=now)
    assert ssh_open(engine, A, now + 0.5), "3 failures are within the limit"
    engine = guard_engine()
    now = brute_force(engine, A, 4, 0.0)
    decisions = knock(engine, A, SSH, start=now)
    assert decisions[-1][1] is Reason.LOCKED
    assert Knocked("ssh", Outcome.LOCKED) in decisions[-1][2]
    assert not ssh_open(engine, A, now + 0.5)
    assert engine.guards[Guard.LOCKOUT_SOURCE] == 1
    knock(engine, B, SSH, start=now)
    assert ssh_open(engine, B, now + 0.5), "another source (even in the same /24) is not locked"
    knock(engine, A, SSH, start=61.0)
    assert ssh_open(engine, A, 61.5), "after failure_lockout"


def test_too_many_failed_sequences_from_one_prefix_lock_the_prefix_out() -> None:
    engine = guard_engine()
    now = 0.0
    for host in range(3):  # 6 failures from one /24, 2 a source: under the source limit
        now = brute_force(engine, v4(198, 51, 100, host), 2, now)
    assert engine.guards[Guard.LOCKOUT_PREFIX] == 1 and engine.guards[Guard.LOCKOUT_SOURCE] == 0
    knock(engine, v4(198, 51, 100, 77), SSH, start=now)
    assert not ssh_open(engine, v4(198, 51, 100, 77), now + 0.5), "the /24 is locked out"
    knock(engine, A, SSH, start=now)
    assert ssh_open(engine, A, now + 0.5), "another /24 is not"


def test_retransmits_and_a_timeout_count_as_they_should() -> None:
    engine = guard_engine()
    now = 0.0
    for _ in range(10):  # duplicates are no failure
        send(engine, A, *SSH[0], now)
        send(engine, A, *SSH[0], now + 0.01)
        send(engine, A, *SSH[1], now + 0.02)
        send(engine, A, *SSH[1], now + 0.03)
        send(engine, A, *SSH[2], now + 0.04)
        now += 0.1
    assert engine.guards[Guard.LOCKOUT_SOURCE] == 0
    for _ in range(4):  # a sequence that timed out is a failure when the source is back
        send(engine, B, *SSH[0], now)
        send(engine, B, *SSH[1], now + 0.1)
        now += 5.5
    knock(engine, B, SSH, start=now)
    assert not ssh_open(engine, B, now + 0.5)
    assert engine.guards[Guard.LOCKOUT_SOURCE] == 1


def test_guards_can_be_turned_off() -> None:
    engine = Engine(loads(GUARD_CONFIG.format(max_sources=1000, quota=0)
                          .replace("failure_limit = 3", "failure_limit = 0")
                          .replace("prefix_failure_limit = 5", "prefix_failure_limit = 0")))
    for host in range(200):
        assert send(engine, v4(198, 51, 100, host), *SSH[0], 0.0)[1] is Reason.KNOCK
    now = brute_force(engine, A, 50, 1.0)
    knock(engine, A, SSH, start=now)
    assert ssh_open(engine, A, now + 0.5)
