"""The pure engine with an injected clock: no kernel, no sockets, microseconds a test."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.config.load import loads
from gatekeeper.engine import Engine, Granted, Guard, Knocked, Outcome, Reason, Revoked, Verdict
from gatekeeper.model import ICMP, TCP, UDP, Port
from tests.fixtures.playbook import play

SYN, ACK, RST = 0x02, 0x10, 0x04
GW = ipaddress.ip_address("203.0.113.1").packed
A = ipaddress.ip_address("203.0.113.10").packed
B = ipaddress.ip_address("203.0.113.20").packed
A6 = ipaddress.ip_address("2001:db8:1::10").packed
GW6 = ipaddress.ip_address("2001:db8:1::1").packed
SERVER = ipaddress.ip_address("198.51.100.10").packed

CONFIG = """
[gatekeeper]
public = ["80:tcp"]

[[door]]
name = "ssh"
sequence = ["7000:udp", "8000:tcp", "9000:udp"]
sequence_timeout = 5
opens = ["22:tcp"]
open_for = 30
close_sequence = ["9000:tcp", "8000:udp", "7000:tcp"]

[[door]]
name = "rdp"
sequence = ["4001", "4002:udp", "4003"]
opens = ["3389:tcp"]
open_for = 60
host = "198.51.100.10"

