"""Knock, then connect at once; run inside the lab's client namespace. Prints JSON.

    python -m gatekeeper.lab.bench.probe trials HOST PORT N FIRST_SOURCE STEPS [MAX_FAILURES]

For N source addresses from FIRST_SOURCE upwards (already on the client's interface):
knock STEPS (``7000:udp,8000:tcp,...``) from that address, then connect() to HOST:PORT
from it with a 0.9 s timeout. The kernel retransmits a first SYN after 1 s, so a
successful connect() means the very first SYN after the knock was accepted. With
MAX_FAILURES it stops once that many tries have failed (a failure costs the 0.9 s).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
import time
from typing import Any

from gatekeeper.client.knock import FIRST_SYN_TIMEOUT, knock, parse_step, resolve


def connect(host: str, port: int, source: str | None = None,
            timeout: float = FIRST_SYN_TIMEOUT) -> dict[str, Any]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    if source:
        s.bind((source, 0))
    s.settimeout(timeout)
    start = time.perf_counter()
    try:
        s.connect((host, port))
        return {"ok": True, "ms": (time.perf_counter() - start) * 1000}
    except OSError as exc:
        return {"ok": False, "ms": (time.perf_counter() - start) * 1000, "error": str(exc)}
    finally:
        s.close()


def trials(host: str, port: int, n: int, first_source: str, steps: str,
           max_failures: int = 0) -> list[dict[str, Any]]:
    seq = [parse_step(p) for p in steps.split(",")]
    base = ipaddress.ip_address(first_source)
    out: list[dict[str, Any]] = []
    for i in range(n):
        if max_failures and sum(1 for r in out if not r["ok"]) >= max_failures:
            break
        source = str(base + i)
        target = resolve(host, source=source)
        start = time.perf_counter()
        knock(target, seq)
        knocked = time.perf_counter()
        result = connect(host, port, source)
        done = time.perf_counter()
        result["knock_ms"] = (knocked - start) * 1000
        result["total_ms"] = (done - start) * 1000
        result["source"] = source
        out.append(result)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (6, 7) or args[0] != "trials":
        print(__doc__, file=sys.stderr)
        return 2
    _, host, port, n, first, steps, *most = args
    print(json.dumps(trials(host, int(port), int(n), first, steps, int(most[0]) if most else 0)),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
