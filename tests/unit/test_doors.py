"""SPA, encrypted and one-time doors without a kernel: config, SpecialDoors. (Through the worker:
test_doors_worker.py.)"""

from __future__ import annotations

import base64
import ipaddress
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatekeeper.config import ConfigError
from gatekeeper.config.load import loads
from gatekeeper.daemon.onetime import mark_used
from gatekeeper.engine import Granted, Reason, Verdict
from gatekeeper.engine.special import SequenceUsed, SpaRefused
from gatekeeper.model import Config
from gatekeeper.queue.worker import Worker
from gatekeeper.spa import fwknop
from gatekeeper.spa import sequence as seqcodec
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
    # nothing granted; the refusal said, with its source, for the log (test_spa_refusals.py)
    assert decision is not None and decision[1] is Reason.WRONG
    assert decision[2] == (SpaRefused("spa", CLIENT_B, stage),)
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
        assert verdict is Verdict.DROP
        assert [e.__class__ for e in events] == [SpaRefused]  # a refusal, never an effect
    assert list(engine.grants()) == []
    assert len(doors.replay["spa"]) == 0
    assert sum(doors.counts.values()) == 100_000
    assert set(s for _, s in doors.counts) <= {"size", "hmac"}


# -- encrypted sequences -----------------------------------------------------------------


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
