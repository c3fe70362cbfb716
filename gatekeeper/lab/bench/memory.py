"""Bytes per tracked source in the engine's state table, measured in a fresh process.

    python -m gatekeeper.lab.bench.memory FAMILY SOURCES tracemalloc|rss

Sources are fed the first knock of a three-step sequence, so each is part-way through
it and held in the table. Two measures: what tracemalloc sees allocated (requested
sizes), and how much the process's resident memory grew (allocator rounding and the
dict's spare room included); each in a process of its own, so neither disturbs the
other. The addresses are never sent anywhere: IPv6 sources come from the lab's
2001:db8:1::/64, IPv4 ones from 198.18.0.0/15 (RFC 2544's benchmarking range), the only
IPv4 block large enough for 100k sources.
"""

from __future__ import annotations

import gc
import ipaddress
import json
import os
import subprocess
import sys
import tracemalloc
from dataclasses import dataclass

from gatekeeper.config.load import loads
from gatekeeper.engine import Engine
from gatekeeper.lab.bench.traffic import SSH, config_text

_V4 = int(ipaddress.IPv4Address("198.18.0.0"))
_V6 = int(ipaddress.IPv6Address("2001:db8:1::1:0:0"))
_GW4 = ipaddress.IPv4Address("203.0.113.1").packed
_GW6 = ipaddress.IPv6Address("2001:db8:1::1").packed
V4_ROOM = 1 << 17  # 198.18.0.0/15
METHODS = ("tracemalloc", "rss")


@dataclass
class MemoryResult:
    family: int
    method: str
    tracked: int
    bytes_total: int

    @property
    def per_source(self) -> float:
        return self.bytes_total / max(1, self.tracked)


def _source(family: int, i: int) -> bytes:
    if family == 4:
        return (_V4 + i % V4_ROOM).to_bytes(4, "big")
    return (_V6 + i).to_bytes(16, "big")


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(sources: int, family: int, method: str) -> MemoryResult:
    """Feed ``sources`` new sources one knock each; what holding them costs.

    The address bytes are counted: in the worker each key is a slice the decoder made,
    which the table keeps alive.
    """
    if family == 4:
        sources = min(sources, V4_ROOM)
    engine = Engine(loads(config_text(max_sources=max(16, sources)), "bench.toml"))
    proto, port = SSH[0]
    dst = _GW4 if family == 4 else _GW6
    decide = engine.decide
    gc.collect()
    if method == "tracemalloc":
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    else:
        before = _rss()
    try:
        for i in range(sources):
            decide(_source(family, i), dst, proto, port, 0, 1.0 + i * 1e-6)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0] if method == "tracemalloc" else _rss()
    finally:
        if method == "tracemalloc":
            tracemalloc.stop()
    return MemoryResult(family, method, engine.tracked_sources, after - before)


def measure_apart(sources: int, family: int, method: str) -> MemoryResult:
    """:func:`measure` in a fresh Python process (its heap untouched by anything else)."""
    out = subprocess.run([sys.executable, "-m", "gatekeeper.lab.bench.memory", str(family), str(sources),
                          method], capture_output=True, text=True, timeout=300, check=True).stdout
    return MemoryResult(**json.loads(out))


def bounded(max_sources: int, fed: int) -> int:
    """Feed ``fed`` new sources to an engine limited to ``max_sources``: how many it tracks."""
    engine = Engine(loads(config_text(max_sources=max_sources), "bench.toml"))
    proto, port = SSH[0]
    for i in range(fed):
        engine.decide(_source(6, i), _GW6, proto, port, 0, 1.0 + i * 1e-6)
    return engine.tracked_sources


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    family, sources, method = int(args[0]), int(args[1]), args[2]
    if family not in (4, 6) or method not in METHODS:
        print(__doc__, file=sys.stderr)
        return 2
    result = measure(sources, family, method)
    print(json.dumps({"family": result.family, "method": result.method, "tracked": result.tracked,
                      "bytes_total": result.bytes_total}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
