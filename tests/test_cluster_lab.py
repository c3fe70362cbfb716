"""Two real gateways, one real redis-server, in network namespaces (gatekeeper.lab_cluster).

The client knocks on either gateway's address, as it would when ECMP sends each flow of
one sequence through a different box, and connects through either. The store is killed
and restarted mid-test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.lab import CLIENT4, GW4, OTHER4
from gatekeeper.lab_cluster import GW2_4, ClusterLab
from gatekeeper.spa import fwknop
from tests.conftest import Daemon, knock, need_root, probe

pytestmark = pytest.mark.lab

SSH = ["7000:udp", "8000:tcp", "9000:udp"]
CLOSE = ["9000:tcp", "8000:udp", "7000:tcp"]
GATEWAYS = {"gw": GW4, "gw2": GW2_4}
# A grant made through one gateway is in the other's kernel set within this long (README).
MIRROR_SECONDS = 1.0

CONFIG = """
[gatekeeper]
control = "{control}"
state_dir = "{state}"
queue = 0
workers = 2
interfaces = ["eth0"]

[cluster]
redis = "{url}"
timeout_ms = 100

[[door]]
name = "ssh"
sequence = {ssh}
sequence_timeout = 5
opens = ["22:tcp"]
open_for = 60
close_sequence = {close}
{extra}"""
# An SPA door opening two ports: a request asks for one or both.
SPA_DOOR = """
[[door]]
name = "spa"
spa = true
key_file = "{key_file}"
opens = ["22:tcp", "80:tcp"]
open_for = 60
"""


@pytest.fixture(scope="module")
def clab() -> Iterator[ClusterLab]:
    need_root()
    with ClusterLab(f"gkc{os.getpid() % 10000}") as built:
        for host in GATEWAYS:
            built.serve_tcp(host, 22)
            built.serve_tcp(host, 80)
        yield built


def start(lab: ClusterLab, host: str, tmp: Path, extra: str = "") -> Daemon:
    where = tmp / host
    where.mkdir(exist_ok=True)
    path = where / "gatekeeper.toml"
    path.write_text(CONFIG.format(control=where / "control.sock", state=where / "state",
                                  url=lab.redis_url(), ssh=str(SSH).replace("'", '"'),
                                  close=str(CLOSE).replace("'", '"'), extra=extra))
    daemon = Daemon(lab, path, host=host)
    daemon.wait_for("gatekeeper running", timeout=20)
    return daemon


def is_open(lab: ClusterLab, host: str, target: str, port: int = 22) -> bool:
    return bool(probe(lab, host, "connect", target, port)["ok"])


def in_set(lab: ClusterLab, gateway: str, address: str, port: int = 22) -> bool:
    text = lab.run(gateway, ["ipset", "list", "gatekeeper-in4"]).stdout
    return re.search(rf"^{re.escape(address)},tcp:{port} ", text, re.M) is not None


def wait_in_set(lab: ClusterLab, gateway: str, address: str, timeout: float,
                port: int = 22) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if in_set(lab, gateway, address, port):
            return True
        time.sleep(0.02)
    return in_set(lab, gateway, address, port)


def status(lab: ClusterLab, gateway: str, daemon: Daemon) -> str:
    control = daemon.config.parent / "control.sock"
    return lab.run(gateway, [sys.executable, "-m", "gatekeeper", "status", "--socket",
                             str(control)]).stdout


def stop_all(clab: ClusterLab, daemons: list[Daemon], redis_proc: subprocess.Popen[Any]) -> None:
    """Stop the daemons, remove what any of them left installed, kill the store."""
    for daemon in daemons:
        daemon.stop()
    for host in GATEWAYS:
        clab.run(host, [sys.executable, "-c", "from gatekeeper.netfilter.install import "
                        "Installer; Installer().remove()"], check=False)
    clab.stop(redis_proc, 9)


def test_two_gateways_share_knocks_grants_survive_the_store_and_close(clab: ClusterLab,
                                                               tmp_path: Path) -> None:
    redis_proc = clab.start_redis()
    daemons: list[Daemon] = []
    try:
        daemons = [start(clab, host, tmp_path) for host in GATEWAYS]
        for daemon in daemons:
            daemon.wait_for("cluster: connected to the store", timeout=10)
        assert not is_open(clab, "client", GW4) and not is_open(clab, "client", GW2_4)

        # 1. a sequence whose knocks alternate between the two gateways completes
        for step, target in zip(SSH, (GW4, GW2_4, GW4), strict=True):
            knock(clab, "client", target, step)
        assert is_open(clab, "client", GW4), "the gateway that saw the last knock admits"
        # 2. ... and the other gateway admits it too: its mirror wrote its kernel set
        assert wait_in_set(clab, "gw2", CLIENT4, MIRROR_SECONDS)
        assert is_open(clab, "client", GW2_4)
        daemons[1].wait_for(r"grant door=ssh address=203\.0\.113\.10 .* mirrored")
        assert not is_open(clab, "other", GW4) and not is_open(clab, "other", GW2_4)

        # 3. the store dies: existing grants keep working, nobody else gets in
        seen = [len(d.lines) for d in daemons]
        clab.stop(redis_proc, 9)
        for daemon, since in zip(daemons, seen, strict=True):
            daemon.wait_for("cluster: lost the store", timeout=10, since=since)
        assert is_open(clab, "client", GW4) and is_open(clab, "client", GW2_4)
        for target in (GW4, GW2_4, GW4):  # a full sequence on one box, and alternating
            knock(clab, "other", target, *SSH)
        for step, target in zip(SSH, (GW2_4, GW4, GW2_4), strict=True):
            knock(clab, "other", target, step)
        assert not is_open(clab, "other", GW4) and not is_open(clab, "other", GW2_4)
        assert not in_set(clab, "gw", OTHER4) and not in_set(clab, "gw2", OTHER4)
        text = status(clab, "gw", daemons[0])
        assert "cluster: store" in text and "DOWN" in text, text

        # 4. the store returns: both reconnect and resync by themselves, knocks are shared again
        seen = [len(d.lines) for d in daemons]
        redis_proc = clab.start_redis()
        for daemon, since in zip(daemons, seen, strict=True):
            daemon.wait_for("cluster: connected to the store", timeout=10, since=since)
            daemon.wait_for("cluster: resynced", timeout=10, since=since)
        time.sleep(1.1)  # the workers' circuit breakers close after their pause
        for step, target in zip(SSH, (GW2_4, GW4, GW2_4), strict=True):
            knock(clab, "other", target, step)
        assert is_open(clab, "other", GW2_4)
        assert wait_in_set(clab, "gw", OTHER4, MIRROR_SECONDS)
        assert is_open(clab, "other", GW4)
        assert "UP" in status(clab, "gw2", daemons[1])
        metrics = clab.run("gw", [sys.executable, "-c",
                                  "import urllib.request; print(urllib.request.urlopen("
                                  "'http://127.0.0.1:9464/metrics').read().decode())"]).stdout
        assert 'gatekeeper_cluster_state{state="up"} 1.0' in metrics
        assert re.search(r"^gatekeeper_cluster_fallbacks_total\{mode=\"closed\"\} [1-9]", metrics, re.M)
        assert re.search(r"^gatekeeper_cluster_errors_total [1-9]", metrics, re.M)

        # 5. a close sequence completed through the other box shuts both (gw2 made the grant:
        # its engine must forget it too, or it would admit from the queue)
        for step, target in zip(CLOSE, (GW2_4, GW2_4, GW4), strict=True):
            knock(clab, "other", target, step)
        daemons[1].wait_for(r"revoke door=ssh address=203\.0\.113\.20 cause=closed", timeout=5)
        assert not is_open(clab, "other", GW4) and not is_open(clab, "other", GW2_4)
        assert is_open(clab, "client", GW4), "the client's grant is its own"
    finally:
        stop_all(clab, daemons, redis_proc)


def test_spa_grant_through_one_gateway_opens_the_asked_port_alone_on_both(
        clab: ClusterLab, tmp_path: Path) -> None:
    key_file = tmp_path / "spa.key"
    key_file.write_text(fwknop.format_key_file(fwknop.generate_keys()))
    key_file.chmod(0o600)
    extra = SPA_DOOR.format(key_file=key_file)

    def spa(access: str, target: str) -> None:
        clab.run("client", [sys.executable, "-m", "gatekeeper", "spa", "--key-file",
                            str(key_file), "-A", access, target])

    redis_proc = clab.start_redis()
    daemons: list[Daemon] = []
    try:
        daemons = [start(clab, host, tmp_path, extra) for host in GATEWAYS]
        for daemon in daemons:
            daemon.wait_for("cluster: connected to the store", timeout=10)
        # an SPA packet through gw asking for tcp/22 on a door that opens 22 and 80
        spa("tcp/22", GW4)
        assert is_open(clab, "client", GW4) and not is_open(clab, "client", GW4, 80)
        assert wait_in_set(clab, "gw2", CLIENT4, MIRROR_SECONDS)
        daemons[1].wait_for(r"grant door=spa address=203\.0\.113\.10 open_for=\d+s "
                            r"opens=22:tcp mirrored$")
        assert is_open(clab, "client", GW2_4)
        # gw2 opens 22 alone too: 80 is neither mirrored nor admitted by the store lookup
        assert not in_set(clab, "gw2", CLIENT4, 80)
        assert not is_open(clab, "client", GW2_4, 80)
        # a second request, for 80 through gw2: both gateways open it, 22 stays open
        spa("tcp/80", GW2_4)
        assert is_open(clab, "client", GW2_4, 80)
        assert wait_in_set(clab, "gw", CLIENT4, MIRROR_SECONDS, 80)
        assert is_open(clab, "client", GW4, 80)
        assert is_open(clab, "client", GW4) and is_open(clab, "client", GW2_4)
        assert in_set(clab, "gw", CLIENT4) and in_set(clab, "gw2", CLIENT4)
        assert not is_open(clab, "other", GW4) and not is_open(clab, "other", GW2_4, 80)
    finally:
        stop_all(clab, daemons, redis_proc)
