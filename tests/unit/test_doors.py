"""SPA, encrypted and one-time doors without a kernel: config, SpecialDoors, the worker."""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatekeeper.config import ConfigError
from gatekeeper.config.load import loads
from gatekeeper.control import format_status
from gatekeeper.effects.grantbook import GrantBook
from gatekeeper.effects.onetime import mark_used
from gatekeeper.engine import Engine, Granted, Reason, Revoked, Verdict
from gatekeeper.engine.doors import SequenceUsed, SpecialDoors
from gatekeeper.messages import Message
from gatekeeper.model import Config, Door, Port
from gatekeeper.queue.decode import udp_payload
from gatekeeper.queue.worker import Worker
from gatekeeper.spa import fwknop
from gatekeeper.spa import sequence as seqcodec

CLIENT = "203.0.113.10"
CLIENT_B = ipaddress.ip_address(CLIENT).packed
GW_B = ipaddress.ip_address("203.0.113.1").packed
WALL = 1_700_000_000.0
KEYS = fwknop.SpaKeys(bytes(range(32)), bytes(range(100, 164)), "test")
SEQ_KEY = bytes(range(50, 82))


def write_key(path: Path, text: str, mode: int = 0o600) -> str:
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    return {
        "spa": write_key(tmp_path / "spa.key", fwknop.format_key_file(KEYS)),
        "seq": write_key(tmp_path / "seq.key", f"KEY_BASE64={base64.b64encode(SEQ_KEY).decode()}\n"),
        "once": write_key(tmp_path / "once.txt", "# one-time\n1001,1002:udp,1003\n2001 2002 2003\n"
                          "3001:udp, 3002\n", 0o644),
    }


def config_text(files: dict[str, str]) -> str:
    return f"""
[gatekeeper]
control = ""
[metrics]
listen = ""
[[door]]
name = "ssh"
sequence = ["7000:udp", "8000", "9000:udp"]
opens = ["2222"]
[[door]]
name = "spa"
spa = true
key_file = "{files['spa']}"
opens = ["22"]
[[door]]
name = "enc"
encrypted_sequence = {{ key_file = "{files['seq']}", ports = "745-1000" }}
opens = ["8080"]
[[door]]
name = "once"
one_time_sequences = "{files['once']}"
opens = ["3389"]
"""


@pytest.fixture
def cfg(files: dict[str, str]) -> Config:
    return loads(config_text(files), "t.toml")


def specials(cfg: Config) -> tuple[Engine, SpecialDoors]:
    engine = Engine(cfg)
    return engine, SpecialDoors(cfg, engine)


# -- config -------------------------------------------------------------------------------


def test_config_reads_the_special_doors(cfg: Config) -> None:
    spa, enc, once = cfg.doors[1], cfg.doors[2], cfg.doors[3]
    assert spa.kind == "spa" and spa.spa is not None and spa.spa.port == 62201
    assert spa.spa.window == 120.0 and not spa.spa.other_source and spa.sequence == ()
    assert "AAEC" not in repr(spa)  # no key material in a repr
    assert enc.encrypted is not None and (enc.encrypted.first, enc.encrypted.last) == (745, 1000)
    assert enc.encrypted.key == SEQ_KEY
    assert once.one_time is not None and [n for n, _ in once.one_time.lines] == [2, 3, 4]
    assert [str(s) for s in once.one_time.lines[2][1]] == ["3001:udp", "3002:tcp"]


@pytest.mark.parametrize(("change", "key", "message"), [
    (("spa = true\n", "spa = true\nsequence = ['1']\n"), "door[1] (spa).spa",
     "exactly one of sequence, spa"),
    (('key_file = "SPA"\n', ""), "door[1] (spa).key_file", "is required with spa = true"),
    (('opens = ["22"]', 'opens = ["22"]\nspa_port = 7000'), "door[1] (spa).spa_port",
     "7000:udp is a knock port ('ssh')"),
    (("[gatekeeper]\n", '[gatekeeper]\npublic = ["62201:udp"]\n'), "door[1] (spa).spa_port",
     "62201:udp is public"),
    (('opens = ["2222"]', 'opens = ["2222"]\nspa_port = 1'), "door[0] (ssh).spa_port",
     "only for a door with spa = true"),
    (('ports = "745-1000"', 'ports = "745-999"'), "door[2] (enc).encrypted_sequence.ports",
     "exactly 256 ports"),
    (('ports = "745-1000"', 'ports = "7000-7255"'), "door[2] (enc).encrypted_sequence.ports",
     "7000:udp is a knock port"),
    (('spa = true\n', 'spa = "yes"\n'), "door[1] (spa).spa", "must be true or false"),
])
def test_config_errors(files: dict[str, str], change: tuple[str, str], key: str, message: str) -> None:
    text = config_text(files).replace(f'"{files["spa"]}"', '"SPA"') if "SPA" in change[0] \
        else config_text(files)
    text = text.replace(*change)
    with pytest.raises(ConfigError) as info:
        loads(text, "t.toml")
    assert str(info.value).startswith(f"t.toml: {key}: "), info.value
    assert message in str(info.value)


