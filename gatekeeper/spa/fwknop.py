"""Single Packet Authorization in the wire format of fwknop 2.6 (Rijndael + HMAC-SHA256).

Pure and I/O-free: bytes, keys and a clock in, a result out. The format, as the stock
``fwknop`` client (libfko, FKO protocol 3.0.0) builds it with ``--use-hmac``:

1. The *encoded message* is colon-separated text::

       RANDOM:B64(USER):TIMESTAMP:VERSION:TYPE:B64(MESSAGE)[:B64(NAT)][:B64(AUTH)][:TIMEOUT]

   ``RANDOM`` is 16 decimal digits, ``TIMESTAMP`` Unix seconds, ``VERSION`` ``3.0.0``,
   ``TYPE`` a message type (1 = access, 3 = access with a client timeout, others below),
   ``MESSAGE`` for an access request ``IP,proto/port[,proto/port...]``. ``B64`` is standard
   base64 with the ``=`` padding removed. ``NAT`` is present for the NAT types, ``TIMEOUT``
   (decimal seconds) for the client-timeout types.
2. ``:B64(SHA-256(encoded message))`` (the *digest*) is appended.
3. That plaintext is encrypted the OpenSSL ``enc`` way: an 8-byte random salt; key (32
   bytes) and IV (16 bytes) from the EVP_BytesToKey construction with MD5 and one round
   (``D1 = MD5(key || salt)``, ``Di = MD5(D(i-1) || key || salt)``, key = D1||D2,
   IV = D3), where ``key`` is the raw (base64-decoded) Rijndael key; AES-256-CBC with
   PKCS#7 padding; the result ``b"Salted__" + salt + ciphertext`` is base64-encoded and
   the padding removed.
4. The HMAC-SHA256 (raw HMAC key) of that base64 text is appended in base64 without
   padding (43 characters).
5. The constant first 10 characters ``U2FsdGVkX1`` (base64 of ``Salted__``) are removed
   from the front: what is left is the UDP payload. The HMAC still covers them, so a
   verifier puts them back before checking it.

:func:`verify` runs its checks in a fixed order and stops at the first that fails; the
:class:`Stage` it reports is a metrics label only (the packet is dropped either way).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from enum import IntEnum

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from gatekeeper.spa.hosts import host_ip
from gatekeeper.spa.keyfile import HMAC_KEY, KEY, KeyFileError, b64decode, format_keys, read_keys
from gatekeeper.spa.replay import Recorded, ReplayCache

DEFAULT_WINDOW = 120.0  # seconds a timestamp may be off either way (fwknopd's default)
FKO_VERSION = "3.0.0"  # the protocol version fwknop 2.6.x writes

SALTED_PREFIX = b"U2FsdGVkX1"  # base64 of "Salted__", removed by the client
_SALTED = b"Salted__"
_HMAC_B64_LEN = 43  # HMAC-SHA256 in unpadded base64
_DIGESTS = {43: "sha256", 64: "sha384", 86: "sha512"}  # unpadded base64 length -> hash

MAX_ENCRYPTION_KEY = 32  # libfko refuses longer Rijndael keys
MAX_HMAC_KEY = 128
MIN_KEY = 16  # gatekeeper's own floor; ``fwknop --key-gen`` makes 32 and 64 bytes


def _b64_len(n: int) -> int:
    """Length of ``n`` bytes in base64 without ``=`` padding."""
    return (4 * n + 2) // 3


# The shortest access request that can be granted (16-digit random, 1-byte user, 1-digit
# timestamp, version and type, "::,tcp/0", a SHA-256 digest, six colons) is 81 bytes of
# plaintext, 96 once padded: the shortest useful packet follows. The ceiling is fwknop's.
MIN_PACKET = _b64_len(16 + 96) - len(SALTED_PREFIX) + _HMAC_B64_LEN
MAX_PACKET = 1500


class Stage(IntEnum):
    """Where :func:`verify` stopped; ``OK`` when every check passed."""

    OK = 0
    SIZE = 1  # shorter or longer than any valid packet
    HMAC = 2  # the HMAC does not match (wrong HMAC key, tampered, not SPA at all)
    DECRYPT = 3  # not base64, not a whole number of blocks, or bad padding
    PARSE = 4  # the plaintext is not a well-formed SPA message
    DIGEST = 5  # the inner digest does not match the fields
    STALE = 6  # timestamp more than the window away from now, either way
    REPLAY = 7  # this packet was accepted before (or the replay cache is full)
    ACCESS = 8  # asks for something this key may not open, or is not an access message
    SOURCE = 9  # the address in the packet is not the packet's source


class MessageType(IntEnum):
    COMMAND = 0
    ACCESS = 1
    NAT_ACCESS = 2
    CLIENT_TIMEOUT_ACCESS = 3
    CLIENT_TIMEOUT_NAT_ACCESS = 4
    LOCAL_NAT_ACCESS = 5
    CLIENT_TIMEOUT_LOCAL_NAT_ACCESS = 6


_NAT_TYPES = frozenset({2, 4, 5, 6})
_TIMEOUT_TYPES = frozenset({3, 4, 6})
_GRANTABLE_TYPES = frozenset({MessageType.ACCESS, MessageType.CLIENT_TIMEOUT_ACCESS})
PROTOCOLS = frozenset({"tcp", "udp", "icmp", "none"})  # what fwknop lets a client ask for

Access = tuple[str, int]  # ("tcp", 22)


@dataclass(frozen=True, slots=True, repr=False)
class SpaKeys:
    """The raw (base64-decoded) Rijndael and HMAC keys of one fwknop client."""

    encryption: bytes
    hmac: bytes
    origin: str = "<keys>"  # where they came from, for messages

    def __post_init__(self) -> None:
        if not MIN_KEY <= len(self.encryption) <= MAX_ENCRYPTION_KEY:
            raise ValueError(f"encryption key must be {MIN_KEY}-{MAX_ENCRYPTION_KEY} bytes")
        if not MIN_KEY <= len(self.hmac) <= MAX_HMAC_KEY:
            raise ValueError(f"HMAC key must be {MIN_KEY}-{MAX_HMAC_KEY} bytes")
        if hmac.compare_digest(self.encryption, self.hmac):
            raise ValueError("the encryption and HMAC keys must differ")

    def __repr__(self) -> str:  # never print key material
        return f"SpaKeys(origin={self.origin!r})"


@dataclass(frozen=True, slots=True)
class SpaMessage:
    """The decoded fields of an authenticated SPA packet."""

    random: str
    user: str
    timestamp: int
    version: str
    message_type: int
    message: str  # the decoded message text, e.g. "203.0.113.10,tcp/22"
    address: str  # the IP in the message ("0.0.0.0" when the client used -s)
    access: tuple[Access, ...]  # empty for a command message
    command: str | None
    nat_access: str | None
    server_auth: str | None
    client_timeout: int | None
    digest: str


@dataclass(frozen=True, slots=True)
class SpaResult:
    """What :func:`verify` found: ``message`` is set from ``STALE`` on, ``grant`` on ``OK``."""

    stage: Stage
    message: SpaMessage | None = None
    grant: str | None = None  # the address to open the access for
    recorded: Recorded | None = None  # new to the replay cache (from ACCESS on): now recorded

    @property
    def ok(self) -> bool:
        return self.stage is Stage.OK


# -- keys -------------------------------------------------------------------------------


def _b64encode(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")


_SPA_KEYS = {
    KEY: range(MIN_KEY, MAX_ENCRYPTION_KEY + 1),
    HMAC_KEY: range(MIN_KEY, MAX_HMAC_KEY + 1),
}
_KEY_GEN = "fwknop --key-gen or gatekeeper spa --key-gen"


def parse_key_file(text: str, name: str) -> SpaKeys:
    """The two keys of a key file in any spelling :mod:`gatekeeper.spa.keyfile` reads;
    anything else is a :class:`KeyFileError` naming ``name`` and the line."""
    found = read_keys(text, name, _SPA_KEYS, _KEY_GEN)
    if hmac.compare_digest(found[KEY], found[HMAC_KEY]):
        raise KeyFileError(f"{name}: {KEY} and {HMAC_KEY} must differ")
    return SpaKeys(found[KEY], found[HMAC_KEY], name)


def format_key_file(keys: SpaKeys) -> str:
    """The two lines ``fwknop --key-gen`` prints, for these keys."""
    return format_keys({KEY: keys.encryption, HMAC_KEY: keys.hmac})


def generate_keys(rng: Callable[[int], bytes] = os.urandom) -> SpaKeys:
    """Fresh keys of the sizes ``fwknop --key-gen`` makes: 32 and 64 bytes."""
    return SpaKeys(rng(32), rng(64), "<generated>")


# -- the cipher -------------------------------------------------------------------------


def _key_iv(key: bytes, salt: bytes) -> tuple[bytes, bytes]:
    """OpenSSL's EVP_BytesToKey with MD5 and one round: 32 bytes of key, 16 of IV."""
    out = b""
    block = b""
    while len(out) < 48:
        block = hashlib.md5(block + key + salt, usedforsecurity=False).digest()
        out += block
    return out[:32], out[32:48]


