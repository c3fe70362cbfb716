"""Encrypted port sequences: a grant request sealed with AES-GCM and knocked as ports.

Pure and I/O-free. The request is sealed into a *blob*::

    nonce (12 random bytes) || AES-GCM(key, nonce, plaintext, aad) (plaintext + 16-byte tag)

    plaintext = address (4 or 16 bytes) || proto (1) || port (2) || open_for (3) || time (4)

all integers big-endian, ``time`` in Unix seconds (unsigned, good until 2106), ``proto``
an IP protocol number. The associated data binds the scheme and the port range, so a
sequence made for another range or another scheme never authenticates. The blob is 42
bytes for an IPv4 address (an IPv4-mapped ``::ffff:a.b.c.d`` is sealed as IPv4) and 54
for IPv6.

**Ports.** A knock range must span exactly 256 ports (``745``-``1000`` by default). The
blob, read as one big-endian number, is written in base 255 with a fixed number of digits
``d0 d1 ...``, and knock ``i`` goes to offset ``o_i = (o_(i-1) + 1 + d_i) mod 256``
(``o_0 = d0``) from the start of the range. So no knock ever repeats the port just before
it: a duplicated packet (a retransmit) can be told from a knock and dropped, which a
plain ``start + byte`` mapping could not offer (about one sequence in seven would hold a
repeated byte next to itself). The price is one extra knock: an IPv4 request takes
:data:`KNOCKS_V4` = 43 knocks, an IPv6 request :data:`KNOCKS_V6` = 55.

:func:`decode` is accepted only if the sequence has one of those lengths, stays in the
range, authenticates, is fresh (``|now - time| <= window``) and is not a replay (the
blob is remembered for ``2 * window`` seconds once it authenticated and was fresh).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from itertools import pairwise

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gatekeeper.spa.hosts import host_ip
from gatekeeper.spa.keyfile import KEY, format_keys, read_keys
from gatekeeper.spa.replay import Recorded, ReplayCache

DEFAULT_RANGE = (745, 1000)
DEFAULT_WINDOW = 120.0
SPAN = 256  # ports in a knock range
MAX_OPEN_FOR = (1 << 24) - 1  # three bytes of seconds
KEY_SIZES = (16, 24, 32)  # AES-128/192/256

_NONCE = 12
_TAG = 16
_TAIL = 1 + 2 + 3 + 4  # proto, port, open_for, time
_AAD = b"gatekeeper encrypted sequence v1\0"


def _knocks(blob_len: int) -> int:
    """Base-255 digits needed for every number of ``blob_len`` bytes."""
    limit = 256**blob_len
    digits = 1
    while 255**digits < limit:
        digits += 1
    return digits


BLOB_V4 = _NONCE + 4 + _TAIL + _TAG  # 42
BLOB_V6 = _NONCE + 16 + _TAIL + _TAG  # 54
KNOCKS_V4 = _knocks(BLOB_V4)  # 43
KNOCKS_V6 = _knocks(BLOB_V6)  # 55
_BLOB_FOR_KNOCKS = {KNOCKS_V4: BLOB_V4, KNOCKS_V6: BLOB_V6}
_KNOCKS_FOR_BLOB = {BLOB_V4: KNOCKS_V4, BLOB_V6: KNOCKS_V6}


def knocks_for(address: str) -> int:
    """How many knocks a sequence granting ``address`` takes."""
    return KNOCKS_V4 if host_ip(address).version == 4 else KNOCKS_V6


class SequenceStage(IntEnum):
    """Where :func:`decode` stopped; ``OK`` when every check passed."""

    OK = 0
    LENGTH = 1  # not KNOCKS_V4 or KNOCKS_V6 knocks
    RANGE = 2  # a port outside the range, a repeated port, or no valid encoding
    AUTH = 3  # does not authenticate (wrong key, tampered, another range)
    PARSE = 4  # authenticated but not a request this version understands
    STALE = 5  # its time is more than the window away from now, either way
    REPLAY = 6  # this sequence was accepted before (or the replay cache is full)


@dataclass(frozen=True, slots=True)
class SequenceGrant:
    address: str
    proto: int  # IP protocol number: 6 tcp, 17 udp
    port: int
    open_for: int  # seconds
    timestamp: int


@dataclass(frozen=True, slots=True)
class SequenceResult:
    """What :func:`decode` found: ``grant`` is set from ``STALE`` on."""

    stage: SequenceStage
    grant: SequenceGrant | None = None
    recorded: Recorded | None = None  # on OK: new to the replay cache, now recorded

    @property
    def ok(self) -> bool:
        return self.stage is SequenceStage.OK


def _check_range(port_range: tuple[int, int]) -> int:
    start, end = port_range
    if end - start + 1 != SPAN or not 1 <= start <= 65536 - SPAN:
        raise ValueError(f"port range {start}-{end}: must span exactly {SPAN} ports within 1-65535")
    return start


def parse_key_file(text: str, name: str) -> bytes:
    """The key of a key file: one ``KEY_BASE64`` line (:mod:`gatekeeper.spa.keyfile`)."""
    return read_keys(text, name, {KEY: KEY_SIZES}, "gatekeeper spa --key-gen --sequence")[KEY]


def format_key_file(key: bytes) -> str:
    _check_key(key)
    return format_keys({KEY: key})


def generate_key() -> bytes:
    return os.urandom(32)


def _check_key(key: bytes) -> None:
    if len(key) not in KEY_SIZES:
        raise ValueError("the sequence key must be 16, 24 or 32 bytes (AES-128/192/256)")


def _aad(start: int) -> bytes:
    return _AAD + start.to_bytes(2, "big")


def _to_offsets(blob: bytes) -> list[int]:
    value = int.from_bytes(blob, "big")
    digits = []
    for _ in range(_KNOCKS_FOR_BLOB[len(blob)]):
        value, digit = divmod(value, 255)
        digits.append(digit)
    digits.reverse()
    offsets = [digits[0]]
    for digit in digits[1:]:
        offsets.append((offsets[-1] + 1 + digit) % SPAN)
    return offsets


def _from_offsets(offsets: Sequence[int], blob_len: int) -> bytes | None:
    if offsets[0] > 254:
        return None
    value = offsets[0]
    for before, offset in pairwise(offsets):
        digit = (offset - before - 1) % SPAN
        if digit == 255:  # the same port twice in a row
            return None
        value = value * 255 + digit
    if value >= 256**blob_len:
        return None
    return value.to_bytes(blob_len, "big")


def encode(
    address: str,
    port: int,
    proto: int,
    open_for: int,
    now: float,
    key: bytes,
    port_range: tuple[int, int] = DEFAULT_RANGE,
    *,
    nonce: bytes | None = None,
) -> list[int]:
    """The knock ports (in order) asking to open ``proto``/``port`` to ``address``.

    ``proto`` is an IP protocol number, ``open_for`` seconds (at most 16777215). The
    nonce is drawn at random unless given (tests only: never reuse one with a key).
    """
    _check_key(key)
    start = _check_range(port_range)
    packed = host_ip(address).packed  # ::ffff:a.b.c.d is sealed as the IPv4 a.b.c.d
    if not 0 <= proto <= 255:
        raise ValueError(f"proto {proto}: must be 0-255")
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port}: must be 0-65535")
    if not 0 <= open_for <= MAX_OPEN_FOR:
        raise ValueError(f"open_for {open_for}: must be 0-{MAX_OPEN_FOR} seconds")
    stamp = int(now)
    if not 0 <= stamp < 1 << 32:
        raise ValueError("now is outside the 32-bit unsigned time range")
    if nonce is None:
        nonce = secrets.token_bytes(_NONCE)
    if len(nonce) != _NONCE:
        raise ValueError(f"the nonce must be {_NONCE} bytes")
    plaintext = (packed + proto.to_bytes(1, "big") + port.to_bytes(2, "big")
                 + open_for.to_bytes(3, "big") + stamp.to_bytes(4, "big"))
    blob = nonce + AESGCM(key).encrypt(nonce, plaintext, _aad(start))
    return [start + offset for offset in _to_offsets(blob)]


def replay_key(blob: bytes) -> bytes:
    """The replay-cache key of an authenticated blob (domain-separated from SPA's)."""
    return hashlib.sha256(b"gatekeeper sequence\0" + blob).digest()


def decode(
    ports: Sequence[int],
    key: bytes,
    now: float,
    window: float = DEFAULT_WINDOW,
    *,
    replay: ReplayCache,
    port_range: tuple[int, int] = DEFAULT_RANGE,
) -> SequenceResult:
    """Check a complete knock sequence; never raises on any list of ints."""
    _check_key(key)
    start = _check_range(port_range)
    blob_len = _BLOB_FOR_KNOCKS.get(len(ports))
    if blob_len is None:
        return SequenceResult(SequenceStage.LENGTH)
    offsets = [port - start for port in ports]
    if not all(0 <= offset < SPAN for offset in offsets):
        return SequenceResult(SequenceStage.RANGE)
    blob = _from_offsets(offsets, blob_len)
    if blob is None:
        return SequenceResult(SequenceStage.RANGE)
    nonce, sealed = blob[:_NONCE], blob[_NONCE:]
    try:
        plaintext = AESGCM(key).decrypt(nonce, sealed, _aad(start))
    except InvalidTag:
        return SequenceResult(SequenceStage.AUTH)
    address_len = len(plaintext) - _TAIL
    if address_len not in (4, 16):
        return SequenceResult(SequenceStage.PARSE)
    tail = plaintext[address_len:]
    grant = SequenceGrant(
        address=str(ipaddress.ip_address(plaintext[:address_len])),
        proto=tail[0],
        port=int.from_bytes(tail[1:3], "big"),
        open_for=int.from_bytes(tail[3:6], "big"),
        timestamp=int.from_bytes(tail[6:10], "big"),
    )
    if abs(now - grant.timestamp) > window:
        return SequenceResult(SequenceStage.STALE, grant)
    seen = replay.record(replay_key(blob), now, 2 * window)
    if not isinstance(seen, Recorded):
        return SequenceResult(SequenceStage.REPLAY, grant)
    return SequenceResult(SequenceStage.OK, grant, seen)
