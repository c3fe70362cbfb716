"""Knock from a given source address; prints ``time.time()`` just before the first knock.

    python -m gatekeeper.lab.programs.knock_from HOST SOURCE STEPS   (STEPS: 7000:udp,8000:tcp,...)
"""

from __future__ import annotations

import sys
import time

from gatekeeper.client.knock import knock, parse_step, resolve


def main(argv: list[str]) -> None:
    host, source, steps = argv[:3]
    target, seq = resolve(host, source=source), [parse_step(p) for p in steps.split(",")]
    print(time.time(), flush=True)
    knock(target, seq, 0)


if __name__ == "__main__":
    main(sys.argv[1:])
