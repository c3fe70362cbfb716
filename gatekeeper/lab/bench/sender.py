"""Send prebuilt packets with raw sockets; run inside the lab's client namespace.

    python -m gatekeeper.lab.bench.sender FILE [--rate PPS] [--seconds S] [--repeat N]

FILE holds length-prefixed IPv4/IPv6 packets (:func:`gatekeeper.lab.bench.traffic.dump`);
each goes out as is (``IPPROTO_RAW``: the kernel only fills in the IPv4 length and
header checksum). With ``--rate`` the sending is paced; it always stops after the
packets (times ``--repeat``) or after ``--seconds``, whichever comes first, and prints
one JSON line: how many were sent, refused by the local stack, and how long it took.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

from gatekeeper.lab.bench.traffic import load

BATCH = 32  # packets between looks at the clock when paced


def send(packets: list[bytes], rate: float, seconds: float, repeat: int) -> dict[str, float]:
    s4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    for s in (s4, s6):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    # (socket, address) per packet, computed once: the loop below only calls sendto
    plan = []
    for p in packets:
        if p[0] >> 4 == 4:
            plan.append((s4.sendto, p, (socket.inet_ntop(socket.AF_INET, p[16:20]), 0)))
        else:
            plan.append((s6.sendto, p, (socket.inet_ntop(socket.AF_INET6, p[24:40]), 0)))
    sent = refused = 0
    start = time.perf_counter()
    deadline = start + seconds
    interval = 1.0 / rate if rate > 0 else 0.0
    for _ in range(repeat):
        for i in range(0, len(plan), BATCH):
            now = time.perf_counter()
            if now > deadline:
                break
            if interval:
                due = start + sent * interval
                if due > now + 0.0002:
                    time.sleep(due - now)
            for sendto, p, addr in plan[i : i + BATCH]:
                try:
                    sendto(p, addr)
                    sent += 1
                except OSError:
                    refused += 1
        else:
            continue
        break
    elapsed = time.perf_counter() - start
    s4.close()
    s6.close()
    return {"sent": sent, "refused": refused, "seconds": elapsed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gatekeeper.lab.bench.sender")
    parser.add_argument("file")
    parser.add_argument("--rate", type=float, default=0.0, help="packets a second (0: no pacing)")
    parser.add_argument("--seconds", type=float, default=60.0, help="stop after this long")
    parser.add_argument("--repeat", type=int, default=1, help="send the file this many times")
    args = parser.parse_args(argv)
    with open(args.file, "rb") as f:
        packets = load(f.read())
    result = send(packets, args.rate, args.seconds, max(1, args.repeat))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
