"""What SPA over random UDP ports (``spa_transports = ["udp", "udp-any"]``, for
``fwknop --rand-port``) costs junk traffic, measured in process, away from the kernel.

    python -m gatekeeper.lab.bench.junk [PACKETS [PASSES]]

Two kinds of junk, UDP from the bench's load sources to random ports 10000-65535 (never
the SPA port): *short* datagrams of 0-64 random bytes, which no SPA packet is that short,
and *base64-shaped* ones, 100-400 characters of the base64 alphabet, as long as SPA
packets are, so that a door with udp-any computes an HMAC for each. Each goes through
:meth:`Worker.decide_batch` with the bench's config plus one SPA door, udp-any off and
then on; the CPU time a verdict (``process_time``) is the fastest of the passes, which
alternate between the two. ``gatekeeper bench`` runs it after the drains and prints the
figures and their ratios.
"""

from __future__ import annotations

import math
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass

import gatekeeper.config.load as config_mod
from gatekeeper.lab.bench import overhead, traffic
from gatekeeper.model import DEFAULT_SPA_PORT, SPA_ANY_PORTS, UDP
from gatekeeper.queue.worker import BATCH, Worker
from gatekeeper.spa import fwknop

_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
KINDS = ("short", "base64")


@dataclass(frozen=True)
class JunkCost:
    """CPU ns a verdict, by (kind, udp-any on)."""

    ns: dict[tuple[str, bool], float]

    def ratio(self, kind: str) -> float:
        return self.ns[(kind, True)] / self.ns[(kind, False)]

    def lines(self) -> list[str]:
        return [f"{kind + ' junk':<14} udp-any off {self.ns[(kind, False)] / 1000:.2f} us, "
                f"on {self.ns[(kind, True)] / 1000:.2f} us a verdict (x{self.ratio(kind):.2f})"
                for kind in KINDS]


def packets(kind: str, n: int, seed: int = 16) -> list[bytes]:
    """``n`` junk datagrams of ``kind`` to random high ports, from the bench's sources."""
    rng = random.Random(seed)
    gw = traffic._GW4
    out = []
    for _ in range(n):
        port = rng.randint(*SPA_ANY_PORTS)
        if port == DEFAULT_SPA_PORT:  # the door's own SPA port is no random port
            port += 1
        if kind == "short":
            payload = rng.randbytes(rng.randint(0, 64))
        else:
            payload = bytes(rng.choice(_B64) for _ in range(rng.randint(100, 400)))
        src = rng.choice(traffic.V4_POOL)
        out.append(traffic.ip(src, gw, UDP, traffic.udp(src, gw, port, payload)))
    return out


def config_text(key_file: str, udp_any: bool) -> str:
    transports = '["udp", "udp-any"]' if udp_any else '["udp"]'
    return (traffic.config_text(metrics=False) + '\n[[door]]\nname = "spa"\nspa = true\n'
            f'key_file = "{key_file}"\nopens = ["2022:tcp"]\nspa_transports = {transports}\n')


def measure(n: int = 20_000, passes: int = 5) -> JunkCost:
    """CPU ns a verdict of each kind of junk, udp-any off and on."""
    with tempfile.TemporaryDirectory(prefix="gatekeeper-junk-") as tmp:
        key = os.path.join(tmp, "spa.key")
        with open(key, "w", encoding="utf-8") as f:
            f.write(fwknop.format_key_file(fwknop.generate_keys()))
        os.chmod(key, 0o600)
        configs = {on: config_mod.loads(config_text(key, on)) for on in (False, True)}
    best: dict[tuple[str, bool], float] = {}
    for kind in KINDS:
        junk = packets(kind, n)
        batches = [junk[i:i + BATCH] for i in range(0, len(junk), BATCH)]
        for i in range(passes):
            for on in (False, True) if i % 2 == 0 else (True, False):
                worker = Worker(configs[on], overhead._Grants(), overhead._ignore)
                decide = worker.decide_batch
                now = time.monotonic()
                start = time.process_time_ns()
                for batch in batches:
                    decide(batch, now)
                ns = (time.process_time_ns() - start) / len(junk)
                best[(kind, on)] = min(best.get((kind, on), math.inf), ns)
    return JunkCost(best)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    n = int(args[0]) if args else 20_000
    passes = int(args[1]) if len(args) > 1 else 5
    if not 100 <= n <= 1_000_000 or not 1 <= passes <= 50:
        print("usage: python -m gatekeeper.lab.bench.junk [PACKETS 100-1000000 [PASSES 1-50]]",
              file=sys.stderr)
        return 2
    cost = measure(n, passes)
    print(f"junk UDP to random ports {SPA_ANY_PORTS[0]}-{SPA_ANY_PORTS[1]}, {n:,} packets, "
          f"fastest of {passes} passes, CPU in process:")
    for line in cost.lines():
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
