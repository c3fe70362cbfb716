"""gatekeeper replay: captures of each link type (tests/fixtures/captures/, made by
tests/fixtures/make_captures.py) through the decoder and engine, bad files, filters, special doors."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import dpkt
import pytest

from gatekeeper.cli import main
from gatekeeper.config.load import loads
from gatekeeper.replay.capture import open_capture
from gatekeeper.replay.run import Replay, Result
from gatekeeper.spa import fwknop
from gatekeeper.spa.request import Request, encode
from tests.fixtures import make_captures as mk

CAPTURES = mk.OUT
CONFIG = str(CAPTURES / "config.toml")
LINK_TYPES = ["ethernet.pcap", "ethernet.pcapng", "vlan.pcap", "sll.pcap", "sll2.pcapng", "raw.pcap"]


def replay(name: str, **options: Any) -> Result:
    capture = open_capture(str(CAPTURES / name))
    try:
        return Replay(loads(mk.CONFIG, "config.toml"), **options).run(capture)
    finally:
        capture.close()


def moments(result: Result, source: str, what: str) -> list[dict[str, Any]]:
    return [{"door": m.door, "time": m.time - mk.T0, **m.fields}
            for m in result.timelines.get(source, []) if m.what == what]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["replay", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_committed_captures_are_what_the_script_makes(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mk, "OUT", tmp_path)
    assert mk.main([]) == 0
    for path in tmp_path.iterdir():
        assert path.read_bytes() == (CAPTURES / path.name).read_bytes(), path.name


@pytest.mark.parametrize("name", LINK_TYPES)
def test_every_link_type_tells_the_same_story(name: str) -> None:
    r = replay(name)
    for client in (mk.CLIENT, mk.CLIENT6):
        knocks = [(k["port"], k["outcome"]) for k in moments(r, client, "knock")]
        assert knocks == [("7000:udp", "advanced"), ("8000:tcp", "advanced"), ("9000:udp", "completed")]
        [grant] = moments(r, client, "grant")
        assert grant["door"] == "ssh" and grant["ports"] == ["22:tcp"] and grant["seconds"] == 30
        [revoke] = moments(r, client, "revoke")  # expired: seen at the packet 40 s in
        assert revoke["cause"] == "expired" and revoke["time"] == pytest.approx(40.0)
    assert r.grants == {"ssh": 2}
    resets = moments(r, mk.WRONG, "knock")
    assert [(k["port"], k["outcome"]) for k in resets] == [("7000:udp", "advanced"), ("1234:tcp", "reset")]
    [lockout] = moments(r, mk.SCANNER, "lockout")
    assert lockout["cause"] == "scan" and r.lockouts == {"scan": 1}
    # the gateway's SYN-ACKs, the connections' ACKs, the web client's SYN, the solicitation
    assert r.not_queued == {"outbound": 3, "established": 3, "public": 1, "neighbour discovery": 1}
    assert r.malformed == 1 and r.reasons["granted"] == 2 and r.reasons["unauthorised"] == 1
    assert r.sources == 4 and not r.truncated
    assert r.not_ip == (1 if name.startswith("ethernet") else 0)  # the ARP frame


def test_an_explicit_gateway_address_and_the_cooked_capture_need_no_learning() -> None:
    r = replay("sll.pcap", gateway=[mk.GATEWAY, mk.GATEWAY6])
    assert not r.learnt and r.gateway == sorted([mk.GATEWAY6, mk.GATEWAY])
    assert r.not_queued["outbound"] == 3 and r.grants == {"ssh": 2}


def test_text_output_shows_timelines_then_the_summary(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "-c", CONFIG, str(CAPTURES / "ethernet.pcap"))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == mk.CLIENT and "GRANT 22:tcp for 30 s" in out
    assert "reset by 1234:tcp" in out and "LOCKOUT as a scanner" in out
    summary = lines[lines.index("summary"):]
    assert any(line.startswith("grants") and "ssh 2" in line for line in summary)
    assert any(line.startswith("lockouts") and "scan 1" in line for line in summary)
    assert "the decoder refused it" in err and err.count("\n") == 1  # one line for the one packet


def test_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "-c", CONFIG, "--json", str(CAPTURES / "sll2.pcapng"))
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    grants = [(r["source"], r["door"], r["ports"]) for r in rows if r.get("what") == "grant"]
    assert grants == [(mk.CLIENT, "ssh", ["22:tcp"]), (mk.CLIENT6, "ssh", ["22:tcp"])]
    assert rows[-1]["type"] == "summary" and rows[-1]["grants"] == {"ssh": 2}
    assert rows[-1]["lockouts"] == {"scan": 1} and rows[-1]["packets"] == 31


def test_source_and_door_filters(capsys: pytest.CaptureFixture[str]) -> None:
    r = replay("ethernet.pcap", sources=["2001:db8::/64"])
    assert list(r.timelines) == [mk.CLIENT6] and r.grants == {"ssh": 2}  # the summary: all
    code, out, _ = run_cli(capsys, "-c", CONFIG, "--source", mk.SCANNER, str(CAPTURES / "raw.pcap"))
    assert code == 0 and out.splitlines()[0] == mk.SCANNER and mk.CLIENT not in out.split("summary")[0]
    code, _, err = run_cli(capsys, "-c", CONFIG, "--door", "nope", str(CAPTURES / "raw.pcap"))
    assert code == 2 and "--door nope: no such door" in err
    code, _, err = run_cli(capsys, "-c", CONFIG, "--source", "not-an-address", str(CAPTURES / "raw.pcap"))
    assert code == 2 and "--source not-an-address" in err


def test_since_and_until_replay_only_that_window(capsys: pytest.CaptureFixture[str]) -> None:
    r = replay("ethernet.pcap", since=mk.T0 + 1.05, until=mk.T0 + 3.5)
    assert list(r.grants) == ["ssh"] and r.grants["ssh"] == 1  # the IPv6 client's only
    assert mk.CLIENT not in r.timelines and r.outside > 0
    code, out, _ = run_cli(capsys, "-c", CONFIG, "--since", "+1.9", "--until", "2027-01-15T08:00:02.5",
                           "--json", str(CAPTURES / "ethernet.pcap"))
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and {r["source"] for r in rows[:-1]} == {mk.WRONG} and rows[-1]["grants"] == {}
    code, _, err = run_cli(capsys, "-c", CONFIG, "--since", "yesterday", str(CAPTURES / "raw.pcap"))
    assert code == 2 and "'yesterday' is no time" in err


def test_a_truncated_capture_reports_what_was_read(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "-c", CONFIG, str(CAPTURES / "truncated.pcap"))
    assert code == 0  # the result stands
    assert "truncated.pcap: cut short in packet 32 (12 of its 42 bytes" in err
    assert "GRANT 22:tcp" in out and "truncated" in out.split("summary")[1]


def test_a_capture_cut_inside_a_pcapng_block(tmp_path: Path) -> None:
    whole = (CAPTURES / "ethernet.pcapng").read_bytes()
    (tmp_path / "cut.pcapng").write_bytes(whole[:-40])
    capture = open_capture(str(tmp_path / "cut.pcapng"))
    r = Replay(loads(mk.CONFIG, "c.toml")).run(capture)
    assert "cut short after" in r.truncated and r.grants == {"ssh": 2}


@pytest.mark.parametrize(("name", "words"), [
    ("garbage.pcap", "not a pcap or pcapng capture"),
    ("unknown-link.pcap", "link type 147 is not one replay reads"),
    ("missing.pcap", "cannot read: No such file"),
])
def test_files_that_cannot_be_read_exit_2(capsys: pytest.CaptureFixture[str], name: str,
                                          words: str) -> None:
    code, out, err = run_cli(capsys, "-c", CONFIG, str(CAPTURES / name))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and name in err and words in err


def test_an_empty_file_is_no_capture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.pcap").write_bytes(b"")
    code, _, err = run_cli(capsys, "-c", CONFIG, str(tmp_path / "empty.pcap"))
    assert code == 2 and "not a pcap or pcapng capture" in err


# -- special doors: caches start empty, nothing written -------------------------------------

KEYS = fwknop.SpaKeys(bytes(range(32)), bytes(range(100, 164)), "test")


def test_spa_and_one_time_doors_replay_without_writing(tmp_path: Path) -> None:
    key = tmp_path / "spa.key"
    key.write_text(fwknop.format_key_file(KEYS))
    os.chmod(key, 0o600)
    once = tmp_path / "once.txt"
    once.write_text("1001,1002:udp,1003\n2001,2002,2003\n")
    state = tmp_path / "state"
    state.mkdir()
    config = loads(f"""
