"""The worker pool against the real kernel: sharding by source, crash recovery,
reload, the exception path and systemd notifications."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.lab.netns import GW4, GW6, Lab
from gatekeeper.spa import fwknop
from tests.fixtures.configs import SSH, config
from tests.lab.support import PROBE, daemon_pid, is_open, knock, probe, queue_stats, snapshot, worker_pids

SOURCES = 40


@pytest.fixture(scope="module")
def sources(lab: Lab) -> list[str]:
    addresses = [f"203.0.113.{150 + i}" for i in range(SOURCES)]
    for address in addresses:
        lab.add_address("client", address)
    return addresses


def test_mixed_protocol_sequences_from_many_sources_all_complete(
    lab: Lab, start_daemon: Any, sources: list[str]
) -> None:
    """tcp and udp knocks of one source must reach one worker. --queue-balance hashes the
    protocol too and would split them; HMARK on the source keeps them together."""
    start_daemon(config(**{"workers = 2": "workers = 2"}))
    before = queue_stats(lab)
    results = probe(lab, "client", "trials", GW4, 22, SOURCES, sources[0], ",".join(SSH))
    after = queue_stats(lab)
    assert sum(r["ok"] for r in results) == SOURCES, [r for r in results if not r["ok"]][:3]
    seen = {q: after[q]["id_sequence"] - before.get(q, {"id_sequence": 0})["id_sequence"]
            for q in (0, 1)}
    assert all(n > 0 for n in seen.values()), f"both workers must take part: {seen}"


def test_sharding_keeps_a_source_on_one_worker_for_ipv6_too(lab: Lab, start_daemon: Any) -> None:
    start_daemon(config())
    knock(lab, "client", GW6, *SSH)
    assert is_open(lab, "client", GW6)


def test_killed_worker_is_restarted_and_no_grant_is_lost(
    lab: Lab, start_daemon: Any, tmp_path: Path
) -> None:
    log = tmp_path / "stop.log"
    extra = f'stop_command = ["/bin/sh", "-c", "echo stop %IP% >> {log}"]\n'
    daemon = start_daemon(config(open_for=4, **{"close_sequence": extra + "close_sequence"}))
    knock(lab, "client", GW4, *SSH)
    daemon.wait_for("grant door=ssh address=203.0.113.10")
    pids = worker_pids(daemon)
    assert set(pids) == {0, 1}, daemon.lines
    for queue, pid in pids.items():
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        daemon.wait_for(rf"NFQUEUE {queue}\) died with signal 9: restarting")
        line = daemon.wait_for(rf"worker \d+ started: pid (?!{pid}\b)\d+, NFQUEUE {queue}", timeout=5)
        print(f"\nworker on queue {queue} back after {time.monotonic() - killed:.3f} s: {line}")
        assert not is_open(lab, "other", GW4), "nobody else gets in while a worker restarts"
        assert is_open(lab, "client", GW4), "the grant survives the worker"
    # The supervisor still owns the grant: it expires it and runs stop_command once.
    daemon.wait_for("revoke door=ssh address=203.0.113.10 cause=expired", timeout=8)
    time.sleep(0.5)
    assert log.read_text().splitlines() == ["stop 203.0.113.10"]
    knock(lab, "client", GW4, *SSH)
    assert is_open(lab, "client", GW4), "new knocks work with the restarted workers"


def test_reload_takes_a_valid_config_and_keeps_grants_and_connections(
    lab: Lab, start_daemon: Any
) -> None:
    daemon = start_daemon(config())
    knock(lab, "client", GW4, *SSH)
    holder = lab.popen("client", [sys.executable, PROBE, "hold", GW4, "22"],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdin is not None and holder.stdout is not None
    assert '"ok": true' in holder.stdout.readline()
    new = config().replace('sequence = ["7000:udp", "8000:tcp", "9000:udp"]',
                           'sequence = ["7100:udp", "7200:udp"]')
    daemon.config.write_text(new)
    os.kill(daemon_pid(daemon), signal.SIGHUP)
    daemon.wait_for("reloaded")
    assert is_open(lab, "client", GW4), "the grant made before the reload still admits"
    holder.stdin.write("ping\n")
    holder.stdin.flush()
    assert '"ok": true' in holder.stdout.readline(), "the established connection carries on"
    knock(lab, "other", GW4, *SSH)
    assert not is_open(lab, "other", GW4), "the old sequence no longer opens"
    knock(lab, "other", GW4, "7100:udp", "7200:udp")
    assert is_open(lab, "other", GW4), "the new sequence does"
    lab.stop(holder)


def test_reload_refuses_an_invalid_config_and_keeps_running(lab: Lab, start_daemon: Any) -> None:
    daemon = start_daemon(config())
    rules = snapshot(lab)
    daemon.config.write_text(config().replace("open_for = 30", "open_for = -1", 1))
    os.kill(daemon_pid(daemon), signal.SIGHUP)
    line = daemon.wait_for("reload refused")
    assert "open_for" in line and str(daemon.config) in line
    assert daemon.proc.poll() is None
    assert snapshot(lab) == rules
    knock(lab, "client", GW4, *SSH)
    assert is_open(lab, "client", GW4), "the old config keeps working"


def test_reload_changes_the_number_of_workers(lab: Lab, start_daemon: Any) -> None:
    daemon = start_daemon(config())
    daemon.config.write_text(config().replace("workers = 2", "workers = 3", 1))
    os.kill(daemon_pid(daemon), signal.SIGHUP)
    daemon.wait_for("reloaded .* queues=0,1,2")
    assert set(queue_stats(lab)) == {0, 1, 2}
    knock(lab, "client", GW4, *SSH)
    assert is_open(lab, "client", GW4)
    daemon.config.write_text(config().replace("workers = 2", "workers = 1", 1))
    os.kill(daemon_pid(daemon), signal.SIGHUP)
    daemon.wait_for("reloaded .* queues=0 ")
    assert set(queue_stats(lab)) == {0}
    knock(lab, "other", GW4, *SSH)
    assert is_open(lab, "other", GW4)
    assert is_open(lab, "client", GW4), "grants live in the kernel set, not in a worker"


def test_reloads_that_change_the_ruleset_let_no_connection_in(lab: Lab, start_daemon: Any) -> None:
    """A SYN to the protected port every 1.5 ms through reloads that change the workers (the
    shard rules), the interfaces and the public ports: each swap is one transaction."""
    daemon = start_daemon(config())
    flood = lab.popen("other", [sys.executable, PROBE, "syns", GW4, "22", "5", "1.5"],
                      stdout=subprocess.PIPE)
    changes = [('workers = 2', 'workers = 3'), ('workers = 2', 'workers = 1'),
               ('public = ["80:tcp"]', 'public = ["80:tcp", "443:tcp"]'),
               ('interfaces = ["eth0"]', 'interfaces = []')]
    for old, new in changes:
        since = len(daemon.lines)
        daemon.config.write_text(config().replace(old, new, 1))
        os.kill(daemon_pid(daemon), signal.SIGHUP)
        daemon.wait_for("reloaded", since=since)
        time.sleep(0.3)
    out, _ = flood.communicate(timeout=30)
    result = json.loads(out)
    assert result["made"] > 1500, result
    assert result["connected"] == 0, f"{result['connected']} connections got in: {result}"
    knock(lab, "client", GW4, *SSH)
    assert is_open(lab, "client", GW4)


# A fault while the worker decides a packet, for SPA datagrams to port 6666: the SPA
# door's handler raises. (The hot path may be compiled with mypyc, whose classes cannot
# be patched, and whose bytes operations ignore a bytes subclass's overrides; the SPA
# doors' module is plain Python, called through its attribute, so the fault goes there.)
_FAULTY = """
import sys
from gatekeeper.engine import special

