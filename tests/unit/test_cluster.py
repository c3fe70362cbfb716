"""[cluster]: config errors, and the knock script, the worker's gate and the mirror
against a real redis-server on loopback (started and stopped by these tests)."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gatekeeper.config import ConfigError
from gatekeeper.config.load import loads
from gatekeeper.engine import Engine, Granted, Knocked, Outcome, Reason, Revoked, Verdict
from gatekeeper.lab.cluster import free_port, start_redis
from gatekeeper.model import TCP, Port
from tests.fixtures.cluster import (
    A6,
    DOORS,
    GW,
    SSH,
    SSH_CLOSE,
    SYN,
    WEB,
    A,
    B,
    Box,
    Store,
    config_text,
    next_message,
    running_store,
    spa_door,
    wait_until,
)
from tests.fixtures.fakes import FakeGrants

P22, P80, P2222 = Port(TCP, 22), Port(TCP, 80), Port(TCP, 2222)

@pytest.fixture
def store() -> Iterator[Store]:
    yield from running_store()


# -- config ---------------------------------------------------------------------------


@pytest.mark.parametrize(("cluster", "message"), [
    ("", "cluster.redis: is required"),
    ('redis = "http://example"', "cluster.redis: 'http://example': expected a URL"),
    ('sentinels = ["192.0.2.1:26379"]', "cluster.service: is required with sentinels"),
    ('sentinels = ["192.0.2.1"]\nservice = "m"', "cluster.sentinels[0]: '192.0.2.1': expected HOST:PORT"),
    ('redis = "redis://x"\nsentinels = ["a:1"]\nservice = "m"', "cluster.sentinels: give either"),
    ('redis = "redis://x"\nservice = "m"', "cluster.service: only with sentinels"),
    ('redis = "redis://x"\ntimeout_ms = 0', "cluster.timeout_ms: must be between 1 and 10000"),
    ('redis = "redis://x"\nprefix = "a b"', "cluster.prefix: 'a b'"),
    ('redis = "redis://x"\nnodes = 2', "cluster.nodes: unknown key"),
])
def test_cluster_config_errors_name_the_key(cluster: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads(f"[cluster]\n{cluster}\n" + DOORS.replace("{timeout}", "5"), "gk.toml")
    text = str(info.value)
    assert "\n" not in text and text.startswith("gk.toml: ") and message in text, text


def test_cluster_fallback_must_be_closed_or_local() -> None:
    with pytest.raises(ConfigError, match=r"door\[0\] \(ssh\)\.cluster_fallback: 'open'"):
        loads(DOORS.replace("{timeout}", "5").replace("open_for = 30", 'open_for = 30\n'
                                                       'cluster_fallback = "open"', 1))


def test_cluster_defaults_and_password_never_printed() -> None:
    cfg = loads(config_text("redis://:s3cret@192.0.2.5:6379/2"))
    assert cfg.cluster is not None and cfg.cluster.timeout_ms == 200
    assert "s3cret" not in repr(cfg.cluster)
    assert [d.cluster_fallback for d in cfg.doors] == ["closed", "local"]
    assert loads(DOORS.replace("{timeout}", "5")).cluster is None
    sentinel = loads('[cluster]\nsentinels = ["192.0.2.1:26379", "[2001:db8::1]:26379"]\n'
                     'service = "gk"\n' + DOORS.replace("{timeout}", "5"))
    assert sentinel.cluster is not None
    assert sentinel.cluster.sentinels == (("192.0.2.1", 26379), ("2001:db8::1", 26379))


# -- the knock script and the gate ----------------------------------------------------


def test_knocks_alternating_between_gateways_complete_and_grant(store: Store) -> None:
    one, two = Box(store.url, "one"), Box(store.url, "two")
    r = store.client()
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("t:grants")
    assert one.send(A, *SSH[0], 100.0)[1] is Reason.KNOCK
    assert two.send(A, *SSH[1], 100.1)[1] is Reason.KNOCK
    # a retransmit of the second knock, through the first box, keeps progress
    assert one.send(A, *SSH[1], 100.2)[1] is Reason.DUPLICATE
    verdict, reason, events = one.send(A, *SSH[2], 100.3)
    assert (verdict, reason) == (Verdict.DROP, Reason.COMPLETED)
    granted = [e for e in events if isinstance(e, Granted)]
    assert [(g.door.name, g.address) for g in granted] == [("ssh", "203.0.113.10")]
    # a knock's completion grants every port of the door: a key each
    for port in ("22:tcp", "2222:tcp"):
        assert 29_000 < r.pttl(f"t:{{203.0.113.10}}:g:ssh:{port}") <= 30_000
    assert r.keys("t:*:p:*") == []  # progress gone once complete
    assert next_message(pubsub) == "g|one|203.0.113.10|ssh|30000|22:tcp,2222:tcp"
    # the box that completed it admits at once; another source is still shut out
    assert one.send(A, TCP, 22, 100.4)[:2] == (Verdict.ACCEPT, Reason.GRANTED)
    assert one.send(B, TCP, 22, 100.4)[:2] == (Verdict.DROP, Reason.UNAUTHORISED)


def test_other_gateway_admits_a_grant_made_elsewhere_before_any_mirror(store: Store) -> None:
    one, two = Box(store.url, "one"), Box(store.url, "two")
    for i, step in enumerate(SSH):
        one.send(A6, *step, 10.0 + i)
    assert two.send(A6, TCP, 22, 13.0)[:2] == (Verdict.ACCEPT, Reason.GRANTED)
    adopted = [e for e in two.applied if isinstance(e, Granted)]
    assert len(adopted) == 1 and adopted[0].address == "2001:db8:1::10"
    assert adopted[0].steps == (P22,), "a lookup adopts the packet's own port"
    assert 25 < adopted[0].expires - 13.0 <= 30
    # other ports and other sources stay shut on the second box
    assert two.send(A6, TCP, 8443, 13.1)[:2] == (Verdict.DROP, Reason.UNAUTHORISED)
    assert two.send(B, TCP, 22, 13.1)[:2] == (Verdict.DROP, Reason.UNAUTHORISED)
    # the door's other port was granted too (a knock grants the whole door): its own lookup
    assert two.send(A6, TCP, 2222, 14.0)[:2] == (Verdict.ACCEPT, Reason.GRANTED)
    assert [e.steps for e in two.applied if isinstance(e, Granted)] == [(P22,), (P2222,)]


def test_a_gateway_doors_grant_is_not_looked_up_for_a_host_behind_the_gateway(store: Store) -> None:
    """The ssh door has no host: another gateway's lookup admits its grant on the gateway,
    never for the same port of a host that another door guards behind it."""
    rdp = ('\n[[door]]\nname = "rdp"\nsequence = ["4001", "4002"]\nopens = ["3389:tcp"]\n'
           'host = "198.51.100.10"\n')
    one, two = Box(store.url, "one", doors=rdp), Box(store.url, "two", doors=rdp)
    server = ipaddress.ip_address("198.51.100.10").packed
    for i, step in enumerate(SSH):
        one.send(A, *step, 10.0 + i)
    lookups = two.gate.lookups
    assert two.send(A, TCP, 22, 13.0, dst=server)[:2] == (Verdict.DROP, Reason.UNAUTHORISED)
    assert two.gate.lookups == lookups, "no door opens 22 on that host: nothing to ask the store"
    assert two.send(A, TCP, 22, 13.1)[:2] == (Verdict.ACCEPT, Reason.GRANTED)


def test_spa_grant_of_one_port_is_that_port_alone_on_every_gateway(store: Store,
                                                                   tmp_path: Path) -> None:
    doors = spa_door(tmp_path)
    one, two = Box(store.url, "one", doors=doors), Box(store.url, "two", doors=doors)
    r = store.client()
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("t:grants")
    one.spa_grant(A, [P22], 1.0)  # an SPA packet asking for tcp/22 only
    assert next_message(pubsub) == "g|one|203.0.113.10|spa|30000|22:tcp"
    assert r.keys("t:{203.0.113.10}:g:*") == ["t:{203.0.113.10}:g:spa:22:tcp"]
    # the other gateway: 80 stays shut (the store holds no grant of it), 22 is admitted
    assert two.send(A, TCP, 80, 2.0)[:2] == (Verdict.DROP, Reason.UNAUTHORISED)
    assert two.send(A, TCP, 22, 3.0)[:2] == (Verdict.ACCEPT, Reason.GRANTED)
    assert two.adopted() == [("203.0.113.10", "spa", (P22,))]
    lookups = two.gate.lookups
    assert two.send(A, TCP, 80, 4.0)[:2] == (Verdict.DROP, Reason.UNAUTHORISED)
    assert two.gate.lookups == lookups + 1, "80 was asked of the store, and refused"
    # a second request, for 80 with a shorter time: 22 keeps its key and its own expiry
    one.spa_grant(A, [P80], 5.0, open_for=5)
    assert next_message(pubsub) == "g|one|203.0.113.10|spa|5000|80:tcp"
    assert 25_000 < r.pttl("t:{203.0.113.10}:g:spa:22:tcp") <= 30_000
    assert 0 < r.pttl("t:{203.0.113.10}:g:spa:80:tcp") <= 5_000
    three = Box(store.url, "three", doors=doors)
    assert three.send(A, TCP, 80, 6.0)[:2] == (Verdict.ACCEPT, Reason.GRANTED)
    assert three.send(A, TCP, 22, 6.1)[:2] == (Verdict.ACCEPT, Reason.GRANTED)
    assert [ports for _, _, ports in three.adopted()] == [(P80,), (P22,)]
    expires = [e.expires for e in three.applied if isinstance(e, Granted)]
    assert 4 < expires[0] - 6.0 <= 5 and 25 < expires[1] - 6.1 <= 30
    # another source, either port: shut
    assert three.send(B, TCP, 22, 6.2)[:2] == (Verdict.DROP, Reason.UNAUTHORISED)


def test_close_through_a_gateway_holding_one_port_revokes_every_port(store: Store) -> None:
    one, two = Box(store.url, "one"), Box(store.url, "two")
    for i, step in enumerate(SSH):
        one.send(A, *step, float(i))
    assert two.send(A, TCP, 22, 4.0)[0] is Verdict.ACCEPT  # two holds 22 alone (adopted)
    for i, step in enumerate(SSH_CLOSE):
        _, reason, events = two.send(A, *step, 5.0 + i)
    assert reason is Reason.CLOSED
    revoked = [e for e in events if isinstance(e, Revoked)]
    assert [e.steps for e in revoked] == [(P22, P2222)], "the kernel set loses both ports"
    assert store.client().keys("t:{203.0.113.10}:g:*") == []
    assert two.send(A, TCP, 22, 9.0)[:2] == (Verdict.DROP, Reason.UNAUTHORISED)


def test_wrong_knock_resets_timeout_expires_and_sources_are_apart(store: Store) -> None:
    one, two = Box(store.url, "one", timeout=0.3), Box(store.url, "two", timeout=0.3)
    one.send(A, *SSH[0], 1.0)
    two.send(B, *SSH[0], 1.0)
    # a knock of another door, out of order, resets A's ssh progress (wrong_knock = reset)
    _, reason, events = two.send(A, *WEB[1], 1.1)
    assert Knocked("ssh", Outcome.RESET) in events and reason is Reason.WRONG
    assert one.send(A, *SSH[1], 1.2)[1] is Reason.WRONG
    # B's progress was its own; it expires by the store's clock
    assert one.send(B, *SSH[1], 1.2)[1] is Reason.KNOCK
    time.sleep(0.4)
    assert two.send(B, *SSH[2], 1.3)[1] is Reason.WRONG
    assert store.client().keys("t:*") == []


def test_close_sequence_revokes_everywhere_and_publishes(store: Store) -> None:
    one, two = Box(store.url, "one"), Box(store.url, "two")
    for i, step in enumerate(SSH):
        one.send(A, *step, float(i))
    r = store.client()
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("t:grants")
    for i, step in enumerate(SSH_CLOSE[:-1]):
        two.send(A, *step, 5.0 + i)
    _, reason, events = one.send(A, *SSH_CLOSE[-1], 8.0)
    assert reason is Reason.CLOSED and any(isinstance(e, Revoked) for e in events)
    assert r.keys("t:{203.0.113.10}:g:*") == []
    assert next_message(pubsub) == "r|one|203.0.113.10|ssh"
    assert one.send(A, TCP, 22, 9.0)[:2] == (Verdict.DROP, Reason.UNAUTHORISED)
    # closing again: nothing to close
    for i, step in enumerate(SSH_CLOSE):
        _, reason, events = two.send(A, *step, 10.0 + i)
    assert Knocked("ssh", Outcome.NOTHING_TO_CLOSE) in events


def test_scanner_locked_out_on_its_gateway_gets_no_shared_grant(store: Store) -> None:
    one = Box(store.url, "one")
    for port in range(100, 110):  # more distinct ports than any door needs: a scan
        one.send(A, TCP, port, 1.0)
    assert one.engine.locked_out(A, 1.0)
    for i, step in enumerate(SSH):
        _, reason, events = one.send(A, *step, 2.0 + i / 10)
    assert reason is Reason.SCANNER and Knocked("ssh", Outcome.LOCKED) in events
    assert store.client().keys("t:{203.0.113.10}:g:*") == []


def test_a_brute_forcer_through_the_store_is_locked_out_on_its_gateway(store: Store) -> None:
    one = Box(store.url, "one")
    for i in range(11):  # the right first step, then a wrong knock port: a reset each
        one.send(A, *SSH[0], 1.0 + i / 10)
        one.send(A, *SSH_CLOSE[0], 1.05 + i / 10)
    assert one.engine.locked_out(A, 3.0), "failure_limit (10) counts on this gateway"
    for i, step in enumerate(SSH):
        _, reason, events = one.send(A, *step, 3.0 + i / 10)
    assert reason is Reason.LOCKED and Knocked("ssh", Outcome.LOCKED) in events
    assert store.client().keys("t:{203.0.113.10}:g:*") == []


def test_store_down_closed_door_drops_local_door_knocks_alone_and_recovers(store: Store) -> None:
    one = Box(store.url, "one")
    for i, step in enumerate(SSH):
        one.send(A, *step, 1.0 + i / 10)
    assert one.send(A, TCP, 22, 2.0)[0] is Verdict.ACCEPT
    store.kill()
    # knocks of a "closed" door: dropped and counted for nothing, the breaker opens
    t0 = time.monotonic()
    assert one.send(B, *SSH[0], 3.0)[:2] == (Verdict.DROP, Reason.ERROR)
    assert one.gate.errors == 1 and not one.gate.up
    for i, step in enumerate(SSH[1:]):
        assert one.send(B, *step, 3.1 + i / 10)[:2] == (Verdict.DROP, Reason.ERROR)
    assert one.gate.errors == 1, "the open breaker keeps the dead store off the hot path"
    assert time.monotonic() - t0 < 5
    # the grant this box already has still admits; nobody else is let in
    assert one.send(A, TCP, 22, 3.5)[0] is Verdict.ACCEPT
    assert one.send(B, TCP, 22, 3.5)[:2] == (Verdict.DROP, Reason.UNAUTHORISED)
    # a "local" door knocks on this box alone meanwhile
    one.send(B, *WEB[0], 3.6)
    _, reason, _ = one.send(B, *WEB[1], 3.7)
    assert reason is Reason.COMPLETED and one.gate.fallbacks == {"closed": 3, "local": 2}
    store.start()
    # after the breaker's pause the store is asked again, and knocks are shared again
    for i, step in enumerate(SSH):
        _, reason, _ = one.send(B, *step, 5.0 + i / 10)
    assert reason is Reason.COMPLETED and one.gate.up
    assert store.client().exists("t:{203.0.113.20}:g:ssh:22:tcp") == 1


def test_unauthorised_lookups_are_cached_and_rate_limited(store: Store) -> None:
    one = Box(store.url, "one")
    for _ in range(5):
        assert one.send(B, TCP, 22, 1.0)[1] is Reason.UNAUTHORISED
    assert one.gate.lookups == 1, "a negative answer is cached for a moment"
    spoofed = [ipaddress.ip_address(0xCB007100 + i).packed for i in range(5000)]
    for src in spoofed:
        one.send(src, TCP, 22, 2.0)
    assert one.gate.lookups <= 1 + 2001, "a flood of new sources asks at most the rate limit"


def test_replay_caches_are_shared_and_fail_by_the_doors_fallback(store: Store) -> None:
    from gatekeeper.engine.special import shared_admits
    from gatekeeper.spa.replay import Admission, Recorded, ReplayCache

    one, two = Box(store.url, "one"), Box(store.url, "two")
    caches = {}
    for box in (one, two):  # each gateway's replay caches, as its SPA doors hold them
        caches[box] = {"ssh": ReplayCache(), "web": ReplayCache()}

    def admit(box: Box, door: str, key: bytes, now: float, ttl: float) -> Admission:
        """What the worker does with a message new to a door's cache: ask the store."""
        seen = caches[box][door].record(key, now, ttl)
        if not isinstance(seen, Recorded):
            return seen
        config_door = next(d for d in box.config.doors if d.name == door)
        fresh = box.gate.replay_fresh(config_door, key, ttl)
        return Admission.NEW if shared_admits(config_door, fresh) else Admission.REPLAY

    assert admit(one, "ssh", b"captured", 1.0, 240) is Admission.NEW
    # the same packet replayed at the other gateway: seen there already
    assert admit(two, "ssh", b"captured", 1.0, 240) is Admission.REPLAY
    assert admit(two, "ssh", b"fresh", 1.0, 240) is Admission.NEW
    keys = store.client().keys("t:r:ssh:*")
    assert len(keys) == 2 and all(230_000 < store.client().pttl(k) <= 240_000 for k in keys)
    store.kill()
    # store down: a "closed" door admits nothing new, a "local" one trusts its own cache
    assert admit(one, "ssh", b"new while down", 2.0, 240) is Admission.REPLAY
    assert admit(one, "web", b"new while down", 2.0, 240) is Admission.NEW


