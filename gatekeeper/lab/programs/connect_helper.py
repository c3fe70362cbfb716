"""The demo's connection helper: lives in one namespace for the whole demo, so a
connection it makes can be held open across steps. Prints ``{"ok": true, "ready": true}``,
then one JSON line out per command line in::

    connect HOST PORT TIMEOUT keep|drop   ->  {"ok", "ms", "error"}
    echo TEXT                             ->  {"ok", "reply", "error"}

    python -m gatekeeper.lab.programs.connect_helper
"""

from __future__ import annotations

import json
import socket
import sys
import time
from typing import Any


class Helper:
    def __init__(self) -> None:
        self.held: socket.socket | None = None

    def connect(self, host: str, port: int, timeout: float, keep: bool) -> dict[str, Any]:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        start = time.perf_counter()
        try:
            s.connect((host, port))
        except OSError as exc:
            s.close()
            error = "timed out" if isinstance(exc, TimeoutError) else (
                "refused" if isinstance(exc, ConnectionRefusedError) else str(exc))
            return {"ok": False, "ms": (time.perf_counter() - start) * 1000, "error": error}
        out = {"ok": True, "ms": (time.perf_counter() - start) * 1000}
        if keep:
            if self.held is not None:
                self.held.close()
            self.held = s
        else:
            s.close()
        return out

    def echo(self, text: str) -> dict[str, Any]:
        if self.held is None:
            return {"ok": False, "error": "no connection held"}
        try:
            self.held.settimeout(3)
            self.held.sendall((text + "\n").encode())
            data = b""
            while not data.endswith(b"\n"):
                chunk = self.held.recv(4096)
                if not chunk:
                    raise ConnectionError("closed by the peer")
                data += chunk
            reply = data.decode().strip()
            return {"ok": reply == text, "reply": reply}
        except OSError as exc:
            return {"ok": False, "error": str(exc) or type(exc).__name__}


def main() -> None:
    helper = Helper()
    print(json.dumps({"ok": True, "ready": True}), flush=True)
    for line in sys.stdin:
        cmd, *rest = line.split()
        out: dict[str, Any] = {"ok": False}
        if cmd == "connect":
            out = helper.connect(rest[0], int(rest[1]), float(rest[2]), rest[3] == "keep")
        elif cmd == "echo":
            out = helper.echo(rest[0])
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