def _hmac_b64(key: bytes, text: bytes) -> bytes:
    return _b64encode(hmac.new(key, text, hashlib.sha256).digest())


def seal(keys: SpaKeys, plaintext: bytes, salt: bytes | None = None) -> bytes:
    """Encrypt and authenticate a plaintext (steps 3-5 above): the UDP payload."""
    if salt is None:
        salt = secrets.token_bytes(8)
    if len(salt) != 8:
        raise ValueError("the salt must be 8 bytes")
    key, iv = _key_iv(keys.encryption, salt)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    text = _b64encode(_SALTED + salt + ciphertext)
    return text[len(SALTED_PREFIX):] + _hmac_b64(keys.hmac, text)


def _unseal(keys: SpaKeys, text: bytes) -> bytes | None:
    """Decrypt base64 text that starts with the ``Salted__`` prefix; None if it cannot."""
    try:
        raw = b64decode(text)
    except ValueError:
        return None
    ciphertext = raw[16:]
    if raw[:8] != _SALTED or not ciphertext or len(ciphertext) % 16:
        return None
    key, iv = _key_iv(keys.encryption, raw[8:16])
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        return None


# -- encoding ---------------------------------------------------------------------------


def _access_text(address: str, access: Sequence[Access]) -> str:
    ip = ipaddress.ip_address(address)
    if not access:
        raise ValueError("ask for at least one proto/port")
    specs = []
    for proto, port in access:
        if proto not in PROTOCOLS:
            raise ValueError(f"protocol {proto!r}: must be one of {', '.join(sorted(PROTOCOLS))}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port}: must be 0-65535")
        specs.append(f"{proto}/{port}")
    return f"{ip},{','.join(specs)}"


