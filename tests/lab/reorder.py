"""Reorder a namespace's outbound packets: hold a share of them for a few milliseconds.

Run inside a lab namespace whose OUTPUT sends packets to NFQUEUE ``QUEUE``; stops by
itself after ``SECONDS``. (This kernel has no tc netem; this is its reordering.)
    reorder.py QUEUE PROBABILITY DELAY_MS SECONDS
"""

from __future__ import annotations

import heapq
import itertools
import random
import select
import sys
import time
from typing import Any

from netfilterqueue import NetfilterQueue


def main() -> None:
    queue, share, delay, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), \
        float(sys.argv[4])
    held: list[tuple[float, int, Any]] = []
    order = itertools.count()

    def on_packet(pkt: Any) -> None:
        if random.random() < share:
            pkt.retain()
            heapq.heappush(held, (time.monotonic() + delay / 1000, next(order), pkt))
        else:
            pkt.accept()

    nfq = NetfilterQueue()
    nfq.bind(queue, on_packet)
    print("ready", flush=True)
    end = time.monotonic() + seconds
    fd = nfq.get_fd()
    while time.monotonic() < end:
        wait = max(0.0, min(0.05, (held[0][0] - time.monotonic()) if held else 0.05))
        if select.select([fd], [], [], wait)[0]:
            nfq.run(block=False)
        while held and held[0][0] <= time.monotonic():
            heapq.heappop(held)[2].accept()
    for _, _, pkt in held:
        pkt.accept()
    nfq.unbind()


if __name__ == "__main__":
    main()
