"""SPA server commands (``fwknop --server-cmd``): an allow-list of exact texts, each an argv
run by the supervisor without a shell; anything else is refused and counted as ``command``."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatekeeper.config import ConfigError
from gatekeeper.config.load import loads
from gatekeeper.daemon.commands import CommandRunner
from gatekeeper.engine import Granted, Reason, Verdict
from gatekeeper.engine.special import CommandAsked
from gatekeeper.model import UDP
from gatekeeper.spa.fwknop import Stage
from gatekeeper.spa.request import Request, encode
from tests.fixtures.commands import lines
from tests.fixtures.configs import one_door
from tests.fixtures.doors import CLIENT, CLIENT_B, GW_B, KEYS, WALL, specials
from tests.fixtures.spa import check

ALLOWED = {"restart web", "say hello, world"}


def command_packet(text: str, address: str = CLIENT, now: float = WALL) -> bytes:
    return encode(KEYS, Request([], address, now, command=text))


def test_an_allowed_command_passes_and_any_other_is_its_own_stage() -> None:
    for text in sorted(ALLOWED):
        result = check(command_packet(text), now=WALL, commands=ALLOWED)
        assert result.ok and result.grant == CLIENT and result.message is not None
        assert result.message.command == text and result.message.access == ()
    for text in ("restart web ", "Restart web", "restart", "rm -rf /"):  # exact text only
        assert check(command_packet(text), now=WALL, commands=ALLOWED).stage is Stage.COMMAND
    assert check(command_packet("restart web"), now=WALL).stage is Stage.COMMAND  # none allowed


def test_a_command_is_checked_like_an_access_request() -> None:
    """Source, time and replay are checked as for an access request."""
    packet = command_packet("restart web")
    assert check(packet, now=WALL, commands=ALLOWED, source="203.0.113.99").stage is Stage.SOURCE
    assert check(packet, now=WALL + 121, commands=ALLOWED).stage is Stage.STALE
    from gatekeeper.spa.replay import ReplayCache

    cache = ReplayCache()
    assert check(packet, now=WALL, commands=ALLOWED, replay=cache).ok
    assert check(packet, now=WALL, commands=ALLOWED, replay=cache).stage is Stage.REPLAY


def config_text(key_file: str, commands: str) -> str:
    return one_door(f'name = "admin"\nspa = true\nkey_file = "{key_file}"\nopens = ["22"]\n'
                    f"spa_commands = {commands}")


def test_spa_commands_parse_to_argv(files: dict[str, str]) -> None:
    cfg = loads(config_text(files["spa"], '{ "restart web" = ["/usr/bin/systemctl", "restart", '
                                          '"nginx"], "log" = "/usr/bin/logger knock from %IP%" }'))
    spa = cfg.doors[0].spa
    assert spa is not None
    assert spa.command("restart web") == ("/usr/bin/systemctl", "restart", "nginx")
    assert spa.command("log") == ("/usr/bin/logger", "knock", "from", "%IP%")
    assert spa.command("restart") is None


@pytest.mark.parametrize(("commands", "error"), [
    ('["/bin/true"]', 'door[0] (admin).spa_commands: must be a table of "command text" = '
                      '["/path/to/program", "arg", ...]'),
    ('{ "x" = ["true"] }', "door[0] (admin).spa_commands.'x': 'true': name the program by its absolute path"),
    ('{ "x" = [] }', "door[0] (admin).spa_commands.'x': must name a program"),
    ('{ "" = ["/bin/true"] }', "door[0] (admin).spa_commands.'': the command text must be 1-200 bytes of "
                               "printable text"),
])
def test_bad_spa_commands_are_one_clear_error(files: dict[str, str], commands: str, error: str) -> None:
    with pytest.raises(ConfigError) as bad:
        loads(config_text(files["spa"], commands), "t.toml")
    assert str(bad.value).endswith(error), str(bad.value)


def test_spa_commands_only_on_an_spa_door(files: dict[str, str]) -> None:
    text = config_text(files["spa"], '{ "x" = ["/bin/true"] }').replace(
        f'spa = true\nkey_file = "{files["spa"]}"\n', 'sequence = ["7000", "8000"]\n')
    with pytest.raises(ConfigError, match="spa_commands"):
        loads(text, "t.toml")


def test_the_door_asks_for_the_command_and_grants_nothing(files: dict[str, str]) -> None:
    cfg = loads(config_text(files["spa"], '{ "restart web" = ["/bin/true"] }'), "t.toml")
    engine, doors = specials(cfg)
    decision = doors.handle(CLIENT_B, GW_B, UDP, 62201, 0, command_packet("restart web"), 1.0, WALL)
    assert isinstance(decision, tuple)
    verdict, reason, events = decision
    assert (verdict, reason) == (Verdict.DROP, Reason.COMPLETED)
    assert CommandAsked("admin", CLIENT, "restart web") in events
    assert not any(isinstance(e, Granted) for e in events) and list(engine.grants()) == []
    refused = doors.handle(CLIENT_B, GW_B, UDP, 62201, 0, command_packet("reboot"), 2.0, WALL)
    assert isinstance(refused, tuple)
    assert refused[0] is Verdict.DROP and not any(isinstance(e, CommandAsked) for e in refused[2])
    assert doors.counts[("admin", "command")] == 1 and doors.counts[("admin", "ok")] == 1


def test_the_runner_runs_the_argv_with_the_address_and_no_shell(tmp_path: Path) -> None:
    cfg_door = loads(config_text(str(tmp_path / "unused"), "{}").replace(
        'spa = true\nkey_file = "' + str(tmp_path / "unused") + '"\n', 'sequence = ["7000"]\n')
        .replace("spa_commands = {}\n", ""), "t.toml").doors[0]
    out = tmp_path / "out"
    runner = CommandRunner()
    try:
        runner.server(CLIENT, cfg_door, ("/bin/sh", "-c", f'echo "$1" >> {out}', "sh", "%IP%; touch x"))
    finally:
        runner.shutdown(wait=True)
    assert lines(out) == [f"{CLIENT}; touch x"]  # one argument, never split or run by a shell
    assert runner.dropped()["server_command"] == 0