[gatekeeper]
state_dir = "{state}"
[[door]]
name = "spa"
spa = true
key_file = "{key}"
opens = ["22"]
[[door]]
name = "once"
one_time_sequences = "{once}"
opens = ["3389"]
""", "c.toml")
    t = 100.0
    packet = encode(KEYS, Request([("tcp", 22)], mk.CLIENT, mk.T0 + t))
    spa = mk.udp(mk.CLIENT, mk.GATEWAY, 62201, data=packet)
    frames = [(t, spa), (t + 1, spa),  # the same packet again: a replay
              (t + 2, mk.tcp(mk.WRONG, mk.GATEWAY, 1001)), (t + 2.1, mk.udp(mk.WRONG, mk.GATEWAY, 1002)),
              (t + 2.2, mk.tcp(mk.WRONG, mk.GATEWAY, 1003)),
              (t + 3, mk.tcp(mk.SCANNER, mk.GATEWAY, 1001))]  # line 1 is used: wrong now
    mk.write(tmp_path / "s.pcap", frames, 101)
    before = once.read_bytes(), once.stat().st_mtime_ns
    r = Replay(config).run(open_capture(str(tmp_path / "s.pcap")))
    stages = [s["stage"] for s in moments(r, mk.CLIENT, "spa")]
    assert stages == ["ok", "replay"]
    assert [g["ports"] for g in moments(r, mk.CLIENT, "grant")] == [["22:tcp"]]
    [used] = moments(r, mk.WRONG, "one-time")
    assert used["line"] == 1 and [g["door"] for g in moments(r, mk.WRONG, "grant")] == ["once"]
    assert moments(r, mk.SCANNER, "grant") == []
    assert r.grants == {"spa": 1, "once": 1} and r.spa == {"spa": {"ok": 1, "replay": 1}}
    assert (once.read_bytes(), once.stat().st_mtime_ns) == before  # never marked
    assert list(state.iterdir()) == []  # no replay journal


def test_the_bench_capture_writer(tmp_path: Path) -> None:
    assert mk.main(["--bench", "500", str(tmp_path / "b.pcap")]) == 0
    with open(tmp_path / "b.pcap", "rb") as f:
        assert sum(1 for _ in dpkt.pcap.Reader(f)) == 500
    r = Replay(loads((tmp_path / "b.toml").read_text(), "b.toml")).run(
        open_capture(str(tmp_path / "b.pcap")))
    assert r.packets == 500 and r.malformed > 0 and sum(r.reasons.values()) + r.malformed == 500


def test_nanosecond_pcap_and_bsd_loopback(tmp_path: Path) -> None:
    packets = mk.scenario()
    with open(tmp_path / "nano.pcap", "wb") as f:
        writer = dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_EN10MB, nano=True)
        for ts, p, out in packets:
            writer.writepkt(mk.ethernet(p, out), ts=mk.T0 + ts)
    null = [(ts, (b"\x02\x00\x00\x00" if p[0] >> 4 == 4 else b"\x00\x00\x00\x1e") + p)
            for ts, p, _ in packets]
    mk.write(tmp_path / "null.pcap", null, dpkt.pcap.DLT_NULL)
    for name in ("nano.pcap", "null.pcap"):
        r = Replay(loads(mk.CONFIG, "c.toml")).run(open_capture(str(tmp_path / name)))
        assert r.grants == {"ssh": 2} and r.lockouts == {"scan": 1}, name
        [revoke] = moments(r, mk.CLIENT, "revoke")
        assert revoke["time"] == pytest.approx(40.0), name


def test_loopback_frames_of_a_cooked_capture_are_never_queued(tmp_path: Path) -> None:
    knock = mk.udp(mk.CLIENT, mk.GATEWAY, 7000)
    lo = struct.pack("!HHH8sH", 0, 772, 6, bytes(8), 0x0800) + knock  # "-i any" on lo
    eth = struct.pack("!HHH8sH", 0, 1, 6, bytes(8), 0x0800) + knock
    mk.write(tmp_path / "lo.pcap", [(0.0, lo), (0.1, eth)], dpkt.pcap.DLT_LINUX_SLL)
    r = Replay(loads(mk.CONFIG, "c.toml")).run(open_capture(str(tmp_path / "lo.pcap")))
    assert r.not_queued["outbound"] == 1
    assert [k["outcome"] for k in moments(r, mk.CLIENT, "knock")] == ["advanced"]


def test_an_spa_nat_grant_replays_as_a_grant_with_its_target(tmp_path: Path) -> None:
    from gatekeeper.replay.report import describe

    key = tmp_path / "spa.key"
    key.write_text(fwknop.format_key_file(KEYS))
    os.chmod(key, 0o600)
    config = loads(f'[[door]]\nname = "nat"\nspa = true\nkey_file = "{key}"\nopens = ["2222"]\n'
                   'spa_nat = ["198.51.100.20:22"]\n', "c.toml")
    packet = encode(KEYS, Request([("tcp", 2222)], mk.CLIENT, mk.T0 + 100, nat="198.51.100.20,22"))
    mk.write(tmp_path / "n.pcap", [(100.0, mk.udp(mk.CLIENT, mk.GATEWAY, 62201, data=packet))], 101)
    r = Replay(config).run(open_capture(str(tmp_path / "n.pcap")))
    [grant] = moments(r, mk.CLIENT, "grant")
    assert grant["ports"] == ["2222:tcp"] and grant["nat"] == "198.51.100.20:22" and r.grants == {"nat": 1}
    [moment] = [m for m in r.timelines[mk.CLIENT] if m.what == "grant"]
    assert "DNATed to 198.51.100.20:22" in describe(moment, config)
