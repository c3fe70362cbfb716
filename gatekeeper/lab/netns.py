"""A namespace lab: a gateway, a client, another host and a server behind the gateway.

Used by the demo, the integration tests and the benchmark. Every address is a
documentation address inside namespaces the lab creates; nothing leaves them.
``close()`` kills what the lab started and deletes its namespaces, and runs from
``with Lab() as lab:`` even when the body fails::

    other (203.0.113.20)          +--------- bridge (own namespace) ---------+
    client (203.0.113.10) ------- |                                           |
                                  +-- eth0 203.0.113.1  gateway  eth1 198.51.100.1 -- server
                                                                              (198.51.100.10)
IPv6: 2001:db8:1::/64 on the bridge side, 2001:db8:2::/64 behind the gateway.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any

GW4, GW6 = "203.0.113.1", "2001:db8:1::1"
GW_LAN4, GW_LAN6 = "198.51.100.1", "2001:db8:2::1"
CLIENT4, CLIENT6 = "203.0.113.10", "2001:db8:1::10"
OTHER4, OTHER6 = "203.0.113.20", "2001:db8:1::20"
SERVER4, SERVER6 = "198.51.100.10", "2001:db8:2::10"
HOSTS = ("wan", "gw", "client", "other", "server")

PROGRAMS = "gatekeeper.lab.programs"  # the programs the lab starts: python -m PROGRAMS.NAME


class LabError(RuntimeError):
    pass


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwound like Ctrl-C so that ``with Lab()`` removes the lab then too."""


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` for the body (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        raise Terminated

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class Lab:
    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or f"gk{os.getpid() % 100000}"
        self.procs: list[subprocess.Popen[Any]] = []
        self._made: list[str] = []

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    # -- building -----------------------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _ip(*argv: str) -> None:
        result = subprocess.run(["ip", *argv], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise LabError(f"ip {' '.join(argv)}: {result.stderr.strip()}")

    def _add_hosts(self, hosts: Sequence[str]) -> None:
        """A namespace each (removed by close()), loopback up, no duplicate address detection."""
        if shutil.which("ip") is None:
            raise LabError("the lab needs iproute2's ip command")
        if os.geteuid() != 0:
            raise LabError("the lab needs root to create network namespaces")
        for host in hosts:
            self._ip("netns", "add", self.ns(host))
            self._made.append(host)
            self.sysctl(host, "net.ipv6.conf.all.accept_dad", "0")
            self.sysctl(host, "net.ipv6.conf.default.accept_dad", "0")
            self._ip("-n", self.ns(host), "link", "set", "lo", "up")

    def build(self) -> None:
        self._add_hosts(HOSTS)
        self._ip("-n", self.ns("wan"), "link", "add", "br0", "type", "bridge")
        self._ip("-n", self.ns("wan"), "link", "set", "br0", "up")
        for host, port in (("gw", "p-gw"), ("client", "p-client"), ("other", "p-other")):
            self._ip("link", "add", "eth0", "netns", self.ns(host), "type", "veth",
                     "peer", "name", port, "netns", self.ns("wan"))
            self._ip("-n", self.ns("wan"), "link", "set", port, "master", "br0", "up")
        self._ip("link", "add", "eth1", "netns", self.ns("gw"), "type", "veth",
                 "peer", "name", "eth0", "netns", self.ns("server"))
        self.sysctl("gw", "net.ipv4.ip_forward", "1")
        self.sysctl("gw", "net.ipv6.conf.all.forwarding", "1")
        self._addr("gw", "eth0", GW4, 24, GW6)
        self._addr("gw", "eth1", GW_LAN4, 24, GW_LAN6)
        self._addr("client", "eth0", CLIENT4, 24, CLIENT6)
        self._addr("other", "eth0", OTHER4, 24, OTHER6)
        self._addr("server", "eth0", SERVER4, 24, SERVER6)
        for host, via4, via6 in (("client", GW4, GW6), ("other", GW4, GW6),
                                 ("server", GW_LAN4, GW_LAN6)):
            self._ip("-n", self.ns(host), "route", "add", "default", "via", via4)
            self._ip("-n", self.ns(host), "-6", "route", "add", "default", "via", via6)

    def _addr(self, host: str, dev: str, v4: str, plen: int, v6: str) -> None:
        self._ip("-n", self.ns(host), "addr", "add", f"{v4}/{plen}", "dev", dev)
        self._ip("-n", self.ns(host), "addr", "add", f"{v6}/64", "dev", dev, "nodad")
        self._ip("-n", self.ns(host), "link", "set", dev, "up")

    def add_address(self, host: str, address: str, dev: str = "eth0") -> None:
        plen = 64 if ":" in address else 24
        extra = ["nodad"] if ":" in address else []
        self._ip("-n", self.ns(host), "addr", "add", f"{address}/{plen}", "dev", dev, *extra)

    def sysctl(self, host: str, key: str, value: str) -> None:
        self.run(host, ["sysctl", "-qw", f"{key}={value}"])

    # -- running things -----------------------------------------------------------------

    def argv(self, host: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(host), *argv]

    def run(self, host: str, argv: Sequence[str], *, check: bool = True, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.argv(host, argv), capture_output=True, text=True,
                                timeout=timeout, input=input, check=False)
        if check and result.returncode != 0:
            raise LabError(f"[{host}] {' '.join(argv)}: exit {result.returncode}: "
                           f"{(result.stderr or result.stdout).strip()}")
        return result

    def popen(self, host: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        kwargs.setdefault("text", True)
        proc = subprocess.Popen(self.argv(host, argv), start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def python(self, host: str, code: str, *args: str, timeout: float = 120) -> str:
        return self.run(host, [sys.executable, "-c", code, *args], timeout=timeout).stdout

    @staticmethod
    def program_argv(name: str, *args: str) -> list[str]:
        """The command line of :mod:`gatekeeper.lab.programs` ``name``."""
        return [sys.executable, "-m", f"{PROGRAMS}.{name}", *args]

    def program(self, host: str, name: str, *args: str, timeout: float = 120) -> str:
        """Run :mod:`gatekeeper.lab.programs` ``name`` in ``host``; its stdout."""
        return self.run(host, self.program_argv(name, *args), timeout=timeout).stdout

    def serve_tcp(self, host: str, port: int) -> subprocess.Popen[Any]:
        """A TCP echo service (:mod:`gatekeeper.lab.programs.serve_tcp`) on ``port``, once it listens."""
        proc = self.popen(host, self.program_argv("serve_tcp", str(port)),
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        if not ready or proc.stdout.readline().strip() != "ready":
            raise LabError(f"[{host}] tcp service on {port} did not start within 10 s")
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        return int(proc.returncode)

    def close(self) -> None:
        for proc in reversed(self.procs):
            try:
                self.stop(proc, signal.SIGKILL if proc.poll() is None else signal.SIGTERM, 5)
            except Exception:
                pass
        self.procs.clear()
        for host in reversed(self._made):
            subprocess.run(["ip", "netns", "del", self.ns(host)], capture_output=True, check=False)
        self._made.clear()
        time.sleep(0)  # namespaces go with their last process; nothing else to wait for
