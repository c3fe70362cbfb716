"""Prints the body an HTTP URL answers (the gateway's own exporter), within 5 s.

    python -m gatekeeper.lab.programs.fetch URL
"""

from __future__ import annotations

import sys
import urllib.request


def main(argv: list[str]) -> None:
    with urllib.request.urlopen(argv[0], timeout=5) as response:
        print(response.read().decode())


if __name__ == "__main__":
    main(sys.argv[1:])