def encode_message(
    access: Sequence[Access],
    address: str,
    now: float,
    *,
    user: str = "gatekeeper",
    client_timeout: int = 0,
    random: str | None = None,
    version: str = FKO_VERSION,
) -> bytes:
    """The plaintext (encoded message, ``:``, digest) that :func:`seal` encrypts."""
    if random is None:
        random = str(10**15 + secrets.randbelow(9 * 10**15))
    if not re.fullmatch(r"[0-9]{16}", random):
        raise ValueError("random must be 16 decimal digits")
    if not user or not user.isprintable() or len(user.encode()) > 64:
        raise ValueError("user must be 1-64 bytes of printable text")
    if not 0 <= client_timeout <= 0xFFFFFFFF:
        raise ValueError("client_timeout must be 0-4294967295")
    if not re.fullmatch(r"[0-9A-Za-z._-]{1,8}", version):
        raise ValueError("version must be 1-8 characters like 3.0.0")
    kind = MessageType.CLIENT_TIMEOUT_ACCESS if client_timeout else MessageType.ACCESS
    fields = [
        random.encode(),
        _b64encode(user.encode()),
        str(int(now)).encode(),
        version.encode(),
        str(int(kind)).encode(),
        _b64encode(_access_text(address, access).encode()),
    ]
    if client_timeout:
        fields.append(str(client_timeout).encode())
    encoded = b":".join(fields)
    return encoded + b":" + _b64encode(hashlib.sha256(encoded).digest())