@pytest.mark.parametrize("which", ["spa", "seq"])
def test_key_file_readable_by_others_is_refused(files: dict[str, str], which: str) -> None:
    os.chmod(files[which], 0o640)
    with pytest.raises(ConfigError) as info:
        loads(config_text(files), "t.toml")
    assert "must be readable only by root" in str(info.value)
    assert files[which] in str(info.value)


def test_bad_key_files_name_the_file(files: dict[str, str]) -> None:
    write_key(Path(files["spa"]), "KEY_BASE64: abc\n")
    with pytest.raises(ConfigError) as info:
        loads(config_text(files), "t.toml")
    assert files["spa"] in str(info.value) and "door[1] (spa).key_file" in str(info.value)
    write_key(Path(files["spa"]), fwknop.format_key_file(KEYS))
    write_key(Path(files["seq"]), "KEY_BASE64=AAAA\n")
    with pytest.raises(ConfigError) as info:
        loads(config_text(files), "t.toml")
    assert "must be 16, 24 or 32" in str(info.value)


# -- SPA ----------------------------------------------------------------------------------


def spa_packet(now: float = WALL, address: str = CLIENT, keys: fwknop.SpaKeys = KEYS,
               access: tuple[str, int] = ("tcp", 22)) -> bytes:
    return fwknop.encode(keys, [access], address, now)


def one_char_changed(packet: bytes, index: int) -> bytes:
    """``packet`` with the base64 character at ``index`` of its HMAC changed, whatever
    it was (the form this replaced tested the last character of a second, freshly made
    packet: when the first packet's already was "A" it stayed unchanged and valid, about
    once in 16 runs)."""
    old = packet[index:][:1]
    return packet[:index] + (b"B" if old == b"A" else b"A") + packet[index:][1:]


def test_spa_grants_the_door_and_a_replay_does_not(cfg: Config) -> None:
    engine, doors = specials(cfg)
    packet = spa_packet()
    decision = doors.handle(CLIENT_B, GW_B, 17, 62201, 0, packet, 10.0, WALL)
    assert decision is not None
    verdict, reason, events = decision
    assert (verdict, reason) == (Verdict.DROP, Reason.COMPLETED)
    granted = [e for e in events if isinstance(e, Granted)]
    assert granted and granted[0].door.name == "spa" and granted[0].address == CLIENT
    assert engine.decide(CLIENT_B, GW_B, 6, 22, 0x02, 11.0)[0] is Verdict.ACCEPT
    assert doors.handle(CLIENT_B, GW_B, 17, 62201, 0, packet, 12.0, WALL)[1] is Reason.WRONG  # type: ignore[index]
    other = ipaddress.ip_address("203.0.113.20").packed
    assert doors.handle(other, GW_B, 17, 62201, 0, packet, 12.0, WALL)[1] is Reason.WRONG  # type: ignore[index]
    assert doors.counts[("spa", "ok")] == 1 and doors.counts[("spa", "replay")] == 2


