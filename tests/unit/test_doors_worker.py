"""SPA, encrypted and one-time doors without a kernel, through the worker: what a grant opens, the
supervisor's grant book, replay caches and the journal. (Config and SpecialDoors: test_doors.py.)"""

from __future__ import annotations

import base64
import ipaddress
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.config.load import loads
from gatekeeper.daemon.control import format_status
from gatekeeper.daemon.grantbook import GrantBook
from gatekeeper.engine import Engine, Granted, Reason, Revoked, Verdict
from gatekeeper.messages import Message
from gatekeeper.model import Config, Door, Port
from gatekeeper.queue.decode import udp_payload
from gatekeeper.queue.worker import Worker
from gatekeeper.spa import fwknop
from gatekeeper.spa import sequence as seqcodec
from gatekeeper.spa.request import Request, encode
from tests.fixtures.doors import (
    CLIENT,
    CLIENT_B,
    GW_B,
    KEYS,
    SEQ_KEY,
    WALL,
    config_text,
    knock_all,
    spa_packet,
    specials,
    udp,
    write_key,
)
from tests.fixtures.fakes import FakeGrants

# -- config -------------------------------------------------------------------------------


# -- the worker ---------------------------------------------------------------------------


def test_udp_payload() -> None:
    assert udp_payload(udp(b"hello")) == b"hello"
    assert udp_payload(udp(b"")) == b""
    assert udp_payload(udp(b"hello")[:-1]) is None
    assert udp_payload(b"\x45" + bytes(30)) is None


def wired(reports: list[dict[str, Any]]) -> Callable[[Message], None]:
    """A worker's report callback that keeps each message as the supervisor reads it."""
    return lambda message: reports.append(message.wire())


def test_worker_grants_from_spa_before_the_verdict_and_counts_stages(cfg: Config) -> None:
    reports: list[dict[str, Any]] = []
    grants = FakeGrants()
    worker = Worker(cfg, grants, wired(reports), clock=lambda: 5.0, wall=lambda: WALL)
    assert not worker.on_packet(udp(spa_packet()), 5.0), "an SPA packet is dropped"
    assert grants.added == [(CLIENT, "spa")]
    assert reports[0]["t"] == "grant" and reports[0]["door"] == "spa"
    assert not worker.on_packet(udp(spa_packet())[:-3], 5.0)  # truncated: never raises
    assert not worker.on_packet(udp(b"junk"), 5.0)
    assert worker.counts[Reason.ERROR] == 0
    snap = worker.snapshot().wire()
    assert snap["spa"] == {"spa": {"ok": 1, "size": 1}} or snap["spa"]["spa"]["ok"] == 1
    # a plain knock still goes through the engine
    for proto, port in ((17, 7000), (6, 8000), (17, 9000)):
        raw = udp(b"", port) if proto == 17 else bytes(dpkt.ip.IP(
            src=CLIENT_B, dst=GW_B, p=6, data=dpkt.tcp.TCP(dport=port, flags=0x02)))
        assert not worker.on_packet(raw, 5.0)
    assert (CLIENT, "ssh") in grants.added