def test_sentinel_finds_the_master(store: Store) -> None:
    sentinel_port = free_port()
    sentinel = start_redis(None, "", "127.0.0.1", sentinel_port,
                           sentinel_of=("gk", "127.0.0.1", store.port))
    try:
        text = config_text("").replace('redis = ""', f'sentinels = ["127.0.0.1:{sentinel_port}"]\n'
                                       'service = "gk"')
        config = loads(text, "sentinel.toml")
        from gatekeeper.cluster.gate import ClusterGate

        engine = Engine(config)
        gate = ClusterGate(config, engine, "one", lambda events, now: None)
        for i, step in enumerate(SSH):
            _, reason, _ = gate.decide(A, GW, *step, SYN if step[0] == TCP else 0, 1.0 + i)
        assert reason is Reason.COMPLETED
        assert store.client().exists("t:{203.0.113.10}:g:ssh:22:tcp") == 1
    finally:
        sentinel.kill()
        sentinel.wait(10)


# -- the mirror ---------------------------------------------------------------------------


def test_mirror_resyncs_follows_and_reconnects(store: Store) -> None:
    from gatekeeper.cluster.mirror import Mirror

    one = Box(store.url, "one")
    for i, step in enumerate(SSH):  # made before the mirror starts: found by the resync
        one.send(A, *step, float(i))
    sets, notes = FakeGrants(), []
    mirror = Mirror(loads(config_text(store.url), "two.toml"), "two", sets, notes.append)
    mirror.start()
    try:
        assert wait_until(lambda: ("203.0.113.10", "ssh") in sets.entries)
        ports = sets.entries[("203.0.113.10", "ssh")]
        assert set(ports) == {"22:tcp", "2222:tcp"}, "a knock's grant: every port of the door"
        assert all(25 < seconds <= 30 for seconds in ports.values()) and mirror.up
        for i, step in enumerate(SSH):  # made while it listens: mirrored from the channel
            one.send(B, *step, 10.0 + i)
        assert wait_until(lambda: ("203.0.113.20", "ssh") in sets.entries)
        assert ("grant", "203.0.113.20", "ssh", 30.0, ["22:tcp", "2222:tcp"]) in notes
        mine = Box(store.url, "two")  # a grant made by the mirror's own gateway is skipped
        for i, step in enumerate(WEB):
            mine.send(A6, *step, 20.0 + i)
        for i, step in enumerate(SSH_CLOSE):
            one.send(A, *step, 30.0 + i)
        assert wait_until(lambda: ("203.0.113.10", "ssh") not in sets.entries)
        assert ("2001:db8:1::10", "web") not in sets.entries
        store.kill()
        assert wait_until(lambda: not mirror.up)
        assert "no answer" in mirror.status()["error"] or mirror.status()["error"]
        store.start()
        for i, step in enumerate(WEB):  # made while the mirror is still away
            one.send(A, *step, 40.0 + i)
        assert wait_until(lambda: mirror.up and ("203.0.113.10", "web") in sets.entries, 10)
        assert mirror.resyncs >= 2
    finally:
        mirror.stop()


