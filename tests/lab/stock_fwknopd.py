"""Stock fwknopd (Debian's fwknop-server) in the lab's gateway, for the tests that run it
side by side with gatekeeper on the same access.conf and fwknopd.conf."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gatekeeper.lab.netns import GW4, Lab
from tests.fixtures.needs import need_tool
from tests.lab.support import is_open


def opened(lab: Lab, port: int, timeout: float = 6.0) -> bool:
    """Whether the client can connect to the gateway's ``port`` within ``timeout`` (fwknopd
    opens about a second after the packet)."""
    deadline = time.monotonic() + timeout
    while not is_open(lab, "client", GW4, port):
        if time.monotonic() > deadline:
            return False
    return True


def fwknopd(lab: Lab, tmp: Path) -> subprocess.Popen[Any]:
    """Stock fwknopd in the gateway on ``tmp``'s fwknopd.conf and access.conf, in the
    foreground, once it sniffs eth0 (its log: ``tmp``/fwknopd.log)."""
    need_tool("fwknopd", "Debian's fwknop-server, to run the access.conf the importer reads")
    run = tmp / "run"
    run.mkdir()
    log = (tmp / "fwknopd.log").open("w")
    proc = lab.popen("gw", ["fwknopd", "-f", "-i", "eth0", "-c", str(tmp / "fwknopd.conf"),
                            "-a", str(tmp / "access.conf"), "-d", str(run / "digest.cache"),
                            "-p", str(run / "fwknopd.pid"), "-r", str(run)],
                     stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while "Sniffing interface" not in (tmp / "fwknopd.log").read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            lab.stop(proc)
            raise AssertionError("stock fwknopd did not start:\n" + (tmp / "fwknopd.log").read_text())
        time.sleep(0.1)
    time.sleep(0.3)  # its pcap loop is running
    return proc


@contextmanager
def running(lab: Lab, tmp: Path, shut: Iterable[int] = ()) -> Iterator[subprocess.Popen[Any]]:
    """fwknopd running as on its own gateway, where the ``shut`` tcp ports are dropped for
    the clients until it opens them; it and the drops are gone afterwards, even on failure."""
    drops = [["-p", "tcp", "-s", "203.0.113.0/24", "--dport", str(p), "-j", "DROP"] for p in shut]
    added: list[list[str]] = []
    try:
        for rule in drops:
            lab.run("gw", ["iptables", "-A", "INPUT", *rule])
            added.append(rule)
        proc = fwknopd(lab, tmp)
        try:
            yield proc
        finally:
            lab.stop(proc)  # it removes its rules on the way out
    finally:
        for rule in added:
            lab.run("gw", ["iptables", "-D", "INPUT", *rule])
