"""Client-side probe run inside a lab namespace; prints one JSON document.

    netprobe.py connect HOST PORT [SOURCE]          one connect() with a 0.9 s timeout
    netprobe.py trials HOST PORT N SOURCES STEPS    knock from N source addresses, each
                                                    followed at once by one connect()
    netprobe.py hold HOST PORT                      connect, then echo a line per stdin line

A 0.9 s connect timeout is shorter than the kernel's first SYN retransmit (1 s), so a
successful connect() means the very first SYN was accepted.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
from typing import Any

from gatekeeper.bench.probe import TIMEOUT, connect, trials
from gatekeeper.client.knock import knock, parse_step, resolve


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
    s = socket.create_connection((host, port), timeout=TIMEOUT) if family == socket.AF_INET else \
        socket.create_connection((host, port, 0, 0), timeout=TIMEOUT)
    print(json.dumps({"ok": True}), flush=True)
    for line in sys.stdin:
        try:
            s.sendall(line.encode())
            reply = s.recv(4096).decode()
            print(json.dumps({"ok": reply == line}), flush=True)
        except OSError as exc:
            print(json.dumps({"ok": False, "error": str(exc)}), flush=True)


def main() -> None:
    cmd, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if cmd == "connect":
        print(json.dumps(connect(host, port, sys.argv[4] if len(sys.argv) > 4 else None)))
    elif cmd == "trials":
        print(json.dumps(trials(host, port, int(sys.argv[4]), sys.argv[5], sys.argv[6])))
    elif cmd == "retrying":
        print(json.dumps(retrying(host, port, int(sys.argv[4]), sys.argv[5], sys.argv[6])))
    elif cmd == "hold":
        hold(host, port)


if __name__ == "__main__":
    main()
