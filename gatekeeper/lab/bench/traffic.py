"""Prebuilt IPv4/IPv6 packets for the benchmark: knocks, unauthorised SYNs, junk, malformed.

Every address is a documentation address of the lab: sources in 203.0.113.0/24 and
2001:db8:1::/64 (never the lab's own hosts), destinations the gateway itself. The
packets are built here, written to a file and sent from the client namespace with raw
sockets by :mod:`gatekeeper.lab.bench.sender`, so the sender does nothing but ``sendto``.

Per source the packets keep their order (a knock sequence stays a sequence), while the
sources are interleaved at random, as on a busy link.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from gatekeeper.lab.netns import GW4, GW6
from gatekeeper.model import DEFAULT_BATCH, ICMP, TCP, UDP
from gatekeeper.queue.decode import ICMPV6

SYN, ACK, RST, FIN = 0x02, 0x10, 0x04, 0x01

# The bench's doors; the sequences below must match this config.
CONFIG = """\
# written by gatekeeper bench
[gatekeeper]
queue = {queue}
workers = {workers}
interfaces = ["eth0"]
public = ["80:tcp"]
queue_maxlen = {maxlen}
batch = {batch}
max_sources = {max_sources}
# The load's sources crowd one /24 and one /64 (the documentation ranges the lab owns),
# which the per-network defences would rightly take for one hostile network: off here.
prefix_quota = 0
prefix_failure_limit = 0
# the bench's own control socket (it reads the workers' pids from the status there), or
# none: another daemon may hold the default
control = "{control}"

[[door]]
name = "ssh"
sequence = ["7000:udp", "8000:tcp", "9000:udp"]
sequence_timeout = 5
opens = ["22:tcp"]
open_for = 60
close_sequence = ["9000:tcp", "8000:udp", "7000:tcp"]

[[door]]
name = "rdp"
sequence = ["4001", "4002:udp", "4003"]
opens = ["3389:tcp"]
host = "198.51.100.10"

[[door]]
name = "ping"
sequence = ["64:icmp", "128:icmp"]
opens = ["8080:tcp"]
"""
SSH = ((UDP, 7000), (TCP, 8000), (UDP, 9000))
RDP = ((TCP, 4001), (UDP, 4002), (TCP, 4003))
PING = ((ICMP, 64), (ICMP, 128))
PROTECTED = (22, 3389, 8080)
KNOCK_PORTS = {port for _, port in SSH + RDP} | {9000, 8000, 7000}
PUBLIC_PORT = 80

_GW4 = ipaddress.IPv4Address(GW4).packed
_GW6 = ipaddress.IPv6Address(GW6).packed
# Load sources: 203.0.113.32-.99 and 2001:db8:1::be<round>:<n>. The knock trials use
# 203.0.113.100-.249 and 2001:db8:1::100:<n>; the lab's hosts are .1, .10 and .20.
V4_POOL = tuple(ipaddress.IPv4Address(f"203.0.113.{i}").packed for i in range(32, 100))
_V6_LOAD = int(ipaddress.IPv6Address("2001:db8:1::be00:0:0"))


def v6_source(round_: int, n: int) -> bytes:
    """A load source in 2001:db8:1::/64, distinct per round and index."""
    return (_V6_LOAD + ((round_ & 0xFF) << 32) + (n & 0xFFFFFFFF)).to_bytes(16, "big")


def config_text(*, workers: int = 1, maxlen: int = 4096, max_sources: int = 65536, queue: int = 0,
                metrics: bool = True, batch: int = DEFAULT_BATCH, control: str = "") -> str:
    """The bench's config; ``metrics=False`` turns the exporter off (``[metrics] listen = ""``),
    and with it the worker's timing of every batch for the latency histogram; ``control``:
    the control socket's path ("": none)."""
    text = CONFIG.format(workers=workers, maxlen=maxlen, max_sources=max_sources, queue=queue,
                         batch=batch, control=control)
    return text if metrics else text + '\n[metrics]\nlisten = ""\n'


# -- packet building ------------------------------------------------------------------------


def _checksum(data: bytes) -> int:
    if len(data) & 1:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def _with_checksum(l4: bytes, at: int, src: bytes, dst: bytes, proto: int) -> bytes:
    csum = _checksum(_pseudo(src, dst, proto, len(l4)) + l4)
    return l4[:at] + struct.pack("!H", csum) + l4[at + 2 :]


def tcp(src: bytes, dst: bytes, dport: int, flags: int = SYN, sport: int = 40000) -> bytes:
    seg = struct.pack("!HHIIBBHHH", sport, dport, 0x1000, 0, 0x50, flags, 64240, 0, 0)
    return _with_checksum(seg, 16, src, dst, TCP)