def encode(
    keys: SpaKeys,
    access: Sequence[Access],
    address: str,
    now: float,
    *,
    user: str = "gatekeeper",
    client_timeout: int = 0,
    salt: bytes | None = None,
    random: str | None = None,
) -> bytes:
    """An SPA packet as ``fwknop -A ... -a ADDRESS --use-hmac`` sends it (UDP payload).

    ``access`` is a list like ``[("tcp", 22)]``; a ``client_timeout`` makes it a type 3
    message (``fwknop --fw-timeout``). ``salt`` and ``random`` are drawn when not given.
    fwknopd 2.6 only takes an IPv4 ``address``; an IPv6 one is a gatekeeper extension.
    """
    plaintext = encode_message(access, address, now, user=user, client_timeout=client_timeout,
                               random=random)
    return seal(keys, plaintext, salt)


# -- decoding ---------------------------------------------------------------------------

_RANDOM = re.compile(r"[0-9]{16}\Z")
_DIGITS = re.compile(r"[0-9]{1,12}\Z")
_KIND = re.compile(r"[0-9]{1,2}\Z")
_VERSION = re.compile(r"[0-9A-Za-z._-]{1,8}\Z")
_IP_CHARS = re.compile(r"[0-9A-Fa-f:.]{2,45}\Z")
_SPEC = re.compile(r"([a-z]{3,4})/([0-9]{1,5})\Z")


def _b64_field(text: str, limit: int) -> str:
    """A base64 field decoded to printable text of at most ``limit`` bytes."""
    raw = b64decode(text.encode("ascii"))
    if not raw or len(raw) > limit:
        raise ValueError("field size")
    value = raw.decode("utf-8")
    if not value.isprintable():
        raise ValueError("field text")
    return value


def _address(text: str) -> str:
    if not _IP_CHARS.match(text):
        raise ValueError("address")
    return str(ipaddress.ip_address(text))


def _access_list(specs: list[str]) -> tuple[Access, ...]:
    out = []
    for spec in specs:
        match = _SPEC.match(spec)
        if match is None or match.group(1) not in PROTOCOLS:
            raise ValueError("proto/port")
        port = int(match.group(2))
        if port > 65535:
            raise ValueError("port")
        out.append((match.group(1), port))
    return tuple(out)


def _parse(plaintext: bytes) -> tuple[SpaMessage, bytes]:
    """The fields and the encoded part the digest covers; ValueError if malformed."""
    text = plaintext.decode("ascii")
    if not text.isprintable():
        raise ValueError("control characters")
    encoded, _, digest = text.rpartition(":")
    fields = encoded.split(":")
    if len(fields) < 6 or len(digest) not in _DIGESTS:
        raise ValueError("field count")
    random, user_b64, stamp, version, kind_text, message_b64, *extra = fields
    if not (_RANDOM.match(random) and _DIGITS.match(stamp) and _VERSION.match(version)):
        raise ValueError("random, timestamp or version")
    if not _KIND.match(kind_text) or int(kind_text) > max(MessageType):
        raise ValueError("message type")
    kind = int(kind_text)
    user = _b64_field(user_b64, 64)
    message = _b64_field(message_b64, 256)
    ip_text, comma, rest = message.partition(",")
    if not comma or not rest:
        raise ValueError("message")
    address = _address(ip_text)
    if kind == MessageType.COMMAND:
        command: str | None = rest
        access: tuple[Access, ...] = ()
    else:
        command = None
        access = _access_list(rest.split(","))
    nat_access = _b64_field(extra.pop(0), 128) if kind in _NAT_TYPES and extra else None
    if kind in _NAT_TYPES and nat_access is None:
        raise ValueError("missing NAT access")
    client_timeout = None
    if kind in _TIMEOUT_TYPES:
        if not extra or not _DIGITS.match(extra[-1]):
            raise ValueError("missing client timeout")
        client_timeout = int(extra.pop())
    if len(extra) > 1:
        raise ValueError("field count")
    server_auth = _b64_field(extra[0], 64) if extra else None
    parsed = SpaMessage(
        random=random, user=user, timestamp=int(stamp), version=version, message_type=kind,
        message=message, address=address, access=access, command=command,
        nat_access=nat_access, server_auth=server_auth, client_timeout=client_timeout,
        digest=digest,
    )
    return parsed, encoded.encode("ascii")


