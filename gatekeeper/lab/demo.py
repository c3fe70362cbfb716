"""``gatekeeper demo``: the real daemon in a namespace lab, step by step, as it happens.

A door "ssh" (7000:udp 8000:tcp 9000:udp -> 22:tcp) guards the lab's gateway. The demo
shows that port 22 is shut before the knock, open for the client's very first SYN right
after it, still shut for a host that did not knock, shut again for new connections once
the grant expired while the connection made during the grant keeps working, and that
stopping the daemon leaves the gateway's iptables exactly as it found them.

Every packet stays inside the lab's namespaces, which are removed on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from gatekeeper.client.knock import FIRST_SYN_TIMEOUT
from gatekeeper.lab.netns import CLIENT4, GW4, OTHER4, PROGRAMS, Lab, LabError, Terminated, sigterm_unwinds

PORT = 22
KNOCK = ("7000:udp", "8000:tcp", "9000:udp")
OPEN_TIMEOUT = 3.0  # long enough to tell "first SYN dropped, retransmit accepted" apart
START_TIMEOUT = 20.0
_LOG_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")
_COUNTERS = re.compile(r"\[\d+:\d+\]")

class DemoFailure(Exception):
    """A step did not behave as expected; the message is one line for the user."""


class Console:
    """Prints one line per event with the time since the demo started; thread-safe."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self._lock = threading.Lock()

    def say(self, text: str) -> None:
        with self._lock:
            print(f"[{time.monotonic() - self.start:6.2f}s] {text}", flush=True)


def _read_lines(stream: IO[str], on_line: Callable[[str], None], on_eof: Callable[[], None]) -> None:
    try:
        for line in stream:
            on_line(line.rstrip("\n"))
    except (OSError, ValueError):  # the pipe was closed under us while the lab went away
        pass
    finally:
        on_eof()