def udp(src: bytes, dst: bytes, dport: int, payload: bytes = b"", sport: int = 40000) -> bytes:
    dgram = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return _with_checksum(dgram, 6, src, dst, UDP)


def echo(src: bytes, dst: bytes, size: int, kind: int | None = None) -> tuple[int, bytes]:
    """An echo request (or another ICMP ``kind``) of ``size`` payload bytes: (proto, bytes)."""
    v6 = len(src) == 16
    proto = ICMPV6 if v6 else ICMP
    msg = struct.pack("!BBHHH", kind if kind is not None else (128 if v6 else 8), 0, 0, 0x676B, 1)
    msg += bytes(size)
    if v6:
        return proto, _with_checksum(msg, 2, src, dst, proto)
    return proto, msg[:2] + struct.pack("!H", _checksum(msg)) + msg[4:]


def ip(src: bytes, dst: bytes, proto: int, l4: bytes) -> bytes:
    """The IP header in front of ``l4``: IPv4 or IPv6 by the address size."""
    if len(src) == 4:
        head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0, src, dst)
        return head[:10] + struct.pack("!H", _checksum(head)) + head[12:] + l4
    return struct.pack("!IHBB16s16s", 0x6 << 28, len(l4), proto, 64, src, dst) + l4


def step(src: bytes, dst: bytes, proto: int, port: int) -> bytes:
    """One knock step as the knock client sends it."""
    if proto == TCP:
        return ip(src, dst, TCP, tcp(src, dst, port))
    if proto == UDP:
        return ip(src, dst, UDP, udp(src, dst, port))
    p, msg = echo(src, dst, port)
    return ip(src, dst, p, msg)


# -- the mix --------------------------------------------------------------------------------

KINDS = ("knock", "unauthorised", "junk", "malformed")
# Chances a burst is of each kind; bursts differ in length, so these give about 30% of the
# packets knocks, 30% unauthorised SYNs, 30% junk and 10% malformed headers.
WEIGHTS = (0.24, 0.26, 0.35, 0.15)


@dataclass
class Mix:
    """The packets of one load, in sending order, and what they are."""

    packets: list[bytes] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)
    sources: set[bytes] = field(default_factory=set)
    completions: int = 0

    @property
    def v6(self) -> int:
        return sum(1 for p in self.packets if p[0] >> 4 == 6)

    def decisions(self) -> Counter[str]:
        """What the engine decides for these packets, in order, 10 us apart: by reason."""
        from gatekeeper.config.load import loads
        from gatekeeper.engine import Engine
        from gatekeeper.queue.decode import decode

        engine = Engine(loads(config_text(max_sources=1 << 20)))
        out: Counter[str] = Counter()
        for i, pkt in enumerate(self.packets):
            facts = decode(pkt)
            if facts is None:
                out["malformed"] += 1
                continue
            src, dst, proto, port, flags = facts
            out[engine.decide(src, dst, proto, port, flags, 1.0 + i * 1e-5)[1].name.lower()] += 1
        return out

    def describe(self) -> str:
        n = len(self.packets) or 1
        parts = ", ".join(f"{k} {100 * self.kinds[k] / n:.0f}%" for k in KINDS)
        return (f"{len(self.packets)} packets ({parts}; IPv6 {100 * self.v6 / n:.0f}%) from "
                f"{len(self.sources)} sources, {self.completions} completed sequences")


def _junk(rng: random.Random, src: bytes, dst: bytes) -> bytes:
    roll = rng.random()
    if roll < 0.35:
        port = rng.randrange(1, 65536)
        while port in PROTECTED or port in KNOCK_PORTS or port == PUBLIC_PORT:
            port = rng.randrange(1, 65536)
        flags = rng.choice((SYN, SYN, SYN, ACK, RST, FIN | ACK, SYN | ACK))
        return ip(src, dst, TCP, tcp(src, dst, port, flags, rng.randrange(1024, 65536)))
    if roll < 0.65:
        port = rng.randrange(1, 65536)
        while port in KNOCK_PORTS:
            port = rng.randrange(1, 65536)
        return ip(src, dst, UDP, udp(src, dst, port, bytes(rng.randrange(0, 48))))
    if roll < 0.85:  # pings of sizes that are no knock, and echo replies
        size = rng.choice((0, 8, 32, 56, 100, 1000))
        proto, msg = echo(src, dst, size, None if rng.random() < 0.7 else (129 if len(src) == 16 else 0))
        return ip(src, dst, proto, msg)
    proto = rng.choice((47, 50, 132, 33, 103))  # GRE, ESP, SCTP, DCCP, PIM
    return ip(src, dst, proto, bytes(rng.randrange(8, 40)))