def replay_key(text: bytes) -> bytes:
    """The replay-cache key of a packet: its base64 ciphertext, prefix and HMAC removed.

    The HMAC is a function of that text, and the prefix is put back by :func:`verify`
    whether or not the sender kept it, so every form of one packet has one key.
    """
    return hashlib.sha256(b"gatekeeper spa\0" + text).digest()


def _normalise(data: bytes) -> bytes:
    """Surrounding whitespace off and the stripped prefix off if a sender put it back."""
    data = data.strip()
    if data.startswith(SALTED_PREFIX):
        data = data[len(SALTED_PREFIX):]
    return data


def verify(
    data: bytes,
    keys: SpaKeys,
    now: float,
    *,
    replay: ReplayCache,
    allowed: Collection[Access],
    source: str | bytes,
    other_source: bool = False,
    window: float = DEFAULT_WINDOW,
) -> SpaResult:
    """Check one SPA packet (a UDP payload) against one key; never raises on any ``data``.

    The checks, in order: size; HMAC-SHA256 (constant-time, before any decryption);
    decryption; field parsing; the inner digest; the timestamp within ``window`` seconds
    of ``now`` either way; replay (the packet is then remembered for ``2 * window``
    seconds, even if a later check fails); every requested ``(proto, port)`` in
    ``allowed`` and the message an access request (type 1 or 3); the address in the
    message equal to ``source`` (the packet's source address, text or packed) unless
    ``other_source``. With ``other_source`` the message's address is granted, or
    ``source`` when the client sent ``0.0.0.0`` (``fwknop -s``). An IPv4-mapped address
    (``::ffff:a.b.c.d``, in the message or as ``source``) is the IPv4 host: the grant is
    always for the IPv4 form, the one its packets come from.

    For several keys on one port call this once per key: a wrong key fails at ``HMAC``,
    so the first result past ``HMAC`` belongs to the key that made the packet.
    """
    if len(data) > 2 * MAX_PACKET:  # bounds the work of normalising
        return SpaResult(Stage.SIZE)
    body = _normalise(data)
    if not MIN_PACKET <= len(body) <= MAX_PACKET:
        return SpaResult(Stage.SIZE)
    text, tag = body[:-_HMAC_B64_LEN], body[-_HMAC_B64_LEN:]
    if not hmac.compare_digest(_hmac_b64(keys.hmac, SALTED_PREFIX + text), tag):
        return SpaResult(Stage.HMAC)
    plaintext = _unseal(keys, SALTED_PREFIX + text)
    if plaintext is None:
        return SpaResult(Stage.DECRYPT)
    try:
        message, encoded = _parse(plaintext)
    except (ValueError, UnicodeError, binascii.Error):
        return SpaResult(Stage.PARSE)
    expected = _b64encode(hashlib.new(_DIGESTS[len(message.digest)], encoded).digest())
    if not hmac.compare_digest(expected, message.digest.encode("ascii")):
        return SpaResult(Stage.DIGEST)
    if abs(now - message.timestamp) > window:
        return SpaResult(Stage.STALE, message)
    seen = replay.record(replay_key(text), now, 2 * window)
    if not isinstance(seen, Recorded):
        return SpaResult(Stage.REPLAY, message)
    if message.message_type not in _GRANTABLE_TYPES or not all(a in allowed for a in message.access):
        return SpaResult(Stage.ACCESS, message, recorded=seen)
    try:
        sender = host_ip(source)
    except ValueError:
        return SpaResult(Stage.SOURCE, message, recorded=seen)
    asked = host_ip(message.address)  # ::ffff:a.b.c.d is a.b.c.d, granted as such
    if asked == sender:
        return SpaResult(Stage.OK, message, str(sender), seen)
    if not other_source:
        return SpaResult(Stage.SOURCE, message, recorded=seen)
    return SpaResult(Stage.OK, message, str(sender if asked.is_unspecified else asked), seen)
