"""The soak's ``client`` role: knock, connect at once, a line there and back, close;
paced and bounded."""

from __future__ import annotations

import socket
import time
from typing import Any

from gatekeeper import __version__
from gatekeeper.client.knock import FIRST_SYN_TIMEOUT, Target, knock, resolve
from gatekeeper.errors import GatekeeperError
from gatekeeper.lab.soak import common
from gatekeeper.lab.soak.common import (
    REPLY_TIMEOUT,
    SoakError,
    check_duration,
    error_name,
    parse_sequence,
    parse_sources,
)
from gatekeeper.model import PROTO_NAMES


def client_attempt(target: Target, steps: list[tuple[int, int]], port: int, n: int,
                   timeout: float = FIRST_SYN_TIMEOUT) -> dict[str, Any]:
    """Knock, connect at once, exchange a line, close. Never waits more than
    ``timeout`` + ``REPLY_TIMEOUT`` seconds."""
    out: dict[str, Any] = {"n": n, "source": target.source or "", "ok": False, "stage": "knock",
                           "error": None}
    start = time.perf_counter()
    try:
        knock(target, steps)
    except (GatekeeperError, OSError) as exc:
        out["error"] = error_name(exc)
        return out
    knocked = time.perf_counter()
    out["knock_ms"] = round((knocked - start) * 1000, 3)
    out["stage"] = "connect"
    with socket.socket(target.family, socket.SOCK_STREAM) as s:
        try:
            if target.source is not None:
                s.bind((target.source, 0))
            s.settimeout(timeout)
            s.connect((target.address, port))
        except OSError as exc:
            out["connect_ms"] = round((time.perf_counter() - knocked) * 1000, 3)
            out["error"] = error_name(exc)
            return out
        connected = time.perf_counter()
        out["connect_ms"] = round((connected - knocked) * 1000, 3)
        # an SSH identification line: an echo service sends it back, sshd answers with its
        # own banner; either way a line came back over the new connection
        line = f"SSH-2.0-gatekeeper_soak_{n}\r\n".encode()
        out["stage"] = "reply"
        try:
            s.settimeout(REPLY_TIMEOUT)
            s.sendall(line)
            data = b""
            while b"\n" not in data and len(data) < 1024:
                chunk = s.recv(1024)
                if not chunk:
                    raise ConnectionError("closed by the peer before a line")
                data += chunk
        except OSError as exc:
            out["error"] = error_name(exc)
            return out
        out["reply_ms"] = round((time.perf_counter() - connected) * 1000, 3)
        out["reply"] = "echo" if data.split(b"\n")[0] + b"\n" == line else "banner"
    out["ok"], out["stage"] = True, "done"
    return out


def run_client(gateway: str, duration: float, sequence: str, port: int, out: str,
               interval: float = 0.2, timeout: float = FIRST_SYN_TIMEOUT, sources: str = "",
               max_attempts: int = 0) -> int:
    duration = check_duration(duration)
    if not 0.01 <= interval <= 3600:
        raise SoakError("--interval must be 0.01-3600 seconds")
    if not 0.05 <= timeout <= 30:
        raise SoakError("--timeout must be 0.05-30 seconds")
    steps = parse_sequence(sequence)
    addresses = parse_sources(sources)
    target = resolve(gateway)
    limit = common.bound(duration, interval)
    if max_attempts > 0:
        limit = min(limit, max_attempts)
    records = common.Records(out, "client")
    records.write("start", version=__version__, host=socket.gethostname(), gateway=target.address,
                  port=port, duration=duration, interval=interval, timeout=timeout,
                  sequence=[f"{p}:{PROTO_NAMES[proto]}" for proto, p in steps],
                  sources=len(addresses), max_attempts=limit)
    ok = n = 0
    begin = time.monotonic()
    deadline = begin + duration
    try:
        while n < limit and time.monotonic() < deadline:
            source = addresses[n % len(addresses)] if addresses else None
            result = client_attempt(Target(target.family, target.address, source), steps, port, n,
                                    timeout)
            records.write("attempt", **result)
            ok += bool(result["ok"])
            n += 1
            common.sleep_until(begin + n * interval, deadline)
        records.write("end", attempts=n, ok=ok, reason="count" if n >= limit else "duration")
    finally:
        records.close()
    print(f"soak client: {n} attempts, {ok} ok ({100.0 * ok / n if n else 0:.2f} %) -> {out}",
          flush=True)
    return 0
