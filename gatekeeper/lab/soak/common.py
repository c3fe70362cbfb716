"""What every soak role shares: its limits and thresholds, its error, the JSON-lines
records it writes, its bounds on loops and the parsers of its arguments."""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import time
from collections.abc import Sequence
from typing import IO, Any

from gatekeeper.client.knock import parse_step
from gatekeeper.errors import GatekeeperError
from gatekeeper.lab.bench.kernel import percentile
from gatekeeper.model import TCP

DEFAULT_SEQUENCE = "7000:udp,8000:tcp,9000:udp"
DEFAULT_METRICS = "http://127.0.0.1:9464/metrics"
REPLY_TIMEOUT = 2.0
ATTACK_TIMEOUT = 1.2  # long enough to see a SYN accepted on its first retransmit too
MAX_DURATION = 7 * 24 * 3600.0
MAX_SOURCES = 1024
MAX_RECORDS = 10_000_000  # hard bound on every loop, whatever the duration
SUMMARY_FILE, PLOT_FILE = "summary.json", "soak.png"

# report thresholds
MIN_SUCCESS = 0.99
MAX_RSS_GROWTH_MB = 20.0
MAX_RSS_GROWTH_PCT = 25.0


class SoakError(GatekeeperError):
    pass


# -- records ---------------------------------------------------------------------------------


class Records:
    """Appends JSON lines to a file, flushed per record so a killed role leaves its data."""

    def __init__(self, path: str, role: str) -> None:
        self.role = role
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        self._f: IO[str] = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self.count = 0

    def write(self, kind: str, **fields: Any) -> None:
        record = {"role": self.role, "kind": kind, "t": round(time.time(), 4), **fields}
        self._f.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._f.flush()
        self.count += 1

    def close(self) -> None:
        self._f.close()


def check_duration(duration: float) -> float:
    if not 0 < duration <= MAX_DURATION:
        raise SoakError(f"--duration must be more than 0 and at most {MAX_DURATION:.0f} seconds")
    return float(duration)


def bound(duration: float, period: float) -> int:
    """The most records a loop of ``period`` may write within ``duration``."""
    return min(MAX_RECORDS, int(duration / max(period, 0.001)) + 2)


def sleep_until(when: float, deadline: float) -> None:
    delay = min(when, deadline) - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def parse_sequence(text: str) -> list[tuple[int, int]]:
    steps = [parse_step(s.strip(), TCP) for s in text.split(",") if s.strip()]
    if not steps:
        raise SoakError("--sequence: at least one PORT[:PROTO] step")
    return steps


def parse_sources(text: str) -> list[str]:
    """``ADDR,ADDR,...``; an IPv4 item may be a last-octet range ``192.0.2.100-129``."""
    out: list[str] = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        m = re.fullmatch(r"(\d{1,3}\.\d{1,3}\.\d{1,3}\.)(\d{1,3})-(\d{1,3})", item)
        if m:
            lo, hi = int(m[2]), int(m[3])
            if not lo <= hi <= 255:
                raise SoakError(f"--sources: {item!r}: expected a range like 192.0.2.100-129")
            out += [str(ipaddress.ip_address(f"{m[1]}{n}")) for n in range(lo, hi + 1)]
        else:
            try:
                out.append(str(ipaddress.ip_address(item)))
            except ValueError:
                raise SoakError(f"--sources: {item!r} is not an address") from None
        if len(out) > MAX_SOURCES:
            raise SoakError(f"--sources: at most {MAX_SOURCES} addresses")
    return out


def error_name(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno)).lower()
    return str(exc) or type(exc).__name__


def pct(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0-1) of ``values`` by the lab's one percentile; None for none."""
    return percentile(sorted(values), q * 100) if values else None


def of_kind(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return sorted((r for r in records if r.get("kind") == kind), key=lambda r: float(r["t"]))
