"""[cluster]: what the store says is read strictly (issue 14, item 6) and workers are
warm before they take knocks (item 8), against a real redis-server on loopback (the
``store`` fixture of tests/unit/test_cluster.py)."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from gatekeeper.config import ConfigError
from gatekeeper.config.load import loads
from gatekeeper.engine import Engine, Granted, Reason, Verdict
from gatekeeper.lab.cluster import free_port, start_redis
from gatekeeper.model import TCP
from tests.fixtures.cluster import (
    GW,
    SSH,
    A,
    B,
    Box,
    Store,
    config_text,
    running_store,
    wait_until,
)
from tests.fixtures.fakes import FakeGrants


@pytest.fixture
def store() -> Iterator[Store]:
    yield from running_store()

# -- what the store says is checked (issue 14, item 6) ------------------------------------

# Messages on the grants channel that no gateway sends: each is ignored and counted, and the
# subscriber keeps its session (no reconnection, no resync).
BAD_MESSAGES = [
    "g|x|203.0.113.30|ssh|\u00b2\u00b3|22:tcp",  # "²³".isdigit() is true, int() raises
    "g|x|203.0.113.30|ssh|\u0663\u0660|22:tcp",  # Arabic-Indic digits: int() takes them
    "g|x|203.0.113.30|ssh|-5|22:tcp",
    "g|x|203.0.113.30|ssh|0|22:tcp",
    "g|x|203.0.113.30|ssh||22:tcp",
    "g|x|203.0.113.30|ssh|" + "9" * 5000 + "|22:tcp",  # int() refuses over 4300 digits
    "g|x|203.0.113.300|ssh|1000|22:tcp",
    "g|x|fe80::1%eth0|ssh|1000|22:tcp",  # a scoped address is no grant
    "g|x|203.0.113.30|ssh|1000",
    "g|x|203.0.113.30|ssh|1000|22:tcp|more",
    "r|x|203.0.113.30",
    "r|x|203.0.113.30|ssh|more",
    "x|x|203.0.113.30|ssh",
    "",
]


def mirror_of(store: Store, node: str = "two", doors: str = "") -> tuple[Any, FakeGrants, list[Any]]:
    from gatekeeper.cluster.mirror import Mirror

    sets, notes = FakeGrants(), []
    mirror = Mirror(loads(config_text(store.url, doors=doors), f"{node}.toml"), node, sets,
                    notes.append)
    return mirror, sets, notes


def test_mirror_ignores_and_counts_bad_messages_and_keeps_its_session(store: Store) -> None:
    mirror, sets, notes = mirror_of(store)
    mirror.start()
    try:
        assert wait_until(lambda: mirror.up)
        r = store.client()
        raw = redis.Redis(port=store.port, socket_timeout=2)  # bytes as they are
        for data in BAD_MESSAGES:
            r.publish("t:grants", data)
        raw.publish("t:grants", b"g|x|203.0.113.30|ssh|1000|22:tcp\xff\xfe")  # not UTF-8
        r.publish("t:grants", "g|x|203.0.113.31|ssh|1000|22:tcp")  # a good one, after them
        assert wait_until(lambda: ("203.0.113.31", "ssh") in sets.entries)
        assert list(sets.entries) == [("203.0.113.31", "ssh")], "nothing of the bad ones"
        status = mirror.status()
        assert status["bad_messages"] == len(BAD_MESSAGES) + 1
        assert mirror.resyncs == 1 and mirror.up, "the session was kept: no reconnection"
        assert len(notes) == 1
    finally:
        mirror.stop()


def test_store_durations_are_clamped_to_the_doors_open_for(store: Store) -> None:
    """A grant key or message saying 3,000,000 s for a 30 s door grants 30 s, wherever it
    is read: the mirror's channel, its resync scan, a worker's lookup."""
    r = store.client()
    r.set("t:{203.0.113.40}:g:ssh:22:tcp", "1", px=3_000_000_000)  # found by the resync
    r.set("t:{203.0.113.41}:g:ssh:22:tcp", "1")  # no expiry at all: no grant (and counted)
    mirror, sets, notes = mirror_of(store)
    mirror.start()
    try:
        assert wait_until(lambda: ("203.0.113.40", "ssh") in sets.entries and mirror.up)
        assert sets.entries[("203.0.113.40", "ssh")] == {"22:tcp": 30.0}
        assert ("203.0.113.41", "ssh") not in sets.entries
        r.publish("t:grants", "g|x|203.0.113.42|ssh|3000000000|22:tcp,2222:tcp")
        assert wait_until(lambda: ("203.0.113.42", "ssh") in sets.entries)
        assert sets.entries[("203.0.113.42", "ssh")] == {"22:tcp": 30.0, "2222:tcp": 30.0}
        assert all(note[3] <= 30.0 for note in notes)
        assert mirror.status()["bad_messages"] == 1
    finally:
        mirror.stop()
    one = Box(store.url, "one")
    src = ipaddress.ip_address("203.0.113.40").packed
    assert one.send(src, TCP, 22, 100.0)[:2] == (Verdict.ACCEPT, Reason.GRANTED)
    (grant,) = [e for e in one.applied if isinstance(e, Granted)]
    assert grant.expires - 100.0 <= 30.0
    no_ttl = ipaddress.ip_address("203.0.113.41").packed
    assert one.send(no_ttl, TCP, 22, 101.0)[:2] == (Verdict.DROP, Reason.UNAUTHORISED)
    assert one.gate.bad == 1 and one.gate.snapshot()["bad"] == 1, "counted for the metric"


SECRET = "s3cr%40t"  # as written in the URL (percent-encoded "s3cr@t")


@pytest.mark.parametrize("form", ["userinfo", "user", "query", "sentinel"])
def test_store_passwords_are_never_printed(store: Store, form: str,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """A wrong password in any of its forms: the store refuses, and neither the log
    lines, nor the status, nor an error, nor repr() show it (raw or decoded)."""
    from gatekeeper.cluster.gate import ClusterGate
    from gatekeeper.cluster.mirror import Mirror

    secure = Store(password="right")
    sentinel = None
    try:
        url = {"userinfo": f"redis://:{SECRET}@127.0.0.1:{secure.port}/0",
               "user": f"redis://gk:{SECRET}@127.0.0.1:{secure.port}/0",
               "query": f"redis://127.0.0.1:{secure.port}/0?password={SECRET}",
               "sentinel": ""}[form]
        text = config_text(url)
        if form == "sentinel":
            port = free_port()
            sentinel = start_redis(None, "", "127.0.0.1", port,
                                   sentinel_of=("gk", "127.0.0.1", secure.port))
            text = text.replace('redis = ""', f'sentinels = ["127.0.0.1:{port}"]\n'
                                f'service = "gk"\npassword = "{SECRET}"')
        config = loads(text, "gk.toml")
        assert config.cluster is not None
        printed = [repr(config.cluster)]
        gate = ClusterGate(config, Engine(config), "one", lambda events, now: None)
        with caplog.at_level("DEBUG", logger="gatekeeper"):
            assert gate.decide(A, GW, *SSH[0], 0, 1.0)[:2] == (Verdict.DROP, Reason.ERROR)
            mirror = Mirror(config, "two", FakeGrants(), lambda note: None)
            mirror.start()
            try:
                assert wait_until(lambda: mirror.status()["error"] != "not connected yet")
                printed.append(str(mirror.status()))
            finally:
                mirror.stop()
        assert not gate.up and gate.errors >= 1
        printed += [record.getMessage() for record in caplog.records]
        assert any("failed" in line for line in printed), printed
        for line in printed:
            assert "s3cr" not in line, line
    finally:
        secure.kill()
        if sentinel is not None:
            sentinel.kill()
            sentinel.wait(10)


@pytest.mark.parametrize("url", [
    f"http://:{SECRET}@192.0.2.5:6379/0",
    f"http://192.0.2.5:6379/0?db=1&password={SECRET}",
    f"{SECRET}@192.0.2.5:6379",
    "redis://:s3cr/t@192.0.2.5:6379/0",  # a "/" not encoded: redis-py would print "s3cr"
])
def test_a_bad_store_url_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads(config_text(url), "gk.toml")
    assert "cluster.redis" in str(info.value) and "s3cr" not in str(info.value), info.value


# -- warm workers (issue 14, item 8) -------------------------------------------------------


def command_stats(r: Any) -> dict[str, int]:
    """What the store has done so far: connections accepted, EVALSHA and SCRIPT calls,
    and NOSCRIPT answers (a script the store did not hold)."""
    stats, commands, errors = r.info("stats"), r.info("commandstats"), r.info("errorstats")
    return {"connections": int(stats["total_connections_received"]),
            "evalsha": int(commands.get("cmdstat_evalsha", {}).get("calls", 0)),
            "script": int(commands.get("cmdstat_script", {}).get("calls", 0)),
            "noscript": int(errors.get("errorstat_NOSCRIPT", {}).get("count", 0))}


def test_a_warmed_gate_takes_its_first_knock_in_one_command(store: Store) -> None:
    """A worker connects and loads its scripts before it reports ready: its first knock is
    one EVALSHA on a connection already open (a cold one first connected, was told
    NOSCRIPT, loaded the script and ran it again: late, and overtaken by the next knock
    through another gateway)."""
    one = Box(store.url, "one")
    r = store.client()
    assert one.gate.warm(1.0) is True and one.gate.up
    before = command_stats(r)
    assert one.send(A, *SSH[0], 1.0)[1] is Reason.KNOCK
    after = command_stats(r)
    assert after["connections"] == before["connections"], "no new connection"
    assert after["evalsha"] == before["evalsha"] + 1 and after["script"] == before["script"]
    assert after["noscript"] == before["noscript"] == 0


class Cutter:
    """A TCP relay to the store whose connections can be cut as a restarted store host or a
    failover cuts them: no FIN first, the next request on a cut connection gets a reset."""

    def __init__(self, port: int) -> None:
        import socket
        import threading

        self.upstream = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pairs: list[list[Any]] = []  # [client, upstream, cut]
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cut(self) -> None:
        for pair in self.pairs:
            pair[2] = True

    def close(self) -> None:
        self.stopping = True
        self.thread.join(5)
        self.listener.close()
        for client, upstream, _ in self.pairs:
            client.close()
            upstream.close()

    def _serve(self) -> None:
        import select
        import socket
        import struct

        self.listener.settimeout(0.05)
        deadline = time.monotonic() + 120
        while not self.stopping and time.monotonic() < deadline:
            try:
                client, _ = self.listener.accept()
                self.pairs.append([client, socket.create_connection(("127.0.0.1", self.upstream)),
                                   False])
            except TimeoutError:
                pass
            live = [p for p in self.pairs if p[0].fileno() >= 0]
            ready, _, _ = select.select([s for p in live for s in p[:2]], [], [], 0.01)
            for pair in live:
                client, upstream, cut = pair
                if client in ready:
                    if cut:  # unread data on close: the kernel answers with a reset
                        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                          struct.pack("ii", 1, 0))
                        client.close()
                        upstream.close()
                        continue
                    data = client.recv(65536)
                    if data:
                        upstream.sendall(data)
                if upstream in ready and upstream.fileno() >= 0:
                    data = upstream.recv(65536)
                    if data:
                        client.sendall(data)


def test_a_dead_connection_is_retried_at_once_before_the_breaker_opens(store: Store) -> None:
    relay = Cutter(store.port)
    try:
        one = Box(relay.url, "one")
        assert one.send(A, *SSH[0], 1.0)[1] is Reason.KNOCK  # connected
        relay.cut()  # the pooled connection is dead, and nothing says so until it is used
        assert one.send(A, *SSH[1], 2.0)[1] is Reason.KNOCK, "retried on a new connection"
        assert one.gate.errors == 0 and one.gate.up
        relay.cut()
        assert one.send(B, TCP, 22, 3.0)[:2] == (Verdict.DROP, Reason.UNAUTHORISED)
        assert one.gate.errors == 0 and one.gate.lookups == 1, "a lookup is retried too"
        _, reason, _ = one.send(A, *SSH[2], 4.0)
        assert reason is Reason.COMPLETED
    finally:
        relay.close()


def test_a_worker_warms_up_again_after_the_store_restarts_before_its_next_knock(
        store: Store) -> None:
    """An idle worker finds a restarted store (no scripts, a dead connection) on its own
    tick, and is warm again before a knock comes."""
    one = Box(store.url, "one")
    assert one.gate.warm(1.0)
    store.kill()
    store.start()  # a new store: no scripts, the pooled connection is dead
    one.gate.tick(2.0)
    r = store.client()
    assert r.script_exists(*one.gate.shas) == [True] * len(one.gate.shas)
    before = command_stats(r)
    assert one.send(A, *SSH[0], 2.1)[1] is Reason.KNOCK
    after = command_stats(r)
    assert after["evalsha"] == before["evalsha"] + 1 and after["noscript"] == 0
    assert after["connections"] == before["connections"] and one.gate.errors == 0


def test_a_worker_starting_with_the_store_down_starts_closed_and_warms_when_it_returns(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    """Warming up is bounded by timeout_ms: a worker whose store is down reports ready all
    the same, with the breaker open (knocks take their door's cluster_fallback, logged),
    and warms up on its tick once the store answers; only then do knocks reach it."""
    store.kill()
    one = Box(store.url, "one")
    with caplog.at_level("ERROR", logger="gatekeeper"):
        t0 = time.monotonic()
        assert one.gate.warm(1.0) is False
        assert time.monotonic() - t0 < 5
    assert not one.gate.up and one.gate.errors == 1
    assert any("cluster: the store" in r.getMessage() for r in caplog.records)
    assert one.send(A, *SSH[0], 1.1)[:2] == (Verdict.DROP, Reason.ERROR)  # "closed" door
    store.start()
    one.gate.tick(1.5)  # the breaker is still open: the store is not asked yet
    assert not one.gate.up
    one.gate.tick(2.5)
    assert one.gate.up
    r = store.client()
    assert r.script_exists(*one.gate.shas) == [True] * len(one.gate.shas)
    for i, step in enumerate(SSH):
        _, reason, _ = one.send(A, *step, 3.0 + i / 10)
    assert reason is Reason.COMPLETED


def test_bad_messages_of_the_mirror_and_the_workers_reach_one_metric(store: Store) -> None:
    from gatekeeper.metrics import GatekeeperCollector, Stats

    one = Box(store.url, "one")
    store.client().set("t:{203.0.113.41}:g:ssh:22:tcp", "1")  # no expiry: a bad answer
    one.send(ipaddress.ip_address("203.0.113.41").packed, TCP, 22, 1.0)
    stats = Stats()
    stats.worker_snapshot(100, {"counts": [0] * len(Reason), "hist": one.gate.hist,
                                "hist_sum_ns": 0, "knocks": {}, "cluster": one.gate.snapshot()})
    store.client().delete("t:{203.0.113.41}:g:ssh:22:tcp")  # else the mirror's resync counts it too
    mirror, _, _ = mirror_of(store)
    mirror.stats = stats
    mirror.start()
    try:
        assert wait_until(lambda: mirror.up)
        store.client().publish("t:grants", "g|x|203.0.113.30|ssh|\u00b2|22:tcp")
        assert wait_until(lambda: stats.cluster_bad_messages == 1)
    finally:
        mirror.stop()
    collector = GatekeeperCollector(stats, dict, lambda: 1, lambda: ["ssh"])
    (family,) = [m for m in collector.collect() if m.name == "gatekeeper_cluster_bad_messages"]
    assert [s.value for s in family.samples if s.name.endswith("_total")] == [2.0]
