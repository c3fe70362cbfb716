"""The pure engine with an injected clock: no kernel, no sockets, microseconds a test."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.config.load import loads
from gatekeeper.engine import Engine, Granted, Knocked, Outcome, Reason, Revoked, Verdict
from gatekeeper.model import ICMP, TCP, UDP, Port
from tests.fixtures.engine import (
    A6,
    ACK,
    CONFIG,
    GW,
    GW6,
    RDP,
    RST,
    SERVER,
    SSH,
    SSH_CLOSE,
    SYN,
    A,
    B,
    knock,
    send,
    ssh_open,
    step_strategy,
)
from tests.fixtures.playbook import play


@pytest.fixture
def engine() -> Engine:
    return Engine(loads(CONFIG, "test.toml"))


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