def _malformed(rng: random.Random, src: bytes, dst: bytes) -> bytes:
    """Headers the kernel passes on but that are cut short: the decoder refuses them."""
    proto, whole = rng.choice((
        (TCP, tcp(src, dst, rng.randrange(1, 65536))),
        (UDP, udp(src, dst, rng.randrange(1, 65536))),
        echo(src, dst, 0),
    ))
    cut = rng.randrange(1, 20 if proto == TCP else 8)
    return ip(src, dst, proto, whole[:cut])


def _knock(rng: random.Random, src: bytes, dst: bytes, complete: bool) -> list[bytes]:
    door = rng.choice((SSH, SSH, RDP, PING))
    if complete:
        return [step(src, dst, p, port) for p, port in door]
    # Never the last step: a source that completed a sequence would hold a grant, and
    # its later SYNs to the protected port would be accepted (and answered) by the gateway.
    variant = rng.randrange(4)
    if variant == 0:  # the first step only: a scan that happened to hit a knock port
        steps = [door[0]]
    elif variant == 1:  # part way
        steps = list(door[:-1])
    elif variant == 2:  # a retransmitted first step, then on as far as part way
        steps = [door[0], *door[:-1]]
    else:  # a wrong step resets it
        steps = [door[0], (UDP, rng.randrange(10000, 60000))]
    return [step(src, dst, p, port) for p, port in steps]


def build(count: int, *, round_: int = 0, seed: int = 1, complete_every: int = 1000,
          ipv6_share: float = 0.5) -> Mix:
    """About ``count`` packets (exactly ``count``, trimmed at the end) of the mix.

    IPv4 sources come from a pool of 68 addresses, so their knock state interacts like
    a busy neighbour's would; IPv6 sources are fresh per burst, as from a scanner that
    hops addresses. One sequence in ``complete_every`` packets completes (from a fresh
    IPv6 source, which then sends nothing more).
    """
    rng = random.Random(seed * 1000 + round_)
    bursts: list[list[bytes]] = []
    mix = Mix()
    made = 0
    v6_next = 0
    completions_due = max(0, count // complete_every) if complete_every else 0

    def source() -> bytes:
        nonlocal v6_next
        if rng.random() < ipv6_share:
            v6_next += 1
            return v6_source(round_, v6_next)
        return rng.choice(V4_POOL)

    while made < count:
        kind = rng.choices(KINDS, WEIGHTS)[0]
        src = source()
        dst = _GW6 if len(src) == 16 else _GW4
        if kind == "knock":
            complete = mix.completions < completions_due and len(src) == 16
            burst = _knock(rng, src, dst, complete)
            mix.completions += complete
        elif kind == "unauthorised":
            burst = [ip(src, dst, TCP, tcp(src, dst, rng.choice(PROTECTED), SYN, rng.randrange(1024, 65536)))
                     for _ in range(rng.choice((1, 1, 2, 3)))]
        elif kind == "junk":
            burst = [_junk(rng, src, dst) for _ in range(rng.choice((1, 1, 2)))]
        else:
            burst = [_malformed(rng, src, dst)]
        mix.kinds[kind] += len(burst)
        mix.sources.add(src)
        bursts.append(burst)
        made += len(burst)
    mix.packets = list(_interleave(rng, bursts))[:count]
    extra = made - len(mix.packets)
    if extra:  # trimmed from the last burst, so take the count off its kind
        mix.kinds[kind] -= extra
    return mix


def _interleave(rng: random.Random, bursts: list[list[bytes]]) -> Iterator[bytes]:
    """Shuffle the bursts' packets together, keeping each burst's own order."""
    tokens = [i for i, burst in enumerate(bursts) for _ in burst]
    rng.shuffle(tokens)
    # the last burst goes last, so trimming the tail cuts only that one
    last = len(bursts) - 1
    tokens = [t for t in tokens if t != last] + [last] * len(bursts[last])
    pos = [0] * len(bursts)
    for t in tokens:
        yield bursts[t][pos[t]]
        pos[t] += 1


# -- the file the sender reads --------------------------------------------------------------


def dump(packets: Iterable[bytes]) -> bytes:
    """Length-prefixed records: 2 bytes big-endian length, then the packet."""
    return b"".join(struct.pack("!H", len(p)) + p for p in packets)


def load(data: bytes) -> list[bytes]:
    out = []
    at = 0
    while at < len(data):
        (n,) = struct.unpack_from("!H", data, at)
        out.append(data[at + 2 : at + 2 + n])
        at += 2 + n
    return out
