"""The start/stop command runner: one lane per (address, door), in event order, bounded."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gatekeeper.daemon.commands import CommandRunner
from gatekeeper.metrics import GatekeeperCollector, Stats
from gatekeeper.model import Door, Port
from tests.fixtures.commands import lines, wait_for_file

CLIENT = "203.0.113.10"
OTHER = "203.0.113.20"


def door(start: str = "", stop: str = "", timeout: float = 5.0, name: str = "ssh") -> Door:
    """A door whose commands are shell lines (``/bin/sh -c LINE``; "": none)."""
    return Door(name=name, sequence=(Port(6, 7000),), opens=(Port(6, 22),),
                start_command=("/bin/sh", "-c", start) if start else (),
                stop_command=("/bin/sh", "-c", stop) if stop else (), command_timeout=timeout)


def test_a_stop_submitted_at_once_runs_after_its_slow_start(tmp_path: Path) -> None:
    log = tmp_path / "log"
    runner = CommandRunner(workers=4)
    d = door(f"sleep 0.5; echo start %IP% >> {log}", f"echo stop %IP% >> {log}")
    try:
        runner.start(CLIENT, d)
        runner.stop(CLIENT, d)
        runner.start(CLIENT, d)  # a second grant of the same door, ended at once too
        runner.stop(CLIENT, d)
    finally:
        runner.shutdown(wait=True)
    assert lines(log) == [f"start {CLIENT}", f"stop {CLIENT}"] * 2


def test_a_start_that_times_out_is_killed_with_its_children_before_the_stop_runs(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The start leaves a child in its process group; on timeout both are killed, and the
    stop, which looks for the child, finds it gone."""
    log, pid = tmp_path / "log", tmp_path / "pid"
    child_alive = (f'p=$(cat {pid}); if [ -n "$p" ] && [ -e /proc/$p ] '
                   f"&& ! grep -q '^State:[[:space:]]*[ZX]' /proc/$p/status; "
                   f"then echo child alive; else echo child gone; fi >> {log}")
    d = door(f"sleep 60 & echo $! > {pid}; wait", child_alive, timeout=0.5)
    runner = CommandRunner()
    caplog.set_level(logging.ERROR)
    try:
        runner.start(CLIENT, d)
        runner.stop(CLIENT, d)
    finally:
        runner.shutdown(wait=True)
    assert lines(log) == ["child gone"]
    assert ("start_command /bin/sh: killed after 0.5 s with its process group "
            "(door=ssh address=203.0.113.10)") in caplog.text


def test_different_lanes_run_in_parallel(tmp_path: Path) -> None:
    """CLIENT's start waits for a file that OTHER's start writes: both can only succeed
    when the two lanes run at the same time."""
    log, flag = tmp_path / "log", tmp_path / "flag"
    waits = door(f"{wait_for_file(flag)}; [ -e {flag} ] && echo waited %IP% >> {log}")
    writes = door(f"touch {flag}; echo wrote %IP% >> {log}")
    runner = CommandRunner(workers=2)
    try:
        runner.start(CLIENT, waits)
        runner.start(OTHER, writes)
    finally:
        runner.shutdown(wait=True)
    assert sorted(lines(log)) == [f"waited {CLIENT}", f"wrote {OTHER}"]


def test_an_overflow_refuses_new_starts_and_their_stops_never_a_stop_whose_start_ran(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log, go = tmp_path / "log", tmp_path / "go"
    blocker = door(f"{wait_for_file(go)}; echo start %IP% >> {log}", f"echo stop %IP% >> {log}",
                   name="blocker")
    d = door(f"echo start %IP% >> {log}", f"echo stop %IP% >> {log}")
    runner = CommandRunner(workers=1, limit=3)
    caplog.set_level(logging.ERROR)
    try:
        runner.start("192.0.2.1", blocker)  # running: holds the only worker until go exists
        runner.start("192.0.2.2", d)  # not finished: 2
        runner.start("192.0.2.3", d)  # not finished: 3, the limit
        runner.start("192.0.2.4", d)  # refused
        assert runner.dropped() == {"start_command": 1, "stop_command": 0, "server_command": 0}
        assert ("start_command not run: 3 commands waiting or running (the limit); its "
                "stop_command will not run either (door=ssh address=192.0.2.4)") in caplog.text
        runner.stop("192.0.2.4", d)  # its start never ran: nothing to undo
        runner.stop("192.0.2.2", d)  # over the limit, and queued: its start is waiting
        runner.stop("192.0.2.1", blocker)  # its start is running
        runner.start("192.0.2.4", d)  # still full: refused again
        assert runner.dropped() == {"start_command": 2, "stop_command": 1, "server_command": 0}
        assert ("stop_command not run: its start_command was not run "
                "(door=ssh address=192.0.2.4)") in caplog.text
        go.touch()
    finally:
        runner.shutdown(wait=True)
    ran = lines(log)
    assert sorted(ran) == sorted(["start 192.0.2.1", "stop 192.0.2.1", "start 192.0.2.2",
                                  "stop 192.0.2.2", "start 192.0.2.3"])
    for address in ("192.0.2.1", "192.0.2.2"):
        assert ran.index(f"start {address}") < ran.index(f"stop {address}")


def test_a_refused_start_and_its_skipped_stop_are_counted_in_the_metric(tmp_path: Path) -> None:
    go = tmp_path / "go"
    runner = CommandRunner(workers=1, limit=1)
    try:
        runner.start(CLIENT, door(wait_for_file(go), "true"))  # the one command allowed
        runner.start(OTHER, door("true", "true"))
        runner.stop(OTHER, door("true", "true"))
        go.touch()
    finally:
        runner.shutdown(wait=True)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatekeeperCollector(Stats(), dict, lambda: 1, lambda: ["ssh"],
                                          commands_dropped=runner.dropped))
    text = generate_latest(registry).decode()
    assert 'gatekeeper_commands_dropped_total{command="start_command"} 1.0' in text
    assert 'gatekeeper_commands_dropped_total{command="stop_command"} 1.0' in text


def test_a_door_without_commands_runs_nothing_and_a_bad_command_is_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    runner = CommandRunner()
    caplog.set_level(logging.ERROR)
    try:
        runner.start(CLIENT, door())
        runner.stop(CLIENT, door())
        runner.start(CLIENT, door("exit 3", "echo bad >&2; exit 4"))
        runner.stop(CLIENT, door("exit 3", "echo bad >&2; exit 4"))
    finally:
        runner.shutdown(wait=True)
    assert runner.dropped() == {"start_command": 0, "stop_command": 0, "server_command": 0}
    assert [r.getMessage() for r in caplog.records] == [
        "start_command /bin/sh: exit status 3 (door=ssh address=203.0.113.10)",
        "stop_command /bin/sh: exit status 4: bad (door=ssh address=203.0.113.10)"]


def test_after_shutdown_a_stop_still_runs_and_a_start_does_not(tmp_path: Path) -> None:
    log = tmp_path / "log"
    d = door(f"echo start %IP% >> {log}", f"echo stop %IP% >> {log}")
    runner = CommandRunner()
    runner.start(CLIENT, d)
    runner.shutdown(wait=True)
    runner.stop(CLIENT, d)  # a grant that ended while the supervisor stopped
    runner.start(OTHER, d)
    runner.stop(OTHER, d)
    runner.shutdown(wait=True)
    assert lines(log) == [f"start {CLIENT}", f"stop {CLIENT}"]
    assert runner.dropped() == {"start_command": 1, "stop_command": 1, "server_command": 0}