@pytest.mark.parametrize(("packet", "stage"), [
    (lambda: spa_packet(keys=fwknop.SpaKeys(bytes(range(1, 33)), bytes(range(9, 73)))), "hmac"),
    (lambda: spa_packet(now=WALL - 300), "stale"),
    (lambda: spa_packet(now=WALL + 300), "stale"),
    (lambda: spa_packet(address="203.0.113.99"), "source"),
    (lambda: spa_packet(address="::ffff:203.0.113.99"), "source"),
    (lambda: spa_packet(access=("tcp", 23)), "access"),
    (lambda: one_char_changed(spa_packet(), -5), "hmac"),
    (lambda: b"x", "size"),
])
def test_spa_failures_grant_nothing_and_count_their_stage(cfg: Config, packet: Any, stage: str) -> None:
    engine, doors = specials(cfg)
    decision = doors.handle(CLIENT_B, GW_B, 17, 62201, 0, packet(), 10.0, WALL)
    assert decision is not None and decision[1] is Reason.WRONG and decision[2] == ()
    assert list(engine.grants()) == []
    assert doors.counts == {("spa", stage): 1}


MAPPED = f"::ffff:{CLIENT}"  # CLIENT as an IPv4-mapped IPv6 address
V6_SRC = ipaddress.ip_address("2001:db8::5").packed
GW6_B = ipaddress.ip_address("2001:db8::1").packed


def granted_addresses(decision: Any) -> list[str]:
    assert decision is not None
    return [e.address for e in decision[2] if isinstance(e, Granted)]


def test_spa_for_a_mapped_address_grants_and_admits_the_ipv4_sender(cfg: Config) -> None:
    engine, doors = specials(cfg)
    decision = doors.handle(CLIENT_B, GW_B, 17, 62201, 0, spa_packet(address=MAPPED), 10.0, WALL)
    assert decision is not None and decision[1] is Reason.COMPLETED
    assert granted_addresses(decision) == [CLIENT]
    assert [g[0] for g in engine.grants()] == [CLIENT]
    assert engine.decide(CLIENT_B, GW_B, 6, 22, 0x02, 11.0)[0] is Verdict.ACCEPT
    assert doors.counts == {("spa", "ok"): 1}
    # the worker puts the IPv4 address in the kernel set
    grants = FakeGrants()
    worker = Worker(cfg, grants, lambda m: None, clock=lambda: 5.0, wall=lambda: WALL)
    assert not worker.on_packet(udp(spa_packet(address=MAPPED)), 5.0)
    assert grants.added == [(CLIENT, "spa")]


def test_spa_other_source_for_a_mapped_address_grants_its_ipv4_form(files: dict[str, str]) -> None:
    text = config_text(files).replace("spa = true\n", "spa = true\nspa_other_source = true\n")
    engine, doors = specials(loads(text, "t.toml"))
    decision = doors.handle(V6_SRC, GW6_B, 17, 62201, 0, spa_packet(address=MAPPED), 10.0, WALL)
    assert granted_addresses(decision) == [CLIENT]
    assert engine.decide(CLIENT_B, GW_B, 6, 22, 0x02, 11.0)[0] is Verdict.ACCEPT
    assert engine.decide(V6_SRC, GW6_B, 6, 22, 0x02, 11.0)[0] is Verdict.DROP


def test_spa_for_a_mapped_address_from_an_ipv6_source_is_refused(cfg: Config) -> None:
    engine, doors = specials(cfg)
    decision = doors.handle(V6_SRC, GW6_B, 17, 62201, 0, spa_packet(address=MAPPED), 10.0, WALL)
    assert decision is not None and decision[1] is Reason.WRONG
    assert doors.counts == {("spa", "source"): 1} and list(engine.grants()) == []


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=3100), cut=st.integers(0, 400), port=st.sampled_from([62201, 745, 800, 1001]))
def test_random_and_truncated_payloads_never_raise(cfg: Config, data: bytes, cut: int, port: int) -> None:
    engine, doors = specials(cfg)
    whole = spa_packet()
    for payload in (data, whole[:min(cut, len(whole) - 1)], whole[max(1, cut):]):
        for proto in (6, 17):
            decision = doors.handle(CLIENT_B, GW_B, proto, port, 0x02, payload, 1.0, WALL)
            assert decision is None or decision[0] is Verdict.DROP
    assert list(engine.grants()) == []


def test_100k_junk_spa_packets_grant_nothing_and_leave_the_replay_cache_empty(cfg: Config) -> None:
    engine, doors = specials(cfg)
    rng = __import__("random").Random(7)
    for i in range(100_000):
        size = rng.choice((0, 1, 50, 150, 200, 300, 500, 1400))
        payload = rng.randbytes(size) if i % 2 else base64.b64encode(rng.randbytes(size))[:size]
        src = (0xCB007100 + i % 250).to_bytes(4, "big")
        verdict, _, events = doors.handle(src, GW_B, 17, 62201, 0, payload, i / 1000, WALL)  # type: ignore[misc]
        assert verdict is Verdict.DROP and events == ()
    assert list(engine.grants()) == []
    assert len(doors.replay["spa"]) == 0
    assert sum(doors.counts.values()) == 100_000
    assert set(s for _, s in doors.counts) <= {"size", "hmac"}


