"""Two real gateways, one real redis-server, in network namespaces (gatekeeper.lab.cluster).

The client knocks on either gateway's address, as it would when ECMP sends each flow of
one sequence through a different box, and connects through either. The store is killed
and restarted mid-test.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.cluster.store import script
from gatekeeper.lab.cluster import BACK, GW2_4, STORE4, STORE_PORT, ClusterLab
from gatekeeper.lab.netns import CLIENT4, GW4, OTHER4
from gatekeeper.spa import fwknop
from tests.fixtures.needs import need_root, need_tool
from tests.lab.support import Daemon, knock, probe

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


def start(lab: ClusterLab, host: str, tmp: Path, extra: str = "", url: str = "") -> Daemon:
    where = tmp / host
    where.mkdir(exist_ok=True)
    path = where / "gatekeeper.toml"
    path.write_text(CONFIG.format(control=where / "control.sock", state=where / "state",
                                  url=url or lab.redis_url(), ssh=str(SSH).replace("'", '"'),
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


# The split-sequence test: this many sequences, each from a source of its own, one knock
# per gateway in turn (stock knock), each followed by a connect. The knocks leave
# SPLIT_GAP between them: sent back to back (~1 ms apart) through two boxes, a knock can
# overtake the one before it on the way to the store whatever the gateways do (a worker
# waiting for a CPU on a loaded box is late by a few ms); 20 ms lets each cross its
# gateway before the next is sent, as ECMP clients knocking with `knock -d 20` do.
SPLIT_ROUNDS = 100
SPLIT_NEEDED = 99
SPLIT_GAP = "0.02"
PASSWORD = "lab%2Fs3cret"  # the store's, in the URL's ?password= form (percent-encoded "/")

# Runs in the client: for each source, route both gateways' addresses from it, knock the
# three steps through gw, gw2, gw (or gw2, gw, gw2), $GAP seconds apart, then connect to
# the gateway of the last knock; one line a round: "<source> in" or "<source> out".
_SPLIT = """
set -u
i=0
for src in $SOURCES; do
  if [ $((i % 2)) -eq 0 ]; then a=$GW_A; b=$GW_B; else a=$GW_B; b=$GW_A; fi
  ip route replace $GW_A/32 dev eth0 src $src
  ip route replace $GW_B/32 dev eth0 src $src
  knock $a 7000:udp; sleep $GAP; knock $b 8000:tcp; sleep $GAP; knock $a 9000:udp
  if timeout 1 bash -c "exec 3<>/dev/tcp/$a/22" 2>/dev/null; then echo "$src in"
  else echo "$src out"; fi
  i=$((i + 1))
done
"""


def store_cli(lab: ClusterLab, *args: str) -> str:
    return lab.run("store", ["redis-cli", "-h", STORE4, "-p", str(STORE_PORT), "--no-auth-warning",
                             "-a", PASSWORD.replace("%2F", "/"), *args]).stdout


def warm_workers(lab: ClusterLab, gateway: str) -> int:
    """The connections of this gateway's workers that the store holds now."""
    lines = store_cli(lab, "CLIENT", "LIST").splitlines()
    return sum(1 for line in lines if f" addr={BACK[gateway]}:" in f" {line}"
               and " name=gatekeeper-worker " in f"{line} ")


def test_split_sequences_across_two_gateways_get_in(clab: ClusterLab, tmp_path: Path) -> None:
    """Two gateways, stock knock, one knock per gateway in turn: every worker is connected,
    with its scripts loaded, before its daemon says it is running, so no knock reaches
    the store late (a cold worker's first knock was overtaken by the next one through the
    other gateway). The store's password (?password= form) is printed nowhere, and a bad
    message on the grants channel is counted without costing the mirror its session."""
    need_tool("knock", "the stock knock client (Debian package knockd; scripts/setup.sh)")
    need_tool("redis-cli", "Debian package redis-tools, with redis-server")
    sources = [f"203.0.113.{100 + i}" for i in range(SPLIT_ROUNDS)]
    redis_proc = clab.start_redis(password=PASSWORD.replace("%2F", "/"))
    url = f"{clab.redis_url()}?password={PASSWORD}"
    daemons: list[Daemon] = []
    try:
        knock_sha = hashlib.sha1(script("knock.lua").encode()).hexdigest()
        for host in GATEWAYS:
            daemons.append(start(clab, host, tmp_path, url=url))
            # "gatekeeper running": both workers hold their connection, the scripts are loaded
            assert warm_workers(clab, host) == 2, store_cli(clab, "CLIENT", "LIST")
            assert store_cli(clab, "SCRIPT", "EXISTS", knock_sha).split() == ["1"]
        for source in sources:
            clab.add_address("client", source)
        t0 = time.monotonic()
        out = clab.run("client", ["env", f"SOURCES={' '.join(sources)}", f"GW_A={GW4}",
                                  f"GW_B={GW2_4}", f"GAP={SPLIT_GAP}", "sh", "-c", _SPLIT],
                       timeout=60 + 3 * SPLIT_ROUNDS).stdout
        elapsed = time.monotonic() - t0
        results = dict(line.split() for line in out.splitlines())
        got_in = sum(1 for v in results.values() if v == "in")
        print(f"split sequences: {got_in} of {SPLIT_ROUNDS} got in ({elapsed:.1f} s)")
        assert len(results) == SPLIT_ROUNDS and got_in >= SPLIT_NEEDED, out

        # a message no gateway sends: counted, the mirrors keep their sessions
        resyncs = [sum("cluster: resynced" in line for line in d.lines) for d in daemons]
        store_cli(clab, "PUBLISH", "gatekeeper:grants", "g|x|203.0.113.99|ssh|\u00b2|22:tcp")
        store_cli(clab, "PUBLISH", "gatekeeper:grants", "g|x|203.0.113.99|ssh|3000000000|22:tcp")
        for daemon in daemons:
            daemon.wait_for(r"cluster: ignored an unreadable message", timeout=5)
            daemon.wait_for(r"grant door=ssh address=203\.0\.113\.99 open_for=60s .*mirrored")
        time.sleep(1.0)  # a dropped session would reconnect and resync within this
        assert [sum("cluster: resynced" in line for line in d.lines) for d in daemons] == resyncs
        metrics = clab.run("gw", [sys.executable, "-c",
                                  "import urllib.request; print(urllib.request.urlopen("
                                  "'http://127.0.0.1:9464/metrics').read().decode())"]).stdout
        assert re.search(r"^gatekeeper_cluster_bad_messages_total 1\.0$", metrics, re.M), metrics
        text = status(clab, "gw", daemons[0])
        assert "UP" in text, text
        for printed in [metrics, text, *(line for d in daemons for line in d.lines)]:
            assert "s3cret" not in printed, printed
    finally:
        clab.run("client", ["sh", "-c", f"ip route del {GW4}/32; ip route del {GW2_4}/32; "
                            + "; ".join(f"ip addr del {s}/24 dev eth0" for s in sources)],
                 check=False)
        stop_all(clab, daemons, redis_proc)
