"""The control socket: only a stale socket at the configured path is replaced."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gatekeeper import cli
from gatekeeper.daemon.control import ControlServer, request
from gatekeeper.errors import GatekeeperError
from tests.fixtures.configs import config


def answer(what: str) -> dict[str, Any]:
    return {"asked": what}


@pytest.fixture
def servers() -> Iterator[list[ControlServer]]:
    made: list[ControlServer] = []
    yield made
    for server in made:
        server.close()


def serve_once(server: ControlServer, path: Path) -> dict[str, Any]:
    """A status request answered by ``server`` (the client in a thread of its own)."""
    import threading

    out: dict[str, Any] = {}
    client = threading.Thread(target=lambda: out.update(request(str(path), timeout=5)))
    client.start()
    for _ in range(500):  # bounded: 5 s
        server.handle()
        client.join(0.01)
        if not client.is_alive():
            break
    client.join(5)
    return out


def stale_socket(path: Path) -> None:
    """A socket file nobody listens on, as a killed daemon leaves it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()


def test_a_stale_socket_is_replaced(tmp_path: Path, servers: list[ControlServer]) -> None:
    path = tmp_path / "control.sock"
    stale_socket(path)
    servers.append(ControlServer(str(path), answer))
    assert serve_once(servers[0], path) == {"asked": "status"}


def test_a_live_socket_is_refused_and_keeps_serving(tmp_path: Path, servers: list[ControlServer]) -> None:
    path = tmp_path / "control.sock"
    servers.append(ControlServer(str(path), answer))
    with pytest.raises(GatekeeperError) as refused:
        ControlServer(str(path), answer)
    assert str(refused.value) == f"control socket {path}: another gatekeeper is running there"
    assert serve_once(servers[0], path) == {"asked": "status"}


@pytest.mark.parametrize("what", ["a regular file", "a directory", "a symbolic link", "a fifo"])
def test_anything_but_a_socket_is_refused_and_left_alone(tmp_path: Path, what: str) -> None:
    path = tmp_path / "control.sock"
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    if what == "a regular file":
        path.write_text("keep me\n")
    elif what == "a directory":
        path.mkdir()
        (path / "inside").write_text("keep me\n")
    elif what == "a symbolic link":
        stale_socket(tmp_path / "stale.sock")  # even to a stale socket: never followed
        path.symlink_to(tmp_path / "stale.sock")
    else:
        os.mkfifo(path)
    before = os.lstat(path)
    with pytest.raises(GatekeeperError) as refused:
        ControlServer(str(path), answer)
    message = str(refused.value)
    assert message == (f"control socket {path}: {what} is there, not a socket; remove it or "
                       "set [gatekeeper] control to another path")
    assert "\n" not in message
    after = os.lstat(path)
    assert (after.st_ino, after.st_mode, after.st_mtime_ns) == (before.st_ino, before.st_mode,
                                                                before.st_mtime_ns)
    if what == "a regular file":
        assert path.read_text() == "keep me\n"
    if what == "a directory":
        assert (path / "inside").read_text() == "keep me\n"
    assert target.read_text() == "keep me\n"


def test_status_says_when_no_daemon_runs_and_names_the_socket(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "none.sock"
    assert cli.main(["status", "-s", str(missing)]) == 3
    assert capsys.readouterr() == ("", f"gatekeeper status: no gatekeeper is running on {missing} "
                                       "(no such socket)\n")
    stale_socket(tmp_path / "stale.sock")
    assert cli.main(["status", "-s", str(tmp_path / "stale.sock")]) == 3
    assert "(a stale socket: connection refused)" in capsys.readouterr().err


def test_status_of_a_config_without_a_control_socket_is_an_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gatekeeper.toml"
    path.write_text(config().replace("[gatekeeper]\n", '[gatekeeper]\ncontrol = ""\n', 1))
    assert cli.main(["status", "-c", str(path)]) == 2
    assert capsys.readouterr().err == (f'gatekeeper: {path}: [gatekeeper] control = "": its daemon has '
                                       "no control socket to ask\n")