def handle(*args, **kwargs):
    raise RuntimeError("injected fault")

special.SpecialDoors.handle = handle
from gatekeeper.cli import main
sys.exit(main(["run", "-c", sys.argv[1]]))
"""


def test_exception_in_the_callback_still_gives_a_verdict(
    lab: Lab, start_daemon: Any, tmp_path: Path
) -> None:
    key = tmp_path / "spa.key"
    key.write_text(fwknop.format_key_file(fwknop.SpaKeys(bytes(range(32)), bytes(64), "t")))
    key.chmod(0o600)
    spa = f'[[door]]\nname = "spa"\nspa = true\nspa_port = 6666\nkey_file = "{key}"\nopens = ["2222"]\n'
    daemon = start_daemon(config() + spa, argv=[sys.executable, "-c", _FAULTY, "{config}"])
    stats = queue_stats(lab)
    for _ in range(5):
        knock(lab, "client", GW4, "6666:udp")
    daemon.wait_for("worker failed on a packet; dropped it")
    after = queue_stats(lab)
    assert sum(after[q]["id_sequence"] - stats[q]["id_sequence"] for q in after) >= 5, \
        "the datagrams were queued"
    assert all(after[q]["waiting"] == 0 for q in after), "no packet is left without a verdict"
    assert {q: after[q]["portid"] for q in after} == {q: stats[q]["portid"] for q in stats}, \
        "the worker did not die"
    assert not any("restarting" in ln for ln in daemon.lines)
    knock(lab, "client", GW4, *SSH)
    assert is_open(lab, "client", GW4)


def test_systemd_notifications(lab: Lab, start_daemon: Any, tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    try:
        daemon = start_daemon(config(), env={"NOTIFY_SOCKET": path})
        assert sock.recv(4096).decode().startswith("READY=1")
        os.kill(daemon_pid(daemon), signal.SIGHUP)
        reloading = sock.recv(4096).decode()
        assert reloading.startswith("RELOADING=1") and "MONOTONIC_USEC=" in reloading
        assert sock.recv(4096).decode().startswith("READY=1")
        daemon.stop()
        assert sock.recv(4096).decode() == "STOPPING=1"
    finally:
        sock.close()


def test_sigterm_with_several_workers_removes_everything(lab: Lab, start_daemon: Any) -> None:
    before = snapshot(lab)
    daemon = start_daemon(config(**{"workers = 2": "workers = 3"}))
    knock(lab, "client", GW4, *SSH)
    assert daemon.stop() == 0
    assert snapshot(lab) == before
    assert queue_stats(lab) == {}, "every queue unbound"


def test_status_reads_the_running_daemon(lab: Lab, start_daemon: Any) -> None:
    daemon = start_daemon(config(open_for=40))
    knock(lab, "client", GW4, *SSH)
    daemon.wait_for("grant door=ssh address=203.0.113.10")
    control = re.search(r'control = "([^"]+)"', daemon.config.read_text())
    assert control is not None
    result = subprocess.run([sys.executable, "-m", "gatekeeper", "status", "-s", control.group(1)],
                            capture_output=True, text=True, timeout=10, check=False)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "workers: 2 (restarts 0)" in out
    assert re.search(r"ssh: 3 knocks -> 22:tcp, open_for 40 s", out)
    assert re.search(r"rdp: 3 knocks -> 3389:tcp on 198\.51\.100\.10", out)
    line = re.search(r"203\.0\.113\.10\s+ssh\s+(\d+\.\d) s left", out)
    assert line and 35 < float(line.group(1)) <= 40, out
    as_json = subprocess.run([sys.executable, "-m", "gatekeeper", "status", "--json", "-s",
                              control.group(1)], capture_output=True, text=True, timeout=10,
                             check=False)
    status = json.loads(as_json.stdout)
    assert status["grants"][0]["address"] == "203.0.113.10"
    assert sorted(w["queue"] for w in status["workers"]) == [0, 1]


def test_a_burst_of_failed_knocks_is_one_log_line(lab: Lab, start_daemon: Any) -> None:
    daemon = start_daemon(config())
    mark = len(daemon.lines)
    for _ in range(30):  # the first step, then a wrong one: a reset each time
        knock(lab, "client", GW4, SSH[0], "7001:udp")
    line = daemon.wait_for(r"failed knocks door=ssh count=(\d+) in 10s \(reset", timeout=15, since=mark)
    count = int(re.search(r"count=(\d+)", line).group(1))  # type: ignore[union-attr]
    assert count >= 20
    bursts = [ln for ln in daemon.lines[mark:] if "failed knocks" in ln]
    assert len(bursts) <= 2, "one line per burst, not one per packet"
