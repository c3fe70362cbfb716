"""The supervisor's control socket (a Unix socket) and ``gatekeeper status``, its client.

One request a connection: the client sends ``status\\n``, the daemon answers one JSON
document and closes. Only the socket's owner and group may connect (mode 0660).
"""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Callable
from typing import Any

from gatekeeper.errors import GatekeeperError

KINDS = ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
         (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a fifo"),
         (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
MAX_REQUEST = 256


class ControlServer:
    def __init__(self, path: str, answer: Callable[[str], dict[str, Any]]) -> None:
        self.path = path
        self.answer = answer
        directory = os.path.dirname(path) or "."
        try:
            os.makedirs(directory, mode=0o750, exist_ok=True)
            self._clear(path)
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o117)
            try:
                self.sock.bind(path)
            finally:
                os.umask(old)
            self.sock.listen(8)
            self.sock.setblocking(False)
        except OSError as exc:
            raise GatekeeperError(f"control socket {path}: {exc.strerror or exc}; set "
                                  "[gatekeeper] control to a path the daemon may create") from None

    @staticmethod
    def _clear(path: str) -> None:
        """Remove a stale socket (nobody listens: a daemon that is gone); refuse anything
        else at ``path``, and never follow a symbolic link."""
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            kind = next((name for test, name in KINDS if test(mode)), "something")
            raise GatekeeperError(f"control socket {path}: {kind} is there, not a socket; remove it "
                                  "or set [gatekeeper] control to another path")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)
            return
        except OSError as exc:  # busy, or not ours to probe: not known to be stale
            raise GatekeeperError(f"control socket {path}: a socket that may be in use is there "
                                  f"({exc.strerror or exc}); is another gatekeeper running?") from None
        finally:
            probe.close()
        raise GatekeeperError(f"control socket {path}: another gatekeeper is running there")

    def fileno(self) -> int:
        return self.sock.fileno()

    def handle(self) -> None:
        """Serve one waiting client; never blocks the supervisor for more than a second."""
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(1.0)
            try:
                request = conn.recv(MAX_REQUEST).decode("ascii", "replace").strip()
                conn.sendall((json.dumps(self.answer(request)) + "\n").encode())
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


class NotRunning(GatekeeperError):
    """No daemon answers on the socket: there is none, or only a stale one."""


def request(path: str, what: str = "status", timeout: float = 5.0) -> dict[str, Any]:
    """The daemon's answer to ``what`` on the control socket ``path``; :class:`NotRunning`
    when nothing listens there, a :class:`GatekeeperError` naming the socket otherwise."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            sock.sendall(f"{what}\n".encode())
            chunks = []
            while chunk := sock.recv(1 << 16):
                chunks.append(chunk)
        except FileNotFoundError:
            raise NotRunning(f"no gatekeeper is running on {path} (no such socket)") from None
        except ConnectionRefusedError:
            raise NotRunning(f"no gatekeeper is running on {path} (a stale socket: connection "
                             "refused)") from None
        except OSError as exc:
            raise GatekeeperError(f"{path}: {exc.strerror or exc}") from None
    answer: dict[str, Any] = json.loads(b"".join(chunks))
    return answer


def format_status(status: dict[str, Any], path: str) -> str:
    """The daemon's answer on socket ``path``, for a person."""
    lines = [
        f"gatekeeper {status['version']} on {path}: up {status['uptime']:.0f} s, "
        f"config {status['config']}",
        f"workers: {len(status['workers'])} (restarts {status['restarts']}); "
        f"reloads ok {status['reloads']['ok']}, refused {status['reloads']['refused']}",
    ]
    for w in status["workers"]:
        lines.append(f"  worker {w['index']}: pid {w['pid']}, NFQUEUE {w['queue']}, "
                     f"waiting {w['waiting']}, tracked sources {w['tracked']}")
    lines.append("doors:")
    for d in status["doors"]:
        lines.append(f"  {d['name']}: {d['knocks']} knocks -> {' '.join(d['opens'])}"
                     f"{' on ' + d['host'] if d['host'] else ''}, open_for {d['open_for']} s")
    lines.append(f"grants: {len(status['grants'])} active")
    for g in status["grants"]:
        opens = " ".join(g.get("opens", []))
        lines.append(f"  {g['address']:<40} {g['door']:<24} {g['remaining']:6.1f} s left"
                     f"{'  ' + opens if opens else ''}")
    lines.append("packets: " + ", ".join(f"{k} {v}" for k, v in status["packets"].items() if v)
                 if any(status["packets"].values()) else "packets: none yet")
    defences = status.get("defences", {})
    lines.append("defences: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in defences.items() if v)
                 if any(defences.values()) else "defences: nothing locked out, refused or evicted")
    if "interfaces" in status:
        from gatekeeper.netfilter.interfaces import describe

        lines.append(describe(status["interfaces"]))
    ruleset = status.get("ruleset")
    if ruleset is not None:
        repairs = ", ".join(f"IPv{f} {n}" for f, n in ruleset["repairs"].items())
        lines.append(f"ruleset: {'intact' if ruleset['intact'] else 'NOT INTACT'}, audited "
                     f"{'on every change and ' if ruleset.get('on_change') else ''}every "
                     f"{ruleset['interval']:g} s, repair {'on' if ruleset['repair'] else 'off (report only)'}"
                     f", repairs {repairs}")
        lines += [f"  {problem}" for problem in ruleset["problems"]]
    cluster = status.get("cluster", {"state": "off"})
    if cluster["state"] != "off":
        state = "UP" if cluster["state"] == "up" else "DOWN"
        lines.append(f"cluster: store {cluster['store']} {state} for {cluster['since']:.0f} s"
                     + (f" ({cluster['error']})" if cluster.get("error") else "")
                     + f"; mirrored {cluster['mirrored']} grant(s), resyncs {cluster['resyncs']}, "
                     f"failed calls {cluster['errors']}, fallbacks "
                     + ", ".join(f"{k} {v}" for k, v in sorted(cluster["fallbacks"].items()))
                     + f", workers up {cluster['workers_up']}")
    return "\n".join(lines)