def test_mirror_writes_exactly_the_ports_granted_live_and_on_resync(store: Store,
                                                                     tmp_path: Path) -> None:
    from gatekeeper.cluster.mirror import Mirror

    doors = spa_door(tmp_path)
    one = Box(store.url, "one", doors=doors)
    one.spa_grant(A, [P22], 1.0)  # made before the mirror starts: found by the resync
    config = loads(config_text(store.url, doors=doors), "two.toml")
    sets, notes = FakeGrants(), []
    mirror = Mirror(config, "two", sets, notes.append)
    mirror.start()
    try:
        assert wait_until(lambda: ("203.0.113.10", "spa") in sets.entries and mirror.up)
        assert list(sets.entries[("203.0.113.10", "spa")]) == ["22:tcp"]
        assert [n[4] for n in notes] == [["22:tcp"]]
        # a second request, for 80 alone and shorter: written alone, 22 keeps its time
        one.spa_grant(A, [P80], 2.0, open_for=5)
        assert wait_until(lambda: "80:tcp" in sets.entries[("203.0.113.10", "spa")])
        ports = sets.entries[("203.0.113.10", "spa")]
        assert 25 < ports["22:tcp"] <= 30 and ports["80:tcp"] == 5.0
        assert notes[-1] == ("grant", "203.0.113.10", "spa", 5.0, ["80:tcp"])
    finally:
        mirror.stop()
    # a gateway (re)connecting resyncs each port with its own time left
    again, notes_again = FakeGrants(), []
    mirror = Mirror(config, "three", again, notes_again.append)
    mirror.start()
    try:
        assert wait_until(lambda: len(again.entries.get(("203.0.113.10", "spa"), {})) == 2)
        ports = again.entries[("203.0.113.10", "spa")]
        assert 25 < ports["22:tcp"] <= 30 and 0 < ports["80:tcp"] <= 5
        assert sorted(n[4] for n in notes_again) == [["22:tcp"], ["80:tcp"]]
        # B was never granted: nothing of it anywhere
        assert all(key[0] == "203.0.113.10" for key in again.entries)
    finally:
        mirror.stop()
