"""A small TCP service: accepts on every address (IPv4 and IPv6) and echoes what it reads,
or holds the connection open. Prints ``ready`` once it listens.

    python -m gatekeeper.lab.programs.serve_tcp PORT
"""

from __future__ import annotations

import socket
import sys
import threading


def handle(conn: socket.socket) -> None:
    with conn:
        while True:
            data = conn.recv(4096)
            if not data:
                return
            conn.sendall(data)


def main(argv: list[str]) -> None:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", int(argv[0])))
    s.listen(512)
    print("ready", flush=True)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1:])