# -- encrypted sequences -----------------------------------------------------------------


def knock_all(doors: SpecialDoors, ports: list[int], now: float, src: bytes = CLIENT_B) -> Any:
    decision = None
    for i, port in enumerate(ports):
        decision = doors.handle(src, GW_B, 6, port, 0x02, b"", now + i / 1000, WALL)
    return decision


def test_encrypted_sequence_grants_once(cfg: Config) -> None:
    _, doors = specials(cfg)
    ports = seqcodec.encode(CLIENT, 8080, 6, 0, WALL, SEQ_KEY)
    assert len(ports) == seqcodec.KNOCKS_V4
    decision = knock_all(doors, ports, 1.0)
    assert decision[1] is Reason.COMPLETED
    assert [g.door.name for g in decision[2] if isinstance(g, Granted)] == ["enc"]
    assert knock_all(doors, ports, 2.0)[1] is Reason.WRONG  # the replay
    assert doors.counts == {("enc", "ok"): 1, ("enc", "replay"): 1}


@pytest.mark.parametrize(("make", "stage"), [
    (lambda: seqcodec.encode(CLIENT, 22, 6, 0, WALL, SEQ_KEY), "access"),
    (lambda: seqcodec.encode("203.0.113.99", 8080, 6, 0, WALL, SEQ_KEY), "source"),
    (lambda: seqcodec.encode(CLIENT, 8080, 6, 0, WALL - 500, SEQ_KEY), "stale"),
    (lambda: seqcodec.encode(CLIENT, 8080, 6, 0, WALL, bytes(32)), "auth"),
])
def test_encrypted_failures(cfg: Config, make: Any, stage: str) -> None:
    engine, doors = specials(cfg)
    assert knock_all(doors, make(), 1.0)[1] is Reason.WRONG
    assert doors.counts == {("enc", stage): 1} and list(engine.grants()) == []


def test_encrypted_sequence_for_a_mapped_address_is_an_ipv4_one(cfg: Config) -> None:
    engine, doors = specials(cfg)
    ports = seqcodec.encode(MAPPED, 8080, 6, 0, WALL, SEQ_KEY)
    assert len(ports) == seqcodec.KNOCKS_V4 and seqcodec.knocks_for(MAPPED) == seqcodec.KNOCKS_V4
    decision = knock_all(doors, ports, 1.0)
    assert decision[1] is Reason.COMPLETED and granted_addresses(decision) == [CLIENT]
    assert engine.decide(CLIENT_B, GW_B, 6, 8080, 0x02, 2.0)[0] is Verdict.ACCEPT


def test_encrypted_collection_times_out(cfg: Config) -> None:
    _, doors = specials(cfg)
    ports = seqcodec.encode(CLIENT, 8080, 6, 0, WALL, SEQ_KEY)
    knock_all(doors, ports[:10], 1.0)
    assert knock_all(doors, ports[10:], 100.0)[1] is Reason.KNOCK  # started afresh


# -- one-time sequences ------------------------------------------------------------------


def test_one_time_sequence_works_once_then_the_next_line(cfg: Config, files: dict[str, str]) -> None:
    _, doors = specials(cfg)
    first = [(6, 1001), (17, 1002), (6, 1003)]
    decision = None
    for i, (proto, port) in enumerate(first):
        decision = doors.handle(CLIENT_B, GW_B, proto, port, 0x02, b"", 1.0 + i, WALL)
    assert decision is not None and decision[1] is Reason.COMPLETED
    used = [e for e in decision[2] if isinstance(e, SequenceUsed)]
    assert used == [SequenceUsed("once", files["once"], 2, "1001:tcp,1002:udp,1003:tcp")]
    for i, (proto, port) in enumerate(first):
        decision = doors.handle(CLIENT_B, GW_B, proto, port, 0x02, b"", 5.0 + i, WALL)
    assert decision is not None and decision[1] is not Reason.COMPLETED
    assert mark_used(files["once"], 2, used[0].steps)
    assert not mark_used(files["once"], 2, used[0].steps)  # already
    assert Path(files["once"]).read_text().splitlines()[1] == "#used# 1001,1002:udp,1003"
    again = loads(config_text(files), "t.toml").doors[3].one_time
    assert again is not None and [n for n, _ in again.lines] == [3, 4]
    for i, port in enumerate((2001, 2002, 2003)):
        decision = doors.handle(CLIENT_B, GW_B, 6, port, 0x02, b"", 9.0 + i, WALL)
    assert decision is not None and decision[1] is Reason.COMPLETED