[[door]]
name = "ping"
sequence = ["100:icmp", "200:icmp"]
opens = ["8080:tcp"]
"""

SSH = [(UDP, 7000), (TCP, 8000), (UDP, 9000)]
SSH_CLOSE = [(TCP, 9000), (UDP, 8000), (TCP, 7000)]
RDP = [(TCP, 4001), (UDP, 4002), (TCP, 4003)]


@pytest.fixture
def engine() -> Engine:
    return Engine(loads(CONFIG, "test.toml"))


def send(engine: Engine, src: bytes, proto: int, port: int, now: float, *, dst: bytes = GW,
         flags: int = SYN) -> tuple[Verdict, Reason, tuple[object, ...]]:
    return engine.decide(src, dst, proto, port, flags if proto == TCP else 0, now)


def knock(engine: Engine, src: bytes, steps: list[tuple[int, int]], start: float = 0.0,
          gap: float = 0.1, dst: bytes = GW) -> list[tuple[Verdict, Reason, tuple[object, ...]]]:
    return [send(engine, src, p, port, start + i * gap, dst=dst) for i, (p, port) in enumerate(steps)]


def ssh_open(engine: Engine, src: bytes, now: float, dst: bytes = GW) -> bool:
    return send(engine, src, TCP, 22, now, dst=dst)[0] is Verdict.ACCEPT


def test_protected_port_is_shut_before_a_knock(engine: Engine) -> None:
    assert send(engine, A, TCP, 22, 0.0) == (Verdict.DROP, Reason.UNAUTHORISED, ())


def test_right_sequence_grants_the_knocker_only(engine: Engine) -> None:
    results = knock(engine, A, SSH)
    assert all(v is Verdict.DROP for v, _, _ in results), "knocks themselves are dropped"
    assert [r for _, r, _ in results] == [Reason.KNOCK, Reason.KNOCK, Reason.COMPLETED]
    grants = [e for e in results[-1][2] if isinstance(e, Granted)]
    assert len(grants) == 1
    assert grants[0].address == "203.0.113.10" and grants[0].door.name == "ssh"
    assert grants[0].expires == pytest.approx(0.2 + 30)
    assert ssh_open(engine, A, 0.21)
    assert not ssh_open(engine, B, 0.21)
    assert send(engine, A, TCP, 3389, 0.21, dst=SERVER)[0] is Verdict.DROP, "other doors stay shut"


def test_decision_comes_with_the_last_knock_not_later(engine: Engine) -> None:
    """The grant is an event of the completing knock itself: the caller can install it
    before it verdicts that knock, so the next packet (the first SYN) is admitted."""
    *_, last = knock(engine, A, SSH)
    assert any(isinstance(e, Granted) for e in last[2])
    assert ssh_open(engine, A, 0.2)


def test_wrong_order_fails(engine: Engine) -> None:
    knock(engine, A, [SSH[1], SSH[0], SSH[2]])
    assert not ssh_open(engine, A, 1.0)


def test_wrong_knock_resets_progress(engine: Engine) -> None:
    play(engine, [
        # time source packet       verdict  reason          events
        (0.0,  A,     "7000:udp",  "drop",  "knock",        ["ssh advanced"]),
        (0.1,  A,     "8000:tcp",  "drop",  "knock",        ["ssh advanced"]),
        (0.2,  A,     "12345:udp", "drop",  "wrong",        ["ssh reset"]),
        (0.3,  A,     "9000:udp",  "drop",  "wrong",        []),
        (0.4,  A,     "22:tcp",    "drop",  "unauthorised", []),
    ])


def test_a_reset_knock_that_is_the_first_step_starts_over(engine: Engine) -> None:
    play(engine, [
        (0.0, A, "7000:udp", "drop",   "knock",     ["ssh advanced"]),
        (0.1, A, "8000:tcp", "drop",   "knock",     ["ssh advanced"]),
        (0.2, A, "7000:udp", "drop",   "wrong",     ["ssh reset"]),  # reset, but the first step: progress 1
        (0.3, A, "8000:tcp", "drop",   "knock",     ["ssh advanced"]),
        (0.4, A, "9000:udp", "drop",   "completed", ["ssh completed", "granted ssh 22:tcp"]),
        (0.5, A, "22:tcp",   "accept", "granted",   []),
    ])


def test_duplicate_of_the_last_knock_keeps_progress(engine: Engine) -> None:
    send(engine, A, *SSH[0], 0.0)
    send(engine, A, *SSH[1], 0.1)
    _, reason, events = send(engine, A, *SSH[1], 0.15)  # a retransmitted SYN
    assert reason is Reason.DUPLICATE
    assert Knocked("ssh", Outcome.DUPLICATE) in events
    send(engine, A, *SSH[2], 0.2)
    assert ssh_open(engine, A, 0.3)


def test_duplicate_of_an_earlier_knock_resets(engine: Engine) -> None:
    send(engine, A, *SSH[0], 0.0)
    send(engine, A, *SSH[1], 0.1)
    send(engine, A, UDP, 8000, 0.15)  # same port, other protocol: a different step
    send(engine, A, *SSH[2], 0.2)
    assert not ssh_open(engine, A, 0.3)


def test_sequence_not_finished_in_time_is_forgotten(engine: Engine) -> None:
    send(engine, A, *SSH[0], 0.0)
    send(engine, A, *SSH[1], 1.0)
    _, _, events = send(engine, A, *SSH[2], 5.5)
    assert Knocked("ssh", Outcome.TIMEOUT) in events
    assert not ssh_open(engine, A, 5.6)


def test_sequence_finished_just_in_time_counts(engine: Engine) -> None:
    knock(engine, A, SSH, gap=2.5)  # last knock at exactly 5.0 s
    assert ssh_open(engine, A, 5.1)


def test_late_knock_may_start_a_new_attempt(engine: Engine) -> None:
    send(engine, A, *SSH[0], 0.0)
    knock(engine, A, SSH, start=10.0)
    assert ssh_open(engine, A, 10.3)


def test_state_of_sources_never_interacts(engine: Engine) -> None:
    send(engine, A, *SSH[0], 0.0)
    send(engine, B, *SSH[0], 0.05)
    send(engine, B, UDP, 1, 0.06)  # B's wrong knock must not touch A
    send(engine, A, *SSH[1], 0.1)
    send(engine, B, *SSH[1], 0.11)
    send(engine, A, *SSH[2], 0.2)
    assert ssh_open(engine, A, 0.3)
    assert not ssh_open(engine, B, 0.3)


def test_interleaved_knocks_from_two_sources_both_succeed(engine: Engine) -> None:
    for i, step in enumerate(SSH):
        send(engine, A, *step, i * 0.1)
        send(engine, B, *step, i * 0.1 + 0.01)
    assert ssh_open(engine, A, 1.0) and ssh_open(engine, B, 1.0)


def test_grant_expires(engine: Engine) -> None:
    knock(engine, A, SSH)
    assert ssh_open(engine, A, 30.1)
    assert not ssh_open(engine, A, 30.3)
    revoked = engine.tick(30.3)
    assert [(r.address, r.door.name, r.cause) for r in revoked] == [("203.0.113.10", "ssh", "expired")]
    assert engine.tick(31.0) == []
    assert list(engine.grants()) == []


def test_knocking_again_renews_the_grant(engine: Engine) -> None:
    knock(engine, A, SSH)
    *_, last = knock(engine, A, SSH, start=20.0)
    granted = [e for e in last[2] if isinstance(e, Granted)]
    assert granted[0].renewed
    assert ssh_open(engine, A, 45.0)


# A knocks the ssh sequence (a playbook's first rows)
A_OPENS_SSH = [
    (0.0, A, "7000:udp", "drop", "knock", ["ssh advanced"]),
    (0.1, A, "8000:tcp", "drop", "knock", ["ssh advanced"]),
    (0.2, A, "9000:udp", "drop", "completed", ["ssh completed", "granted ssh 22:tcp"]),
]


def test_close_sequence_revokes(engine: Engine) -> None:
    play(engine, [
        *A_OPENS_SSH,
        (1.0, A, "9000:tcp", "drop", "knock",        ["ssh advanced"]),
        (1.1, A, "8000:udp", "drop", "knock",        ["ssh advanced"]),
        (1.2, A, "7000:tcp", "drop", "closed",       ["ssh completed", "revoked ssh closed 22:tcp"]),
        (1.5, A, "22:tcp",   "drop", "unauthorised", []),
    ])
    assert engine.tick(100.0) == [], "a closed grant does not expire a second time"


def test_close_sequence_without_grant_does_nothing(engine: Engine) -> None:
    *_, last = knock(engine, A, SSH_CLOSE)
    assert not any(isinstance(e, Revoked) for e in last[2])
    assert Knocked("ssh", Outcome.NOTHING_TO_CLOSE) in last[2]


def test_close_sequence_of_another_source_does_not_revoke(engine: Engine) -> None:
    play(engine, [
        *A_OPENS_SSH,
        (1.0, B, "9000:tcp", "drop",   "knock",     ["ssh advanced"]),
        (1.1, B, "8000:udp", "drop",   "knock",     ["ssh advanced"]),
        (1.2, B, "7000:tcp", "drop",   "closed",    ["ssh completed", "ssh nothing-to-close"]),
        (2.0, A, "22:tcp",   "accept", "granted",   []),
    ])


def test_ipv6(engine: Engine) -> None:
    *_, last = knock(engine, A6, SSH, dst=GW6)
    assert [e.address for e in last[2] if isinstance(e, Granted)] == ["2001:db8:1::10"]
    assert ssh_open(engine, A6, 0.5, dst=GW6)
    assert not ssh_open(engine, A, 0.5)


def test_forward_door_opens_only_its_host(engine: Engine) -> None:
    knock(engine, A, RDP, dst=SERVER)
    assert send(engine, A, TCP, 3389, 0.5, dst=SERVER)[0] is Verdict.ACCEPT
    other_host = ipaddress.ip_address("198.51.100.11").packed
    assert send(engine, A, TCP, 3389, 0.5, dst=other_host)[0] is Verdict.DROP
    assert send(engine, A, TCP, 3389, 0.5, dst=GW)[0] is Verdict.DROP


def test_a_gateway_door_opens_the_gateway_only_never_a_host_behind_it(engine: Engine) -> None:
    """The ssh door has no ``host``: its grant admits port 22 on the gateway (INPUT), and
    not port 22 of the host that the rdp door guards behind it (FORWARD)."""
    knock(engine, A, SSH)
    assert ssh_open(engine, A, 0.5)
    assert not ssh_open(engine, A, 0.5, dst=SERVER)
    assert send(engine, A, TCP, 22, 0.5, dst=SERVER)[1] is Reason.UNAUTHORISED
    assert engine.doors_opening(TCP << 16 | 22, GW) == (0,)
    assert engine.doors_opening(TCP << 16 | 22, SERVER) == (), "the cluster lookup too"
    assert engine.doors_opening(TCP << 16 | 3389, SERVER) == (1,)
    assert engine.doors_opening(TCP << 16 | 3389, GW) == ()


def test_tcp_packets_without_the_door_flags_are_not_knocks(engine: Engine) -> None:
    send(engine, A, *SSH[0], 0.0)
    _, reason, events = send(engine, A, TCP, 8000, 0.1, flags=ACK)
    assert reason is Reason.IGNORED and events == ()
    _, reason, _ = send(engine, A, TCP, 1234, 0.15, flags=RST)  # a stray RST elsewhere
    send(engine, A, *SSH[1], 0.2)
    send(engine, A, *SSH[2], 0.3)
    assert ssh_open(engine, A, 0.4), "packets that are not knocks for the door leave it alone"


def test_tcp_flags_with_negation() -> None:
    cfg = loads(CONFIG.replace('open_for = 30\n', 'open_for = 30\ntcp_flags = "syn,!ack"\n', 1))
    engine = Engine(cfg)
    send(engine, A, *SSH[0], 0.0)
    assert send(engine, A, TCP, 8000, 0.1, flags=SYN | ACK)[1] is Reason.IGNORED
    send(engine, A, TCP, 8000, 0.2, flags=SYN)
    send(engine, A, *SSH[2], 0.3)
    assert ssh_open(engine, A, 0.4)


def test_icmp_echo_sizes_knock(engine: Engine) -> None:
    send(engine, A, ICMP, 100, 0.0)
    *_, last = [send(engine, A, ICMP, 200, 0.1)]
    assert last[1] is Reason.COMPLETED
    assert send(engine, A, TCP, 8080, 0.2)[0] is Verdict.ACCEPT


def test_packets_without_a_port_touch_no_state(engine: Engine) -> None:
    send(engine, A, *SSH[0], 0.0)
    assert send(engine, A, 47, -1, 0.1) == (Verdict.DROP, Reason.WRONG, ())  # GRE, a fragment...
    send(engine, A, *SSH[1], 0.2)
    send(engine, A, *SSH[2], 0.3)
    assert ssh_open(engine, A, 0.4)


def test_state_is_dropped_when_nothing_is_in_progress(engine: Engine) -> None:
    send(engine, A, *SSH[0], 0.0)
    assert engine.tracked_sources == 1
    send(engine, A, UDP, 5, 0.1)
    assert engine.tracked_sources == 0
    knock(engine, B, SSH)
    assert engine.tracked_sources == 0


def test_state_expires_after_the_sequence_timeout(engine: Engine) -> None:
    send(engine, A, *SSH[0], 0.0)
    engine.tick(10.0)
    assert engine.tracked_sources == 0


def test_state_table_is_bounded() -> None:
    cfg = loads(CONFIG.replace("[gatekeeper]\n", "[gatekeeper]\nmax_sources = 100\n"))
    engine = Engine(cfg)
    for i in range(1000):
        send(engine, i.to_bytes(4, "big"), *SSH[0], i * 0.001)
    assert engine.tracked_sources == 100


def test_restore_grant_from_the_kernel_set(engine: Engine) -> None:
    assert engine.restore_grant("203.0.113.10", "ssh", 12.0)
    assert not engine.restore_grant("203.0.113.10", "no-such-door", 12.0)
    assert ssh_open(engine, A, 11.0)
    assert not ssh_open(engine, A, 12.5)


def test_grant_of_one_door_does_not_open_another(engine: Engine) -> None:
    knock(engine, A, SSH)
    assert send(engine, A, TCP, 8080, 1.0)[0] is Verdict.DROP


step_strategy = st.sampled_from(
    [*SSH, *SSH_CLOSE, *RDP, (TCP, 22), (TCP, 1), (UDP, 53), (ICMP, 100), (ICMP, 200)]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([A, B]), step_strategy, st.floats(0, 2)), max_size=40))
def test_no_grant_without_the_exact_sequence(packets: list[tuple[bytes, tuple[int, int], float]]) -> None:
    """A grant exists only if that source's last knocks were exactly the sequence."""
    engine = Engine(loads(CONFIG))
    now = 0.0
    history: dict[bytes, list[tuple[int, int]]] = {A: [], B: []}
    for src, (proto, port), gap in packets:
        now += gap
        verdict, _, events = send(engine, src, proto, port, now)
        history[src].append((proto, port))
        for event in events:
            if isinstance(event, Granted) and event.door.name == "ssh":
                # retransmits collapse; the last distinct steps must be the sequence
                steps = [s for i, s in enumerate(history[src]) if i == 0 or s != history[src][i - 1]]
                assert steps[-3:] == SSH
        if (proto, port) == (TCP, 22):
            assert verdict is Verdict.DROP or any(
                name == "ssh" and addr == str(ipaddress.ip_address(src)) and expires > now
                for addr, name, _, expires in engine.grants()
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


# -- grants of some of a door's ports (SPA, encrypted sequences) -------------------------

MULTI = (CONFIG + """
[[door]]
name = "web"
sequence = ["5001", "5002", "5003"]
opens = ["22:tcp", "80:tcp", "53:udp"]
open_for = 30
close_sequence = ["5003", "5002", "5001"]
""").replace('public = ["80:tcp"]', "public = []")
P22, P80, P53 = Port(TCP, 22), Port(TCP, 80), Port(UDP, 53)
WEB_CLOSE = [(TCP, 5003), (TCP, 5002), (TCP, 5001)]


@pytest.fixture
def multi() -> Engine:
    return Engine(loads(MULTI))


def web(engine: Engine) -> int:
    return next(i for i, d in enumerate(engine.config.doors) if d.name == "web")


def test_a_grant_of_one_port_admits_that_port_only(multi: Engine) -> None:
    done = multi.grant(A, web(multi), 1.0, [P22])
    assert isinstance(done, Granted) and done.steps == (P22,) and not done.renewed
    assert send(multi, A, TCP, 22, 2.0) == (Verdict.ACCEPT, Reason.GRANTED, ())
    assert send(multi, A, TCP, 80, 2.0) == (Verdict.DROP, Reason.UNAUTHORISED, ())
    assert send(multi, A, UDP, 53, 2.0) == (Verdict.DROP, Reason.UNAUTHORISED, ())
    assert send(multi, B, TCP, 22, 2.0)[0] is Verdict.DROP
    assert [(a, d, str(s)) for a, d, s, _ in multi.grants()] == [("203.0.113.10", "web", "22:tcp")]


def test_a_grant_keeps_the_doors_order_and_leaves_out_what_the_door_does_not_open(
        multi: Engine) -> None:
    done = multi.grant(A, web(multi), 1.0, [P53, Port(TCP, 443), P22])
    assert isinstance(done, Granted) and done.steps == (P22, P53)
    with pytest.raises(ValueError, match="web opens none of"):
        multi.grant(A, web(multi), 1.0, [Port(TCP, 443)])


def test_a_second_request_adds_its_port_and_each_port_expires_on_its_own(multi: Engine) -> None:
    multi.grant(A, web(multi), 0.0, [P22])
    again = multi.grant(A, web(multi), 10.0, [P80])
    assert isinstance(again, Granted) and again.renewed and again.steps == (P80,)
    assert send(multi, A, TCP, 22, 11.0)[0] is Verdict.ACCEPT
    assert send(multi, A, TCP, 80, 11.0)[0] is Verdict.ACCEPT
    assert multi.tick(29.0) == []
    revoked = multi.tick(30.0)
    assert [(r.door.name, r.cause, r.steps) for r in revoked] == [("web", "expired", (P22,))]
    assert send(multi, A, TCP, 22, 30.5)[1] is Reason.UNAUTHORISED
    assert send(multi, A, TCP, 80, 30.5)[0] is Verdict.ACCEPT
    assert [r.steps for r in multi.tick(40.0)] == [(P80,)]
    assert list(multi.grants()) == []


def test_a_request_may_shorten_a_grant_never_lengthen_it(multi: Engine) -> None:
    short = multi.grant(A, web(multi), 0.0, [P22], open_for=5)
    long = multi.grant(B, web(multi), 0.0, [P22], open_for=10_000)
    default = multi.grant(A6, web(multi), 0.0, [P22], open_for=0)
    assert isinstance(short, Granted) and short.expires == 5.0
    assert isinstance(long, Granted) and long.expires == 30.0
    assert isinstance(default, Granted) and default.expires == 30.0
    assert send(multi, A, TCP, 22, 6.0)[0] is Verdict.DROP


def test_a_knock_sequence_grants_all_of_its_doors_ports_and_a_close_revokes_what_is_open(
        multi: Engine) -> None:
    results = knock(multi, A, [(TCP, 5001), (TCP, 5002), (TCP, 5003)])
    granted = [e for e in results[-1][2] if isinstance(e, Granted)]
    assert [g.steps for g in granted] == [(P22, P80, P53)]
    assert all(send(multi, A, *s, 1.0)[0] is Verdict.ACCEPT for s in ((TCP, 22), (TCP, 80), (UDP, 53)))
    other = Engine(loads(MULTI))
    other.grant(A, web(other), 0.0, [P80])
    last = knock(other, A, WEB_CLOSE, start=1.0)[-1]
    assert last[1] is Reason.CLOSED
    assert [(r.cause, r.steps) for r in last[2] if isinstance(r, Revoked)] == [("closed", (P80,))]
    assert send(other, A, TCP, 80, 2.0)[0] is Verdict.DROP


def test_restore_grant_restores_the_ports_found(multi: Engine) -> None:
    assert multi.restore_grant("203.0.113.10", "web", 12.0, [P80])
    assert not multi.restore_grant("203.0.113.10", "web", 12.0, [Port(TCP, 443)])
    assert send(multi, A, TCP, 80, 1.0)[0] is Verdict.ACCEPT
    assert send(multi, A, TCP, 22, 1.0)[1] is Reason.UNAUTHORISED
    assert multi.restore_grant("203.0.113.20", "web", 12.0)  # no port named: the whole door
    assert {str(s) for a, _, s, _ in multi.grants() if a == "203.0.113.20"} == {
        "22:tcp", "80:tcp", "53:udp"}
