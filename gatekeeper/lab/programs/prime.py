"""One empty datagram to each address given (to the discard port: gatekeeper is not
running yet, so the gateway drops it quietly), so this host knows the gateway's link
address before a burst; then a pause for the answers to settle.

    python -m gatekeeper.lab.programs.prime ADDRESS...
"""

from __future__ import annotations

import socket
import sys
import time


def main(addresses: list[str]) -> None:
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.sendto(b"", (address, 9))
    time.sleep(0.2)


if __name__ == "__main__":
    main(sys.argv[1:])