# -- the worker ---------------------------------------------------------------------------


class FakeGrants:
    def __init__(self) -> None:
        self.added: list[tuple[str, str]] = []

    def add(self, address: str, door: Door, seconds: float, steps: Any = None) -> int:
        self.added.append((address, door.name))
        return len(door.opens)

    def remove(self, address: str, door: Door, steps: Any = None) -> None:
        pass


def udp(payload: bytes, dport: int = 62201, src: str = CLIENT) -> bytes:
    u = dpkt.udp.UDP(sport=40000, dport=dport, data=payload)
    u.ulen = len(u)
    ip = dpkt.ip.IP(src=ipaddress.ip_address(src).packed, dst=GW_B, p=17, data=u)
    ip.len = len(ip)
    return bytes(ip)


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
    packet = fwknop.encode(KEYS, [("tcp", 80), ("tcp", 22)], CLIENT, WALL)
    decision = doors.handle(CLIENT_B, GW_B, 17, 62201, 0, packet, 10.0, WALL)
    assert granted_steps(decision) == [["22:tcp", "80:tcp"]]
    assert is_accepted(engine, 22, 11.0) and is_accepted(engine, 80, 11.0)


def test_spa_asking_for_one_port_too_many_grants_nothing(wide: Config) -> None:
    engine, doors = specials(wide)
    packet = fwknop.encode(KEYS, [("tcp", 22), ("tcp", 443)], CLIENT, WALL)
    decision = doors.handle(CLIENT_B, GW_B, 17, 62201, 0, packet, 10.0, WALL)
    assert decision is not None and decision[1] is Reason.WRONG and granted_steps(decision) == []
    assert doors.counts == {("spa", "access"): 1} and list(engine.grants()) == []


def test_spa_client_timeout_shortens_the_grant_only(wide: Config) -> None:
    engine, doors = specials(wide)
    for address, timeout, now in ((CLIENT, 5, 10.0), ("203.0.113.20", 3600, 10.0)):
        packet = fwknop.encode(KEYS, [("tcp", 22)], address, WALL, client_timeout=timeout)
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


class StepGrants:
    """Kernel sets as the worker sees them: (address, door, port) -> seconds."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str, str], float] = {}

    def add(self, address: str, door: Door, seconds: float, steps: Any = None) -> int:
        for s in door.opens if steps is None else steps:
            self.entries[(address, door.name, str(s))] = seconds
        return len(door.opens if steps is None else steps)

    def remove(self, address: str, door: Door, steps: Any = None) -> None:
        for s in door.opens if steps is None else steps:
            self.entries.pop((address, door.name, str(s)), None)


def test_worker_writes_reports_and_adopts_only_the_granted_ports(wide: Config) -> None:
    reports: list[dict[str, Any]] = []
    grants = StepGrants()
    worker = Worker(wide, grants, wired(reports), clock=lambda: 5.0, wall=lambda: WALL)
    worker.on_packet(udp(spa_packet()), 5.0)
    assert list(grants.entries) == [(CLIENT, "spa", "22:tcp")]
    assert reports[0]["t"] == "grant" and reports[0]["opens"] == ["22:tcp"]
    # a restarted worker finds that entry in the kernel set: only 22 is admitted
    again = Worker(wide, StepGrants(), wired(reports), clock=lambda: 6.0, wall=lambda: WALL)
    entries = [(a, d, 29, Port(6, int(p.split(":")[0]))) for a, d, p in grants.entries]
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
    (line,) = [line for line in format_status(status).splitlines() if CLIENT in line]
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
    from gatekeeper.effects import replaylog

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

    from gatekeeper.engine.doors import ReplayQuery

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
