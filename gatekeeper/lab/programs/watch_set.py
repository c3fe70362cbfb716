"""Prints ``watching``, then ``seen <time.time()>`` once SOURCE is in the kernel set
``gatekeeper-in4`` (polled every 2 ms), or ``timeout`` after 10 s.

    python -m gatekeeper.lab.programs.watch_set SOURCE
"""

from __future__ import annotations

import subprocess
import sys
import time

SET = "gatekeeper-in4"
TIMEOUT = 10.0


def main(argv: list[str]) -> None:
    src = argv[0] + ","
    print("watching", flush=True)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        out = subprocess.run(["ipset", "list", SET], capture_output=True, text=True,
                             check=False).stdout
        if src in out:
            print(f"seen {time.time()}", flush=True)
            break
        time.sleep(0.002)
    else:
        print("timeout", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
