"""SPA NAT access (``fwknop -N HOST:PORT``): what verify() grants and refuses, the door
settings spa_nat / spa_force_nat, the grant effect the special doors return, what the worker
writes, the rendered nat table and its removal, and the forwarding check."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.config import ConfigError
from gatekeeper.config.load import loads
from gatekeeper.engine import Granted, Reason, Verdict
from gatekeeper.engine.special import NatGranted
from gatekeeper.model import TCP, UDP, Port
from gatekeeper.netfilter import nat
from gatekeeper.netfilter.audit import audit
from gatekeeper.netfilter.render import render, render_removal, render_swap
from gatekeeper.queue.worker import Worker
from gatekeeper.spa.fwknop import Stage
from gatekeeper.spa.nat import nat_target
from gatekeeper.spa.request import Request, encode
from tests.fixtures.configs import one_door
from tests.fixtures.doors import CLIENT, CLIENT_B, GW_B, KEYS, WALL, specials, udp
from tests.fixtures.fakes import FakeGrants
from tests.fixtures.needs import need_tool
from tests.fixtures.spa import Fwknop, check

TARGET = ("198.51.100.20", 22)
GATEWAY = {("tcp", 2222)}


def nat_packet(nat_text: str | None = "198.51.100.20,22", access: tuple[str, int] = ("tcp", 2222),
               now: float = WALL, timeout: int = 0, address: str = CLIENT) -> bytes:
    return encode(KEYS, Request([access], address, now, nat=nat_text, client_timeout=timeout))


def test_an_allowed_target_is_granted_with_it_and_others_are_refused_at_access() -> None:
    for timeout in (0, 7):  # message types 2 and 4
        result = check(nat_packet(timeout=timeout), now=WALL, allowed=GATEWAY, nat_targets=[TARGET])
        assert result.ok and result.nat == TARGET and result.grant == CLIENT
        assert result.message is not None and result.message.message_type == 2 + 2 * bool(timeout)
    refused = [
        check(nat_packet(), now=WALL, allowed=GATEWAY),  # the door allows no NAT
        check(nat_packet("198.51.100.20,23"), now=WALL, allowed=GATEWAY, nat_targets=[TARGET]),
        check(nat_packet("internal.example,22"), now=WALL, allowed=GATEWAY, nat_targets=[TARGET]),
        check(nat_packet(access=("tcp", 2223)), now=WALL, allowed=GATEWAY, nat_targets=[TARGET]),
        check(nat_packet(address="2001:db8:1::10"), now=WALL, allowed=GATEWAY,
              nat_targets=[TARGET], source="2001:db8:1::10"),  # DNAT keeps the family
    ]
    assert [r.stage for r in refused] == [Stage.ACCESS] * len(refused)
    plain = check(nat_packet(None), now=WALL, allowed=GATEWAY, nat_targets=[TARGET])
    assert plain.ok and plain.nat is None  # a plain request on a NAT door: the gateway port


def test_a_forced_target_takes_every_request_and_still_checks_the_rest() -> None:
    for packet in (nat_packet(None), nat_packet("192.0.2.99,80"), nat_packet(None, timeout=5)):
        result = check(packet, now=WALL, allowed=GATEWAY, force_nat=TARGET)
        assert result.ok and result.nat == TARGET
    assert check(nat_packet(access=("tcp", 22)), now=WALL, allowed=GATEWAY,
                 force_nat=TARGET).stage is Stage.ACCESS
    assert check(nat_packet(None), now=WALL, allowed=GATEWAY, force_nat=TARGET,
                 source="203.0.113.99").stage is Stage.SOURCE


@pytest.mark.parametrize(("text", "target"), [
    ("198.51.100.20,22", TARGET), ("2001:db8::20,443", ("2001:db8::20", 443)),
    ("198.51.100.20,0", None), ("198.51.100.20,65536", None), ("host,22", None),
    ("198.51.100.20:22", None), ("198.51.100.20,", None), (",22", None),
])
def test_nat_field(text: str, target: tuple[str, int] | None) -> None:
    assert nat_target(text) == target


def test_the_stock_client_nat_messages(tmp_path: Path) -> None:
    client = Fwknop(need_tool("fwknop", "Debian's fwknop-client"), tmp_path)
    now = time.time()

    def stage(*args: str, **kw: Any) -> tuple[Stage, tuple[str, int] | None]:
        result = check(client.packet(*args, access="tcp/2222"), client.keys, now, allowed=GATEWAY, **kw)
        return result.stage, result.nat

    assert stage("-N", "198.51.100.20:22", nat_targets=[TARGET]) == (Stage.OK, TARGET)
    assert stage("-N", "198.51.100.20:22", "-f", "9", nat_targets=[TARGET]) == (Stage.OK, TARGET)
    assert check(client.packet("-N", "198.51.100.20:22", "--nat-port", "2222", access="tcp/22"),
                 client.keys, now, allowed=GATEWAY, nat_targets=[TARGET]).nat == TARGET
    assert stage("-N", "198.51.100.20:23", nat_targets=[TARGET]) == (Stage.ACCESS, None)
    assert stage("-N", "198.51.100.20:22") == (Stage.ACCESS, None)
    assert stage("--nat-local", nat_targets=[TARGET]) == (Stage.ACCESS, None)  # types 5/6
    assert stage("--nat-local", force_nat=TARGET) == (Stage.ACCESS, None)
    assert stage(force_nat=TARGET) == (Stage.OK, TARGET)


# -- config ---------------------------------------------------------------------------------

def nat_config(key_file: str, extra: str, workers: int = 1) -> str:
    return one_door(f'name = "nat"\nspa = true\nkey_file = "{key_file}"\nopens = ["2222"]\n{extra}',
                    f"workers = {workers}")


def test_spa_nat_settings(files: dict[str, str]) -> None:
    cfg = loads(nat_config(files["spa"], 'spa_nat = ["198.51.100.20:22", "[2001:db8::20]:443"]'))
    spa = cfg.doors[0].spa
    assert spa is not None and spa.nat == (TARGET, ("2001:db8::20", 443)) and spa.force_nat is None
    forced = loads(nat_config(files["spa"], 'spa_force_nat = "198.51.100.20:22"')).doors[0].spa
    assert forced is not None and forced.force_nat == TARGET and forced.nat_targets == (TARGET,)


@pytest.mark.parametrize(("extra", "error"), [
    ('spa_nat = ["198.51.100.20"]', "door[0] (nat).spa_nat[0]: '198.51.100.20': use HOST:PORT"),
    ('spa_nat = ["internal:22"]', "door[0] (nat).spa_nat[0]: 'internal:22': use HOST:PORT"),
    ('spa_nat = ["198.51.100.20:0"]', "door[0] (nat).spa_nat[0]: '198.51.100.20:0': use HOST:PORT"),
    ('spa_nat = ["2001:db8::20:22"]', "door[0] (nat).spa_nat[0]: '2001:db8::20:22': use HOST:PORT"),
    ('spa_nat = ["127.0.0.1:22"]', "door[0] (nat).spa_nat[0]: '127.0.0.1:22': not an address a "
                                   "host behind the gateway has"),
    ('spa_nat = ["198.51.100.20:22", "198.51.100.20:22"]', "door[0] (nat).spa_nat: lists a "
                                                           "target twice"),
    ('spa_nat = "198.51.100.20:22"', "door[0] (nat).spa_nat: must be a list"),
    ('spa_nat = ["198.51.100.20:22"]\nspa_force_nat = "198.51.100.20:22"',
     "door[0] (nat).spa_force_nat: not with spa_nat"),
    ('spa_force_nat = "198.51.100.20:22"\nhost = "198.51.100.20"', "door[0] (nat).host: not with "
                                                                  "spa_nat or spa_force_nat"),
])
def test_bad_nat_settings_are_one_clear_error(files: dict[str, str], extra: str, error: str) -> None:
    with pytest.raises(ConfigError) as bad:
        loads(nat_config(files["spa"], extra), "t.toml")
    assert error in str(bad.value) and str(bad.value).startswith("t.toml: "), str(bad.value)


def test_nat_only_on_an_spa_door(files: dict[str, str]) -> None:
    text = nat_config(files["spa"], 'spa_nat = ["198.51.100.20:22"]').replace(
        f'spa = true\nkey_file = "{files["spa"]}"\n', 'sequence = ["7000", "8000"]\n')
    with pytest.raises(ConfigError, match=r"spa_nat: only for a door with spa = true"):
        loads(text, "t.toml")


# -- the special doors and the worker -------------------------------------------------------

def test_the_door_returns_a_nat_grant_and_the_engine_admits_nothing(files: dict[str, str]) -> None:
    cfg = loads(nat_config(files["spa"], 'spa_nat = ["198.51.100.20:22"]\nopen_for = 60'), "t.toml")
    engine, doors = specials(cfg)
    decision = doors.handle(CLIENT_B, GW_B, UDP, 62201, 0, nat_packet(timeout=9), 1.0, WALL)
    assert isinstance(decision, tuple) and decision[:2] == (Verdict.DROP, Reason.COMPLETED)
    (event,) = [e for e in decision[2] if isinstance(e, NatGranted)]
    assert (event.host, event.port) == TARGET
    assert event.granted.steps == (Port(TCP, 2222),) and event.granted.expires == 10.0  # -f 9
    assert not any(isinstance(e, Granted) for e in decision[2]) and list(engine.grants()) == []
    syn = engine.decide(CLIENT_B, GW_B, TCP, 2222, 0x02, 2.0)
    assert syn[0] is Verdict.DROP, "a queued SYN to the gateway port never reaches the gateway"


def test_the_worker_writes_the_nat_grant_before_the_verdict(files: dict[str, str]) -> None:
    cfg = loads(nat_config(files["spa"], 'spa_force_nat = "198.51.100.20:22"'), "t.toml")
    grants = FakeGrants()
    reports: list[dict[str, Any]] = []
    worker = Worker(cfg, grants, lambda m: reports.append(m.wire()), clock=lambda: 5.0,
                    wall=lambda: WALL)
    assert not worker.on_packet(udp(nat_packet(None)), 5.0), "the SPA packet is dropped"
    assert grants.nat == {(CLIENT, "nat", "2222:tcp"): ("198.51.100.20", 22, 30.0)}
    assert grants.added == [], "nothing opened on the gateway"
    assert reports[0]["t"] == "grant" and reports[0]["opens"] == ["2222:tcp->198.51.100.20:22"]


# -- netfilter ------------------------------------------------------------------------------

def test_the_nat_table_rules_and_sets(files: dict[str, str]) -> None:
    cfg = loads(nat_config(files["spa"], 'spa_nat = ["198.51.100.20:22", "[2001:db8::20]:443"]',
                           workers=2), "t.toml")
    ruleset = render(cfg)
    name4, name6 = nat.set_name(*TARGET), nat.set_name("2001:db8::20", 443)
    assert len(name4) <= 31 and name4.startswith("gatekeeper-nat4-") and name6.startswith("gatekeeper-nat6-")
    assert f"create {name4} hash:ip,port family inet " in ruleset.ipset
    assert ruleset.ipv4.startswith("*nat\n:GATEKEEPER-NAT - [0:0]\n"
                                   "-I PREROUTING 1 ! -i lo -m comment --comment gatekeeper "
                                   "-j GATEKEEPER-NAT\n")
    assert (f"-A GATEKEEPER-NAT -p tcp -m addrtype --dst-type LOCAL -m set --match-set {name4} "
            "src,dst -j DNAT --to-destination 198.51.100.20:22") in ruleset.ipv4
    assert "--to-destination [2001:db8::20]:443" in ruleset.ipv6
    assert "-A GATEKEEPER-FWD -m set --match-set gatekeeper-fwd4 src,dst,dst -j ACCEPT" in ruleset.ipv4
    assert audit(cfg, ruleset) == []
    plain = render(loads(nat_config(files["spa"], ""), "t.toml"))
    assert "*nat" not in plain.ipv4 and "gatekeeper-nat" not in plain.ipset


def test_removal_and_swap_take_the_nat_table_in_the_same_transaction(files: dict[str, str]) -> None:
    cfg = loads(nat_config(files["spa"], 'spa_nat = ["198.51.100.20:22"]'), "t.toml")
    text = render(cfg).ipv4
    saved = ("*nat\n:PREROUTING ACCEPT [0:0]\n:GATEKEEPER-NAT - [0:0]\n"
             "-A PREROUTING ! -i lo -m comment --comment gatekeeper -j GATEKEEPER-NAT\n"
             "-A PREROUTING -p tcp --dport 80 -j DNAT --to-destination 198.51.100.9:80\n"
             "COMMIT\n*filter\n:INPUT ACCEPT [0:0]\n:GATEKEEPER-IN - [0:0]\n"
             "-A INPUT ! -i lo -m comment --comment gatekeeper -j GATEKEEPER-IN\nCOMMIT\n")
    assert render_removal(saved) == (
        "*nat\n-D PREROUTING ! -i lo -m comment --comment gatekeeper -j GATEKEEPER-NAT\n"
        "-F GATEKEEPER-NAT\n-X GATEKEEPER-NAT\nCOMMIT\n"
        "*filter\n-D INPUT ! -i lo -m comment --comment gatekeeper -j GATEKEEPER-IN\n"
        "-F GATEKEEPER-IN\n-X GATEKEEPER-IN\nCOMMIT\n")
    swap = render_swap(saved, text)
    assert swap.startswith("*nat\n-D PREROUTING ! -i lo -m comment --comment gatekeeper "
                           "-j GATEKEEPER-NAT\n-F GATEKEEPER-NAT\n-I PREROUTING 1 ")
    assert ":GATEKEEPER-NAT" not in swap and swap.count("COMMIT") == 2  # flushed, not re-made
    off = render_swap(saved, render(loads(nat_config(files["spa"], ""), "t.toml")).ipv4)
    assert off.startswith("*nat\n-D PREROUTING ! -i lo -m comment --comment gatekeeper "
                          "-j GATEKEEPER-NAT\n-F GATEKEEPER-NAT\n-X GATEKEEPER-NAT\nCOMMIT\n*filter\n")
    assert "*nat" not in render_swap(saved.split("*filter", 1)[1].join(["*filter", ""]),
                                      render(loads(nat_config(files["spa"], ""), "t.toml")).ipv4)


def test_forwarding_off_is_refused_for_the_family_with_targets(
        files: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flags = {4: tmp_path / "v4", 6: tmp_path / "v6"}
    flags[4].write_text("0\n")
    flags[6].write_text("1\n")
    monkeypatch.setattr(nat, "_FORWARDING", {k: str(v) for k, v in flags.items()})
    cfg = loads(nat_config(files["spa"], 'spa_nat = ["198.51.100.20:22"]'), "t.toml")
    assert nat.forwarding_off(cfg) == [4]
    with pytest.raises(ConfigError) as off:
        nat.require_forwarding(cfg)
    assert str(off.value) == ("t.toml: door nat: NAT access (spa_nat, spa_force_nat) needs IPv4 "
                              "forwarding, which is off here: sysctl -w net.ipv4.ip_forward=1 (and "
                              "keep it in /etc/sysctl.d)")
    v6 = loads(nat_config(files["spa"], 'spa_nat = ["[2001:db8::20]:22"]'), "t.toml")
    nat.require_forwarding(v6)  # IPv6 forwards: nothing to say
    nat.require_forwarding(loads(nat_config(files["spa"], ""), "t.toml"))


def test_the_gatekeeper_client_nat_option() -> None:
    from gatekeeper.client.spa import nat_field
    from gatekeeper.errors import GatekeeperError

    assert nat_field("198.51.100.20:22") == "198.51.100.20,22"
    assert nat_field("[2001:db8::20]:443") == "2001:db8::20,443"
    for bad in ("198.51.100.20", "host:22", "198.51.100.20:0", "198.51.100.20:x"):
        with pytest.raises(GatekeeperError, match="expected ADDRESS:PORT"):
            nat_field(bad)


def test_nat_access_with_a_cluster_warns_that_it_is_not_shared(
        files: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    text = nat_config(files["spa"], 'spa_nat = ["198.51.100.20:22"]') + '[cluster]\nredis = "redis://127.0.0.1:6379"\n'
    with caplog.at_level("WARNING", "gatekeeper.config"):
        loads(text, "t.toml")
    assert "t.toml: door[0] (nat): NAT access is not shared through [cluster]" in caplog.text
