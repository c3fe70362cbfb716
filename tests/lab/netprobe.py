"""Client-side probe run inside a lab namespace; prints one JSON document.

    netprobe.py connect HOST PORT [SOURCE]          one connect() with a 0.9 s timeout
    netprobe.py trials HOST PORT N SOURCES STEPS    knock from N source addresses, each
                                                    followed at once by one connect()
    netprobe.py hold HOST PORT                      connect, then echo a line per stdin line
    netprobe.py syns HOST PORT SECONDS INTERVAL_MS  a new connect() every INTERVAL_MS for
                                                    SECONDS; counts those that connected

A 0.9 s connect timeout is shorter than the kernel's first SYN retransmit (1 s), so a
successful connect() means the very first SYN was accepted.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import select
import socket
import sys
import time
from typing import Any

from gatekeeper.client.knock import FIRST_SYN_TIMEOUT, knock, parse_step, resolve
from gatekeeper.lab.bench.probe import connect, trials


def retrying(host: str, port: int, n: int, first_source: str, steps: str,
             tries: int = 5, delay: float = 0.02) -> list[dict[str, Any]]:
    """Like trials, but a client that knocks again when the connect fails (up to ``tries``
    times) and waits ``delay`` seconds between knocks; connect may use the SYN retransmit."""
    seq = [parse_step(p) for p in steps.split(",")]
    base = ipaddress.ip_address(first_source)
    out = []
    for i in range(n):
        source = str(base + i)
        target = resolve(host, source=source)
        result: dict[str, Any] = {"ok": False}
        for attempt in range(1, tries + 1):
            knock(target, seq, delay)
            result = connect(host, port, source, timeout=1.2)
            result["attempts"] = attempt
            if result["ok"]:
                break
        out.append(result)
    return out


def hold(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.create_connection((host, port), timeout=FIRST_SYN_TIMEOUT) if family == socket.AF_INET else \
        socket.create_connection((host, port, 0, 0), timeout=FIRST_SYN_TIMEOUT)
    print(json.dumps({"ok": True}), flush=True)
    for line in sys.stdin:
        try:
            s.sendall(line.encode())
            reply = s.recv(4096).decode()
            print(json.dumps({"ok": reply == line}), flush=True)
        except OSError as exc:
            print(json.dumps({"ok": False, "error": str(exc)}), flush=True)


def syns(host: str, port: int, seconds: float, interval_ms: float) -> dict[str, Any]:
    """Start a non-blocking connect every ``interval_ms`` for ``seconds`` (each given up
    after 0.3 s, before any SYN retransmit): how many were made and how many connected."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    pending: dict[socket.socket, float] = {}
    made = connected = 0
    start = time.monotonic()
    next_at = start
    while True:
        now = time.monotonic()
        if now - start < seconds and now >= next_at:
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setblocking(False)
            if s.connect_ex((host, port)) not in (0, errno.EINPROGRESS):
                s.close()
            else:
                pending[s] = now
            made += 1
            next_at += interval_ms / 1000
        elif not pending and now - start >= seconds:
            break
        _, ready, _ = select.select([], list(pending), [], 0.0005)
        for s in ready:
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                connected += 1
            del pending[s]
            s.close()
        for s, began in list(pending.items()):
            if now - began > 0.3:
                del pending[s]
                s.close()
    return {"made": made, "connected": connected}


def main() -> None:
    cmd, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if cmd == "connect":
        print(json.dumps(connect(host, port, sys.argv[4] if len(sys.argv) > 4 else None)))
    elif cmd == "trials":
        print(json.dumps(trials(host, port, int(sys.argv[4]), sys.argv[5], sys.argv[6])))
    elif cmd == "retrying":
        print(json.dumps(retrying(host, port, int(sys.argv[4]), sys.argv[5], sys.argv[6])))
    elif cmd == "syns":
        print(json.dumps(syns(host, port, float(sys.argv[4]), float(sys.argv[5]))))
    elif cmd == "hold":
        hold(host, port)


if __name__ == "__main__":
    main()