@settings(max_examples=200)
@given(data=st.binary(max_size=200))
def test_worker_never_raises_on_random_packets(data: bytes) -> None:
    text = config_text_static()
    worker = Worker(loads(text, "t.toml"), FakeGrants(), lambda m: None, clock=lambda: 1.0,
                    wall=lambda: WALL)
    for raw in (data, udp(data), udp(data)[: len(data) // 2 + 20]):
        assert not worker.on_packet(raw, 1.0)
    assert worker.counts[Reason.ERROR] == 0


_STATIC: dict[str, str] = {}


def config_text_static() -> str:
    if not _STATIC:
        import tempfile

        where = Path(tempfile.mkdtemp(prefix="gk-doors-"))
        files = {
            "spa": write_key(where / "spa.key", fwknop.format_key_file(KEYS)),
            "seq": write_key(where / "seq.key", f"KEY_BASE64={base64.b64encode(SEQ_KEY).decode()}\n"),
            "once": write_key(where / "once.txt", "1001,1002:udp,1003\n"),
        }
        _STATIC["text"] = config_text(files)
    return _STATIC["text"]


# -- what a grant opens: what the request asked for ---------------------------------------


@pytest.fixture
def wide(files: dict[str, str]) -> Config:
    """The spa door opens 22 and 80, the enc door 8080 and 8443."""
    text = config_text(files).replace('opens = ["22"]', 'opens = ["22", "80"]')
    return loads(text.replace('opens = ["8080"]', 'opens = ["8080", "8443"]'), "t.toml")


def granted_steps(decision: Any) -> list[list[str]]:
    return [[str(s) for s in e.steps] for e in decision[2] if isinstance(e, Granted)]


def is_accepted(engine: Engine, port: int, now: float) -> bool:
    return engine.decide(CLIENT_B, GW_B, 6, port, 0x02, now)[0] is Verdict.ACCEPT


def test_spa_grants_only_the_ports_it_asks_for(wide: Config) -> None:
    engine, doors = specials(wide)
    decision = doors.handle(CLIENT_B, GW_B, 17, 62201, 0, spa_packet(), 10.0, WALL)
    assert granted_steps(decision) == [["22:tcp"]]
    assert is_accepted(engine, 22, 11.0)
    assert engine.decide(CLIENT_B, GW_B, 6, 80, 0x02, 11.0)[:2] == (Verdict.DROP, Reason.UNAUTHORISED)
    # a second packet for the other port adds it; the first keeps its own expiry
    decision = doors.handle(CLIENT_B, GW_B, 17, 62201, 0, spa_packet(access=("tcp", 80)), 20.0, WALL)
    granted = [e for e in decision[2] if isinstance(e, Granted)]  # type: ignore[index]
    assert granted_steps(decision) == [["80:tcp"]] and granted[0].renewed
    assert is_accepted(engine, 22, 21.0) and is_accepted(engine, 80, 21.0)
    assert not is_accepted(engine, 22, 40.5) and is_accepted(engine, 80, 40.5)


def test_spa_asking_for_several_ports_grants_them_all(wide: Config) -> None:
    engine, doors = specials(wide)
    packet = encode(KEYS, Request([("tcp", 80), ("tcp", 22)], CLIENT, WALL))
    decision = doors.handle(CLIENT_B, GW_B, 17, 62201, 0, packet, 10.0, WALL)
    assert granted_steps(decision) == [["22:tcp", "80:tcp"]]
    assert is_accepted(engine, 22, 11.0) and is_accepted(engine, 80, 11.0)


def test_spa_asking_for_one_port_too_many_grants_nothing(wide: Config) -> None:
    engine, doors = specials(wide)
    packet = encode(KEYS, Request([("tcp", 22), ("tcp", 443)], CLIENT, WALL))
    decision = doors.handle(CLIENT_B, GW_B, 17, 62201, 0, packet, 10.0, WALL)
    assert decision is not None and decision[1] is Reason.WRONG and granted_steps(decision) == []
    assert doors.counts == {("spa", "access"): 1} and list(engine.grants()) == []


def test_spa_client_timeout_shortens_the_grant_only(wide: Config) -> None:
    engine, doors = specials(wide)
    for address, timeout, now in ((CLIENT, 5, 10.0), ("203.0.113.20", 3600, 10.0)):
        packet = encode(KEYS, Request([("tcp", 22)], address, WALL, client_timeout=timeout))
        src = ipaddress.ip_address(address).packed
        decision = doors.handle(src, GW_B, 17, 62201, 0, packet, now, WALL)
        granted = [e for e in decision[2] if isinstance(e, Granted)]  # type: ignore[index]
        assert granted[0].expires == now + min(timeout, 30), address
    assert not is_accepted(engine, 22, 15.5)


def test_encrypted_sequence_grants_its_port_only_and_may_shorten(wide: Config) -> None:
    engine, doors = specials(wide)
    decision = knock_all(doors, seqcodec.encode(CLIENT, 8443, 6, 0, WALL, SEQ_KEY), 1.0)
    assert granted_steps(decision) == [["8443:tcp"]]
    assert is_accepted(engine, 8443, 2.0) and not is_accepted(engine, 8080, 2.0)
    decision = knock_all(doors, seqcodec.encode(CLIENT, 8080, 6, 4, WALL, SEQ_KEY), 3.0)
    granted = [e for e in decision[2] if isinstance(e, Granted)]
    assert granted_steps(decision) == [["8080:tcp"]] and granted[0].expires == pytest.approx(3.042 + 4)
    assert is_accepted(engine, 8080, 5.0) and not is_accepted(engine, 8080, 8.0)
    assert is_accepted(engine, 8443, 8.0)


def test_one_time_sequence_grants_the_whole_door(files: dict[str, str]) -> None:
    cfg = loads(config_text(files).replace('opens = ["3389"]', 'opens = ["3389", "3390"]'), "t.toml")
    engine, doors = specials(cfg)
    decision = None
    for i, (proto, port) in enumerate([(6, 1001), (17, 1002), (6, 1003)]):
        decision = doors.handle(CLIENT_B, GW_B, proto, port, 0x02, b"", 1.0 + i, WALL)
    assert granted_steps(decision) == [["3389:tcp", "3390:tcp"]]
    assert is_accepted(engine, 3389, 4.0) and is_accepted(engine, 3390, 4.0)


def test_worker_writes_reports_and_adopts_only_the_granted_ports(wide: Config) -> None:
    reports: list[dict[str, Any]] = []
    grants = FakeGrants()
    worker = Worker(wide, grants, wired(reports), clock=lambda: 5.0, wall=lambda: WALL)
    worker.on_packet(udp(spa_packet()), 5.0)
    assert list(grants.ports) == [(CLIENT, "spa", "22:tcp")]
    assert reports[0]["t"] == "grant" and reports[0]["opens"] == ["22:tcp"]
    # a restarted worker finds that entry in the kernel set: only 22 is admitted
    again = Worker(wide, FakeGrants(), wired(reports), clock=lambda: 6.0, wall=lambda: WALL)
    entries = [(a, d, 29, Port(6, int(p.split(":")[0]))) for a, d, p in grants.ports]
    assert again.adopt(entries) == 1
    assert is_accepted(again.engine, 22, 7.0) and not is_accepted(again.engine, 80, 7.0)
    # and a reload keeps the grant as it is
    again.reload(wide)
    assert is_accepted(again.engine, 22, 7.0) and not is_accepted(again.engine, 80, 7.0)


# -- the supervisor's grant book ------------------------------------------------------------


class Commands:
    def __init__(self) -> None:
        self.ran: list[tuple[str, str]] = []

    def start(self, address: str, door: Door) -> None:
        self.ran.append(("start_command", address))

    def stop(self, address: str, door: Door) -> None:
        self.ran.append(("stop_command", address))


def test_grant_book_logs_what_was_granted_and_ends_with_the_last_port(
        wide: Config, caplog: pytest.LogCaptureFixture) -> None:
    commands = Commands()
    book = GrantBook(wide, commands)  # type: ignore[arg-type]
    caplog.set_level(logging.INFO, "gatekeeper")
    book.granted(CLIENT, "spa", 30.0, 0.0, opens=["22:tcp"])
    book.granted(CLIENT, "spa", 30.0, 10.0, opens=["80:tcp"])
    assert [r.getMessage() for r in caplog.records] == [
        "grant door=spa address=203.0.113.10 open_for=30s opens=22:tcp",
        "grant door=spa address=203.0.113.10 open_for=30s opens=80:tcp renewed"]
    assert commands.ran == [("start_command", CLIENT)]
    assert book.active(11.0) == [(CLIENT, "spa", ("22:tcp", "80:tcp"), 29.0)]
    caplog.clear()
    book.expire(30.0)
    assert [r.getMessage() for r in caplog.records] == [
        "expire door=spa address=203.0.113.10 opens=22:tcp (still open: 80:tcp)"]
    assert book.active(31.0) == [(CLIENT, "spa", ("80:tcp",), 9.0)]
    assert commands.ran == [("start_command", CLIENT)]
    book.expire(40.0)
    assert book.active(40.0) == [] and commands.ran[-1] == ("stop_command", CLIENT)


def test_grant_book_adopts_a_port_and_a_close_ends_the_grant(wide: Config) -> None:
    commands = Commands()
    book = GrantBook(wide, commands)  # type: ignore[arg-type]
    assert book.adopt(CLIENT, "spa", 20, 0.0, "80:tcp")
    assert not book.adopt(CLIENT, "nope", 20, 0.0, "80:tcp")
    assert book.active(1.0) == [(CLIENT, "spa", ("80:tcp",), 19.0)]
    book.revoked(CLIENT, "spa", "closed", opens=["80:tcp"])
    assert book.active(1.0) == [] and commands.ran == [("stop_command", CLIENT)]


def test_status_lists_the_ports_of_each_grant() -> None:
    status = {"version": "x", "uptime": 1.0, "config": "c", "workers": [], "restarts": 0,
              "reloads": {"ok": 0, "refused": 0}, "doors": [], "packets": {},
              "grants": [{"address": CLIENT, "door": "spa", "opens": ["22:tcp"], "remaining": 9.5}]}
    (line,) = [line for line in format_status(status, "control.sock").splitlines() if CLIENT in line]
    assert line.split() == [CLIENT, "spa", "9.5", "s", "left", "22:tcp"]


def test_special_doors_grants_open_the_gateway_never_a_host_behind_it(files: dict[str, str]) -> None:
    """SPA, encrypted and one-time doors without ``host`` open their ports on the gateway;
    the same ports of the host another door guards behind it stay shut."""
    behind = '[[door]]\nname = "fwd"\nsequence = ["4001", "4002"]\nopens = ["9999"]\nhost = "198.51.100.10"\n'
    engine, doors = specials(loads(config_text(files) + behind, "t.toml"))
    server = ipaddress.ip_address("198.51.100.10").packed
    assert doors.handle(CLIENT_B, GW_B, 17, 62201, 0, spa_packet(), 10.0, WALL)[1] is Reason.COMPLETED  # type: ignore[index]
    assert knock_all(doors, seqcodec.encode(CLIENT, 8080, 6, 0, WALL, SEQ_KEY), 11.0)[1] is Reason.COMPLETED
    for i, (proto, port) in enumerate([(6, 1001), (17, 1002), (6, 1003)]):
        decision = doors.handle(CLIENT_B, GW_B, proto, port, 0x02, b"", 12.0 + i, WALL)
    assert decision is not None and decision[1] is Reason.COMPLETED
    for port in (22, 8080, 3389):
        assert engine.decide(CLIENT_B, GW_B, 6, port, 0x02, 20.0)[0] is Verdict.ACCEPT
        assert engine.decide(CLIENT_B, server, 6, port, 0x02, 20.0)[:2] == (Verdict.DROP, Reason.UNAUTHORISED)


def tcp_syn(port: int) -> bytes:
    return bytes(dpkt.ip.IP(src=CLIENT_B, dst=GW_B, p=6, data=dpkt.tcp.TCP(dport=port, flags=0x02)))


def one_time_knocks(worker: Worker, now: float) -> None:
    for proto, port in ((6, 1001), (17, 1002), (6, 1003)):
        assert not worker.on_packet(udp(b"", port) if proto == 17 else tcp_syn(port), now)


def test_worker_marks_a_one_time_line_used_before_it_grants(cfg: Config, files: dict[str, str]) -> None:
    class Recording(FakeGrants):
        """Notes the file's line as it is when the grant goes into the kernel set."""

        def add(self, address: str, door: Door, seconds: float, steps: Any = None) -> int:
            marked.append(Path(files["once"]).read_text().splitlines()[1])
            return super().add(address, door, seconds, steps)

    reports: list[dict[str, Any]] = []
    marked: list[str] = []
    grants = Recording()
    worker = Worker(cfg, grants, wired(reports), clock=lambda: 5.0, wall=lambda: WALL)
    one_time_knocks(worker, 5.0)
    assert grants.added == [(CLIENT, "once")]
    assert marked == ["#used# 1001,1002:udp,1003"], "the line was marked before the grant"
    assert next(r for r in reports if r["t"] == "used")["error"] == ""
    assert worker.on_packet(tcp_syn(3389), 5.1)


def test_worker_grants_nothing_for_a_one_time_line_it_cannot_mark(cfg: Config,
                                                                  files: dict[str, str]) -> None:
    reports: list[dict[str, Any]] = []
    grants = FakeGrants()
    worker = Worker(cfg, grants, wired(reports), clock=lambda: 5.0, wall=lambda: WALL)
    Path(files["once"]).unlink()  # stands in for a file system that refuses the write
    one_time_knocks(worker, 5.0)
    assert grants.added == [], "no grant without the mark"
    used = [r for r in reports if r["t"] == "used"]
    assert len(used) == 1 and "No such file" in used[0]["error"]
    assert not [r for r in reports if r["t"] == "grant"]
    assert not worker.on_packet(tcp_syn(3389), 5.1), "the engine holds no grant either"
    one_time_knocks(worker, 6.0)
    assert grants.added == [], "and the line stays used"


def test_a_one_time_door_counts_tcp_knocks_by_its_tcp_flags(files: dict[str, str]) -> None:
    """knockd's one-time sections carry tcpflags (``fin,!ack`` in its manual); so does the door."""
    text = config_text(files).replace('opens = ["3389"]', 'opens = ["3389"]\ntcp_flags = "fin,!ack"')
    _, doors = specials(loads(text, "t.toml"))
    fin = 0x01
    syn_knock = doors.handle(CLIENT_B, GW_B, 6, 1001, 0x02, b"", 1.0, WALL)
    assert syn_knock is not None and syn_knock[1] is Reason.IGNORED
    decision = None
    for i, (proto, port) in enumerate([(6, 1001), (17, 1002), (6, 1003)]):
        decision = doors.handle(CLIENT_B, GW_B, proto, port, fin if proto == 6 else 0, b"", 2.0 + i, WALL)
    assert decision is not None and decision[1] is Reason.COMPLETED


# -- replay caches say what they saw; the worker writes it down -----------------------------


def test_a_message_new_to_a_replay_cache_is_queued_for_the_journal_not_written(cfg: Config) -> None:
    _, doors = specials(cfg)
    packet = spa_packet()
    assert doors.handle(CLIENT_B, GW_B, 17, 62201, 0, packet, 10.0, WALL)[1] is Reason.COMPLETED  # type: ignore[index]
    (seen,) = doors.seen
    assert seen.door == "spa" and seen.key in doors.replay["spa"]
    assert seen.expires == WALL + 2 * 120.0
    doors.seen.clear()
    doors.handle(CLIENT_B, GW_B, 17, 62201, 0, packet, 11.0, WALL)
    assert doors.seen == [], "a replay records nothing new"


def test_the_worker_appends_new_replay_entries_to_the_doors_journal(cfg: Config, tmp_path: Path) -> None:
    from gatekeeper.daemon import replaylog

    worker = Worker(cfg, FakeGrants(), lambda m: None, clock=lambda: 5.0, wall=lambda: WALL)
    worker.journal_replays(str(tmp_path))
    worker.on_packet(udp(spa_packet()), 5.0)
    (key, expires), = replaylog.load(str(tmp_path), "spa", now=WALL)
    assert key in worker.specials.replay["spa"] and expires == WALL + 240.0  # type: ignore[union-attr]
    assert worker.specials.seen == []  # type: ignore[union-attr]


@pytest.mark.parametrize(("fresh", "fallback", "reason", "stage"), [
    (True, "closed", Reason.COMPLETED, "ok"),
    (False, "local", Reason.WRONG, "replay"),  # another gateway saw it first
    (None, "local", Reason.COMPLETED, "ok"),  # store down: a "local" door trusts its cache
    (None, "closed", Reason.WRONG, "replay"),  # a "closed" one admits nothing new
])
def test_the_shared_replay_check_is_a_query_and_an_answer(
        cfg: Config, fresh: bool | None, fallback: str, reason: Reason, stage: str) -> None:
    from dataclasses import replace

    from gatekeeper.engine.special import ReplayQuery

    engine, doors = specials(cfg)
    doors.shared_replay = True
    query = doors.handle(CLIENT_B, GW_B, 17, 62201, 0, spa_packet(), 10.0, WALL)
    assert isinstance(query, ReplayQuery) and query.door.name == "spa" and query.ttl == 240.0
    assert list(engine.grants()) == [] and doors.counts == {}, "nothing decided before the answer"
    query = replace(query, door=replace(query.door, cluster_fallback=fallback))
    assert doors.answer(query, fresh)[1] is reason
    assert doors.counts == {("spa", stage): 1}
    assert [e.door for e in doors.seen] == (["spa"] if stage == "ok" else [])
    assert bool(list(engine.grants())) is (reason is Reason.COMPLETED)


def test_a_close_says_which_ports_another_door_still_grants(files: dict[str, str]) -> None:
    both = ('[[door]]\nname = "alt"\nsequence = ["4001", "4002"]\nclose_sequence = ["4003", "4004"]\n'
            'opens = ["2222", "2223"]\n')
    cfg = loads(config_text(files) + both, "t.toml")
    engine = Engine(cfg)
    for i, (proto, port) in enumerate([(17, 7000), (6, 8000), (17, 9000), (6, 4001), (6, 4002)]):
        engine.decide(CLIENT_B, GW_B, proto, port, 0x02, 1.0 + i / 10)
    engine.decide(CLIENT_B, GW_B, 6, 4003, 0x02, 2.0)
    _, reason, events = engine.decide(CLIENT_B, GW_B, 6, 4004, 0x02, 2.1)
    (revoked,) = [e for e in events if isinstance(e, Revoked)]
    assert reason is Reason.CLOSED and [str(s) for s in revoked.steps] == ["2222:tcp", "2223:tcp"]
    assert [(d.name, str(s)) for d, s, _ in revoked.kept] == [("ssh", "2222:tcp")]


def test_the_worker_writes_back_a_port_another_door_still_grants(files: dict[str, str]) -> None:
    both = ('[[door]]\nname = "alt"\nsequence = ["4001", "4002"]\nclose_sequence = ["4003", "4004"]\n'
            'opens = ["2222", "2223"]\n')

    class Calls(FakeGrants):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[tuple[str, str, list[str]]] = []

        def add(self, address: str, door: Door, seconds: float, steps: Any = None) -> int:
            self.calls.append(("add", door.name, [str(s) for s in steps or door.opens]))
            return super().add(address, door, seconds, steps)

        def remove(self, address: str, door: Door, steps: Any = None) -> None:
            self.calls.append(("remove", door.name, [str(s) for s in steps or door.opens]))

    grants = Calls()
    worker = Worker(loads(config_text(files) + both, "t.toml"), grants, lambda m: None,
                    clock=lambda: 5.0, wall=lambda: WALL)
    for proto, port in ((17, 7000), (6, 8000), (17, 9000), (6, 4001), (6, 4002), (6, 4003), (6, 4004)):
        worker.on_packet(udp(b"", port) if proto == 17 else tcp_syn(port), 5.0)
    assert grants.calls[-2:] == [("remove", "alt", ["2222:tcp", "2223:tcp"]), ("add", "ssh", ["2222:tcp"])]
