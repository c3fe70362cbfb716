"""One-time sequences with several workers and a file the daemon may not be able to write,
against the real daemon in the namespace lab (gateway 203.0.113.1 guarding eth0)."""

from __future__ import annotations

import itertools
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.lab.netns import GW4, Lab
from tests.lab.support import probe, queue_stats

PORT = 8443
LINE = "5001,5002:udp,5003"
CONFIG = """
[gatekeeper]
queue = 0
workers = 2
interfaces = ["eth0"]

[[door]]
name = "once"
one_time_sequences = "{once}"
opens = ["8443:tcp"]
"""
CANDIDATES = [f"203.0.113.{160 + i}" for i in range(16)]


@pytest.fixture(scope="module")
def served(lab: Lab) -> Lab:
    lab.serve_tcp("gw", PORT)
    for address in CANDIDATES:
        lab.add_address("client", address)
    return lab


def once_file(tmp_path: Path) -> str:
    path = tmp_path / "once.txt"
    path.write_text(f"# one-time sequences\n{LINE}\n6001 6002:udp 6003\n")
    return str(path)


def shard(lab: Lab, source: str) -> int:
    """The queue (worker) that packets of ``source`` are sharded to: the one whose packet
    counter a junk datagram from it moves."""
    before = {q: s["id_sequence"] for q, s in queue_stats(lab).items()}
    code = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "s.bind((sys.argv[1], 0)); s.sendto(b'x', (sys.argv[2], 40000))")
    lab.run("client", [sys.executable, "-c", code, source, GW4])
    moved = [q for q, s in queue_stats(lab).items() if s["id_sequence"] != before.get(q)]
    assert len(moved) == 1, moved
    return moved[0]


def test_a_line_used_on_one_worker_is_refused_on_every_worker_at_once(
        served: Lab, start_daemon: Any, tmp_path: Path) -> None:
    """The victim completes a line; a source sharded to the other worker sends the same line
    straight after (it saw it on the wire): it gets nothing, nor after a restart."""
    lab = served
    once = once_file(tmp_path)
    daemon = start_daemon(CONFIG.format(once=once))
    shards = {a: shard(lab, a) for a in CANDIDATES}
    victim = next(a for a, b in itertools.pairwise(CANDIDATES) if shards[a] != shards[b])
    results = probe(lab, "client", "trials", GW4, PORT, 2, victim, LINE)
    assert results[0]["ok"], f"the victim gets in: {results} {daemon.lines}"
    assert not results[1]["ok"], "the line replayed from another worker's source got in"
    assert sum("grant door=once " in line for line in daemon.lines) == 1, daemon.lines
    assert Path(once).read_text().splitlines()[1] == f"#used# {LINE}"
    daemon.stop()
    lab.run("gw", ["ipset", "destroy"], check=False)  # no grant to adopt after the restart
    again = start_daemon(CONFIG.format(once=once))
    attacker = str(next(a for a in CANDIDATES if a != victim))
    assert not probe(lab, "client", "trials", GW4, PORT, 1, attacker, LINE)[0]["ok"]
    assert probe(lab, "client", "trials", GW4, PORT, 1, attacker, "6001,6002:udp,6003")[0]["ok"], \
        "\n".join(again.lines)


def read_only(argv: list[str], directory: Path) -> list[str]:
    """``argv`` in a mount namespace of its own where ``directory`` is read-only (what the
    unit's ProtectSystem=strict does to every path outside /var/lib/gatekeeper)."""
    d = shlex.quote(str(directory))
    return ["unshare", "-m", "sh", "-c",
            f"mount --bind {d} {d} && mount -o remount,ro,bind {d} && exec {shlex.join(argv)}"]


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_one_time_file_the_daemon_cannot_write_is_refused(
        served: Lab, tmp_path: Path, command: str) -> None:
    lab = served
    files = tmp_path / "files"
    files.mkdir()
    once = once_file(files)
    config = tmp_path / "gatekeeper.toml"
    config.write_text(CONFIG.format(once=once).replace(
        "[gatekeeper]\n", f'[gatekeeper]\ncontrol = "{tmp_path}/control.sock"\n'
                          f'state_dir = "{tmp_path}/state"\n', 1))
    argv = read_only([sys.executable, "-m", "gatekeeper", command, "-c", str(config)], files)
    proc = lab.popen("gw", argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        lab.stop(proc)
        _, err = proc.communicate()
    finally:
        lab.run("gw", [sys.executable, "-c", "from gatekeeper.netfilter.install import Installer; "
                       "Installer().remove()"], check=False)
    assert proc.returncode == 2, (proc.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert once in lines[0] and "write" in lines[0], lines[0]
    assert "gatekeeper" not in lab.run("gw", ["iptables-save"]).stdout.lower()
    assert Path(once).read_text().splitlines()[1] == LINE, "the file is untouched"