class DaemonLog:
    """Reads the daemon's stderr in a thread, relays grants, revokes and problems as they
    arrive and lets the demo wait for a line."""

    RELAY = ("grant ", "revoke ", "rules, chains and sets removed")

    def __init__(self, stream: IO[str], console: Console) -> None:
        self.console = console
        self.lines: list[str] = []
        self.closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(
            target=_read_lines, args=(stream, self._on_line, self._on_eof),
            name="daemon-log", daemon=True,
        )
        self._thread.start()

    def _on_line(self, raw: str) -> None:
        line = _LOG_TIME.sub("", raw)
        level, _, message = line.partition(" ")
        if message.startswith(self.RELAY) or level in ("WARNING", "ERROR", "CRITICAL"):
            self.console.say(f"4. daemon | {line if level != 'INFO' else message}")
        with self._cond:
            self.lines.append(line)
            self._cond.notify_all()

    def _on_eof(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def has(self, needle: str) -> bool:
        with self._cond:
            return any(needle in line for line in self.lines)

    def wait_for(self, needle: str, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: self.closed or any(needle in line for line in self.lines), timeout
            ) and any(needle in line for line in self.lines)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def last(self) -> str:
        with self._cond:
            return self.lines[-1] if self.lines else "no output"


class Helper:
    """The connection helper (:mod:`gatekeeper.lab.programs.connect_helper`) in one of the
    lab's namespaces: a connection it makes can be held open across the demo's steps."""

    def __init__(self, lab: Lab, host: str) -> None:
        self.lab = lab
        self.host = host
        self.proc: subprocess.Popen[str] = lab.popen(
            host, [sys.executable, "-u", "-m", f"{PROGRAMS}.connect_helper"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self._replies: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(
            target=_read_lines, args=(self.proc.stdout, self._replies.put, lambda: self._replies.put(None)),
            name=f"helper-{host}", daemon=True,
        ).start()
        self._receive(10.0)

    def _receive(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise DemoFailure(f"the connection helper in {self.host} did not answer within "
                              f"{timeout:g} s") from None
        if line is None:
            self.proc.wait(5)
            assert self.proc.stderr is not None
            err = [ln for ln in self.proc.stderr.read().splitlines() if ln.strip()]
            raise DemoFailure(f"the connection helper in {self.host} exited "
                              f"({self.proc.returncode}): {err[-1] if err else 'no message'}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def ask(self, command: str, timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except OSError:
            pass  # it died: _receive reports how
        return self._receive(timeout + 5.0)

    def connect(self, port: int, timeout: float, keep: bool = False) -> dict[str, Any]:
        return self.ask(f"connect {GW4} {port} {timeout} {'keep' if keep else 'drop'}", timeout)

    def echo(self, text: str) -> dict[str, Any]:
        return self.ask(f"echo {text}", 3.0)


def _config(open_for: int, control: str) -> str:
    sequence = ", ".join(f'"{s}"' for s in KNOCK)
    return (
        "# written by gatekeeper demo\n"
        "[gatekeeper]\n"
        'interfaces = ["eth0"]\n'
        f'control = "{control}"  # not the system daemon\'s /run/gatekeeper\n'
        'public = ["80:tcp"]\n'
        "\n[[door]]\n"
        'name = "ssh"\n'
        f"sequence = [{sequence}]\n"
        f'opens = ["{PORT}:tcp"]\n'
        f"open_for = {open_for}\n"
    )


def _netfilter_state(lab: Lab) -> dict[str, list[str]]:
    """What the daemon must leave as it found it: both families' rules (without comments
    and packet counters, which change by themselves) and the names of the ipsets."""
    state: dict[str, list[str]] = {}
    for tool in ("iptables-save", "ip6tables-save"):
        out = lab.run("gw", [tool]).stdout
        state[tool] = [_COUNTERS.sub("[0:0]", ln) for ln in out.splitlines()
                       if ln.strip() and not ln.startswith("#")]
    state["ipset list -n"] = sorted(lab.run("gw", ["ipset", "list", "-n"]).stdout.split())
    return state


def _shut(result: dict[str, Any]) -> str:
    return f"shut ({result.get('error', '?')} after {result.get('ms', 0):.0f} ms)"


def _start_daemon(lab: Lab, cfg: str, console: Console) -> tuple[subprocess.Popen[str], DaemonLog]:
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    argv = [sys.executable, "-m", "gatekeeper", "run", "-c", cfg]
    console.say(f"starting the daemon in the gateway: {shlex.join(['gatekeeper', *argv[3:]])}")
    proc: subprocess.Popen[str] = lab.popen(
        "gw", argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    log = DaemonLog(proc.stderr, console)
    deadline = time.monotonic() + START_TIMEOUT
    while not log.wait_for("gatekeeper running", 0.1):
        if proc.poll() is not None:
            log.join(2.0)
            raise DemoFailure(f"the daemon exited ({proc.returncode}) before it was running: "
                              f"{log.last()}")
        if time.monotonic() > deadline:
            raise DemoFailure(f"the daemon did not log 'gatekeeper running' within "
                              f"{START_TIMEOUT:g} s; last line: {log.last()}")
    console.say("daemon running: rules installed, unmatched packets on eth0 now go to it over NFQUEUE")
    return proc, log


def _run(lab: Lab, open_for: int, tmp: str, console: Console) -> None:
    console.say(f"lab up: gateway {GW4} (eth0), client {CLIENT4}, other host {OTHER4}")
    cfg = os.path.join(tmp, "demo.toml")
    with open(cfg, "w", encoding="utf-8") as f:
        f.write(_config(open_for, os.path.join(tmp, "control.sock")))
    lab.serve_tcp("gw", PORT)
    console.say(f"echo service listening on the gateway's port {PORT}; door ssh: "
                f"{' '.join(KNOCK)} -> {PORT}:tcp for {open_for} s")
    before = _netfilter_state(lab)
    client = Helper(lab, "client")
    other = Helper(lab, "other")
    daemon, log = _start_daemon(lab, cfg, console)

    # 1. Before knocking: shut.
    r = client.connect(PORT, FIRST_SYN_TIMEOUT)
    if r["ok"]:
        raise DemoFailure(f"step 1: the client reached port {PORT} without knocking")
    console.say(f"1. client {CLIENT4} -> {GW4}:{PORT} before knocking: {_shut(r)}")

    # 2. Knock, then connect at once: the very first SYN must be accepted.
    knock = [sys.executable, "-m", "gatekeeper", "knock", GW4, *KNOCK]
    console.say(f"2. client knocks: {shlex.join(['gatekeeper', *knock[3:]])}")
    lab.run("client", knock, timeout=30)
    knocked = time.monotonic()
    r = client.connect(PORT, OPEN_TIMEOUT, keep=True)
    if not r["ok"]:
        raise DemoFailure(f"step 2: the client could not connect right after knocking: {_shut(r)}")
    if r["ms"] >= 900:
        raise DemoFailure(f"step 2: the client connected only after {r['ms']:.0f} ms: its first SYN "
                          "was dropped, the grant was not in place when the knock was verdicted")
    console.say(f"2. client {CLIENT4} -> {GW4}:{PORT} right after the knock: "
                f"connected in {r['ms']:.1f} ms (first SYN accepted)")
    e = client.echo("hello-from-the-client")
    if not e["ok"]:
        raise DemoFailure(f"step 2: no echo on the new connection: {e.get('error', e.get('reply'))}")
    console.say(f"2. client sends a line on it: echoed back {e['reply']!r}; connection kept open")
    if not log.wait_for(f"grant door=ssh address={CLIENT4}", 2.0):
        raise DemoFailure("step 2: the daemon logged no grant for the client")

    # 3. Another host that did not knock: shut.
    r = other.connect(PORT, FIRST_SYN_TIMEOUT)
    if r["ok"]:
        raise DemoFailure(f"step 3: {OTHER4} reached port {PORT} without knocking")
    console.say(f"3. other {OTHER4} -> {GW4}:{PORT} without knocking: {_shut(r)}")

    # 5. After the grant expired: new connections shut, the established one still works.
    wait = knocked + open_for + 1.0 - time.monotonic()
    console.say(f"5. waiting {max(wait, 0):.1f} s for the grant to expire (open_for {open_for} s + 1 s)")
    if wait > 0:
        time.sleep(wait)
    if not log.wait_for(f"revoke door=ssh address={CLIENT4} cause=expired", 3.0):
        raise DemoFailure("step 5: the daemon did not log the grant's expiry")
    r = client.connect(PORT, FIRST_SYN_TIMEOUT)
    if r["ok"]:
        raise DemoFailure("step 5: the client opened a new connection after its grant expired")
    console.say(f"5. client {CLIENT4} -> {GW4}:{PORT}, new connection after expiry: {_shut(r)}")
    e = client.echo("still-here")
    if not e["ok"]:
        raise DemoFailure("step 5: the connection established during the grant stopped working: "
                          f"{e.get('error', e.get('reply'))}")
    console.say(f"5. client's connection from step 2 still works: echoed back {e['reply']!r}")
    if log.has(f"address={OTHER4}"):
        raise DemoFailure(f"step 3: the daemon logged a grant or revoke for {OTHER4}")

    _stop(lab, daemon, log, before, console)


def _stop(lab: Lab, daemon: subprocess.Popen[str], log: DaemonLog, before: dict[str, list[str]],
          console: Console) -> None:
    """6. Stop the daemon: everything it installed goes."""
    console.say("6. stopping the daemon with SIGTERM")
    code = Lab.stop(daemon, signal.SIGTERM, 15)
    log.join(5.0)
    if code != 0:
        raise DemoFailure(f"step 6: the daemon exited with {code}: {log.last()}")
    console.say("6. daemon exited 0")
    after = _netfilter_state(lab)
    changed = [name for name in before if before[name] != after[name]]
    if changed:
        name = changed[0]
        extra = sorted((ln for ln in after[name] if ln not in before[name]),
                       key=lambda ln: "gatekeeper" not in ln.lower())  # ours first
        missing = [ln for ln in before[name] if ln not in after[name]]
        raise DemoFailure(f"step 6: rules removed: no: {', '.join(changed)} differ from before the "
                          f"start (left: {extra[:3]}, gone: {missing[:3]})")
    console.say("6. rules removed: yes (iptables-save, ip6tables-save and ipset list in the gateway "
                "read as before the start)")


def main(args: argparse.Namespace) -> int:
    open_for = int(args.open_for)
    if not 1 <= open_for <= 600:
        print("gatekeeper demo: --open-for must be 1-600 seconds", file=sys.stderr)
        return 2
    console = Console()
    print(f"gatekeeper demo: door ssh ({' '.join(KNOCK)} -> {PORT}:tcp, open_for {open_for} s) "
          "on a namespace lab; nothing leaves the lab", flush=True)
    try:
        with sigterm_unwinds(), tempfile.TemporaryDirectory(prefix="gatekeeper-demo-") as tmp, \
                Lab() as lab:
            _run(lab, open_for, tmp, console)
    except DemoFailure as exc:
        print(f"gatekeeper demo: FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    except (LabError, subprocess.TimeoutExpired) as exc:
        print(f"gatekeeper demo: FAILED: lab: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt as exc:
        print("gatekeeper demo: interrupted; the lab was removed", file=sys.stderr, flush=True)
        return 143 if isinstance(exc, Terminated) else 130
    console.say("demo OK: lab removed")
    return 0
