"""A namespace lab with two gateways sharing a Redis store, and a redis-server starter.

Used by the cluster tests and ``gatekeeper bench --cluster``. The client knocks on either
gateway's address; both gateways reach the store over a backend bridge::

    client (203.0.113.10)  other (203.0.113.20)
          |                      |
    +----------- wan bridge (own namespace) ------------+
          |                             |
    eth0 203.0.113.1  gw        eth0 203.0.113.2  gw2
    eth1 198.51.100.1 |         eth1 198.51.100.2 |
    +----------- back bridge (own namespace) -----------+
                        |
                 store 198.51.100.100 (redis-server)

IPv6: 2001:db8:1::/64 on the wan side. Bridges live in namespaces of their own, so no
gateway answers ARP for the other. Every address is a documentation address.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from typing import Any

from gatekeeper.lab.netns import CLIENT4, CLIENT6, GW4, GW6, OTHER4, OTHER6, Lab, LabError

GW2_4, GW2_6 = "203.0.113.2", "2001:db8:1::2"
BACK = {"gw": "198.51.100.1", "gw2": "198.51.100.2"}
STORE4 = "198.51.100.100"
STORE_PORT = 6390
CLUSTER_HOSTS = ("wan", "back", "gw", "gw2", "client", "other", "store")


class ClusterLab(Lab):
    """Two gateways (``gw``, ``gw2``) in front of the same clients, one store behind."""

    def build(self) -> None:
        self._add_hosts(CLUSTER_HOSTS)
        for bridge in ("wan", "back"):
            self._ip("-n", self.ns(bridge), "link", "add", "br0", "type", "bridge")
            self._ip("-n", self.ns(bridge), "link", "set", "br0", "up")
        links = (("gw", "eth0", "wan", "p-gw"), ("gw2", "eth0", "wan", "p-gw2"),
                 ("client", "eth0", "wan", "p-client"), ("other", "eth0", "wan", "p-other"),
                 ("gw", "eth1", "back", "b-gw"), ("gw2", "eth1", "back", "b-gw2"),
                 ("store", "eth0", "back", "b-store"))
        for host, dev, bridge, port in links:
            self._ip("link", "add", dev, "netns", self.ns(host), "type", "veth",
                     "peer", "name", port, "netns", self.ns(bridge))
            self._ip("-n", self.ns(bridge), "link", "set", port, "master", "br0", "up")
        self._addr("gw", "eth0", GW4, 24, GW6)
        self._addr("gw2", "eth0", GW2_4, 24, GW2_6)
        self._addr("client", "eth0", CLIENT4, 24, CLIENT6)
        self._addr("other", "eth0", OTHER4, 24, OTHER6)
        for host in ("gw", "gw2"):
            self._ip("-n", self.ns(host), "addr", "add", f"{BACK[host]}/24", "dev", "eth1")
            self._ip("-n", self.ns(host), "link", "set", "eth1", "up")
        self._ip("-n", self.ns("store"), "addr", "add", f"{STORE4}/24", "dev", "eth0")
        self._ip("-n", self.ns("store"), "link", "set", "eth0", "up")

    def start_redis(self, port: int = STORE_PORT, password: str = "") -> subprocess.Popen[Any]:
        """A redis-server in the store namespace (no persistence), once it accepts."""
        return start_redis(self, "store", STORE4, port, password=password)

    def redis_url(self, port: int = STORE_PORT) -> str:
        return f"redis://{STORE4}:{port}/0"


def redis_argv(bind: str, port: int, workdir: str, password: str = "") -> list[str]:
    return ["redis-server", "--bind", bind, "--port", str(port), "--save", "", "--appendonly", "no",
            "--protected-mode", "no", "--daemonize", "no", "--dir", workdir, "--logfile", "",
            *(["--requirepass", password] if password else [])]


def start_redis(lab: Lab | None, host: str, bind: str, port: int, timeout: float = 10.0,
                sentinel_of: tuple[str, str, int] | None = None,
                password: str = "") -> subprocess.Popen[Any]:
    """Start a redis-server (in ``lab``'s namespace ``host``, or here without a lab) and
    wait until it accepts connections. The caller stops it (``Lab.stop``, or kill).
    ``sentinel_of=(service, host, port)``: a Sentinel monitoring that master instead;
    ``password``: the server asks clients for it (requirepass)."""
    if shutil.which("redis-server") is None:
        raise LabError("redis-server not found (Debian package redis-server; scripts/setup.sh)")
    workdir = tempfile.mkdtemp(prefix="gk-redis-")
    argv = redis_argv(bind, port, workdir, password)
    marker = b"Ready to accept connections"
    if sentinel_of is not None:
        conf = os.path.join(workdir, "sentinel.conf")  # (sentinel rewrites it: its own file)
        with open(conf, "w", encoding="utf-8") as f:
            f.write(f"port {port}\nbind {bind}\ndir {workdir}\nsentinel monitor {sentinel_of[0]} "
                    f"{sentinel_of[1]} {sentinel_of[2]} 1\n")
        argv = ["redis-server", conf, "--sentinel"]
        marker = b"+monitor master"
    if lab is not None:
        proc = lab.popen(host, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=False)
    else:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    seen = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            seen += chunk
            if marker in seen:
                # keep reading its log, or a full pipe would stall it
                threading.Thread(target=_drain, args=(fd,), daemon=True).start()
                return proc
    proc.kill()
    proc.wait(5)
    tail = " / ".join(seen.decode(errors="replace").splitlines()[-3:])
    raise LabError(f"redis-server on {bind}:{port} did not start within {timeout:g} s: {tail}")


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
