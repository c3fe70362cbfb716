"""The soak's ``attacker`` role: bounded, paced junk against the one gateway address it
is given (connects without a valid knock, replays of part of a sequence, a scan, UDP junk)."""

from __future__ import annotations

import errno
import os
import random
import selectors
import socket
import time
from typing import Any

from gatekeeper import __version__
from gatekeeper.client.knock import Target, knock, resolve
from gatekeeper.errors import GatekeeperError
from gatekeeper.lab.soak.common import (
    ATTACK_TIMEOUT,
    DEFAULT_SEQUENCE,
    Records,
    SoakError,
    bound,
    check_duration,
    error_name,
    parse_sequence,
    sleep_until,
)
from gatekeeper.model import ICMP, TCP, UDP


def _random_port(rng: random.Random, excluded: set[int]) -> int:
    while True:
        port = rng.randint(1, 65535)
        if port not in excluded:
            return port


def _nonblocking_connect(family: int, address: str, port: int) -> socket.socket | None:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setblocking(False)
    err = s.connect_ex((address, port))
    if err not in (0, errno.EINPROGRESS, errno.EAGAIN, errno.ECONNREFUSED):
        s.close()
        return None
    return s


def attacker_loop(target: Target, steps: list[tuple[int, int]], port: int, n: int,
                  rng: random.Random, rate: float, probes: int = 16, protected: int = 4,
                  wait: float = ATTACK_TIMEOUT) -> dict[str, Any]:
    """One bounded round of junk; takes about ``wait`` seconds. Every packet goes to
    ``target.address`` and nowhere else."""
    start = time.monotonic()
    knock_ports = {p for proto, p in steps if proto in (TCP, UDP)}
    excluded = knock_ports | {port}
    out: dict[str, Any] = {"n": n, "replay": "none", "replay_error": None}

    # 1. every other round, replay what a sniffer saw, but never the whole sequence:
    #    all steps but the last (partial), or those and a wrong last step
    if n % 2 == 1 and steps:
        kind = "partial" if n % 4 == 1 else "wrong"
        replay = list(steps[:-1])
        if kind == "wrong" or not replay:
            kind = "wrong"
            last_proto, last_port = steps[-1]
            wrong = last_port % 65535 + 1
            while wrong in excluded:
                wrong = wrong % 65535 + 1
            replay.append((last_proto if last_proto != ICMP else UDP, wrong))
        out["replay"] = kind
        try:
            knock(target, replay)
        except (GatekeeperError, OSError) as exc:
            out["replay_error"] = error_name(exc)

    # 2. connects to the protected port (without a valid knock) and a small scan, all at once
    sel = selectors.DefaultSelector()
    pending: dict[socket.socket, tuple[int, bool]] = {}
    ports = [(port, True)] * protected + [(_random_port(rng, excluded), False) for _ in range(probes)]
    for p, is_protected in ports:
        s = _nonblocking_connect(target.family, target.address, p)
        if s is not None:
            pending[s] = (p, is_protected)
            sel.register(s, selectors.EVENT_WRITE)
    connects_at = time.monotonic()

    # 3. a paced flood of UDP junk to random ports while the connects wait
    flood = max(0, min(5000, int(rate * wait * 0.5)))
    sent = 0
    with socket.socket(target.family, socket.SOCK_DGRAM) as udp:
        for i in range(flood):
            if i % 10 == 0:
                sleep_until(connects_at + i / max(rate, 1.0), connects_at + wait)
                if time.monotonic() >= connects_at + wait:
                    break
            try:
                udp.sendto(rng.randbytes(rng.randint(1, 256)), (target.address,
                                                                  _random_port(rng, excluded)))
                sent += 1
            except OSError:
                pass

    # 4. collect: connected or refused means the packet got through the firewall
    accepted = answered = 0
    answered_ports: list[int] = []
    deadline = connects_at + wait
    while pending and (left := deadline - time.monotonic()) > 0:
        for key, _ in sel.select(left):
            conn = key.fileobj
            assert isinstance(conn, socket.socket)
            p, is_protected = pending.pop(conn)
            sel.unregister(conn)
            err = conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            conn.close()
            if is_protected and err == 0:
                accepted += 1
            elif not is_protected and err in (0, errno.ECONNREFUSED):
                answered += 1
                answered_ports.append(p)
    for conn in pending:
        conn.close()  # still in SYN-SENT: dropped, as it should be
    sel.close()
    out.update(protected_tried=protected, protected_accepted=accepted, tcp_probes=probes,
               tcp_answered=answered, answered_ports=answered_ports[:20], udp_sent=sent,
               elapsed_ms=round((time.monotonic() - start) * 1000, 1))
    return out


def run_attacker(gateway: str, duration: float, out: str, sequence: str = DEFAULT_SEQUENCE,
                 port: int = 22, rate: float = 200.0, max_loops: int = 0, seed: int | None = None) -> int:
    duration = check_duration(duration)
    if not 0 <= rate <= 5000:
        raise SoakError("--rate must be 0-5000 packets a second")
    steps = parse_sequence(sequence)
    target = resolve(gateway)
    seed = seed if seed is not None else int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    period = ATTACK_TIMEOUT + 0.1
    limit = bound(duration, period)
    if max_loops > 0:
        limit = min(limit, max_loops)
    records = Records(out, "attacker")
    records.write("start", version=__version__, host=socket.gethostname(), gateway=target.address,
                  port=port, duration=duration, rate=rate, seed=seed, max_loops=limit)
    n = unauthorised = 0
    begin = time.monotonic()
    deadline = begin + duration
    try:
        while n < limit and time.monotonic() + ATTACK_TIMEOUT / 2 < deadline:
            result = attacker_loop(target, steps, port, n, rng, rate)
            unauthorised += int(result["protected_accepted"])
            records.write("loop", **result)
            n += 1
            sleep_until(begin + n * period, deadline)
        records.write("end", loops=n, unauthorised_accepts=unauthorised,
                      reason="count" if n >= limit else "duration")
    finally:
        records.close()
    print(f"soak attacker: {n} loops, unauthorised accepts {unauthorised} -> {out}", flush=True)
    return 0
