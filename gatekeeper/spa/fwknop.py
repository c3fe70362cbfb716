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
3. That plaintext is encrypted (:mod:`gatekeeper.spa.cipher`: AES in the ``-M`` mode,
   key and IV from the key and a salt) to base64 text starting ``U2FsdGVkX1``.
4. With ``--use-hmac`` the HMAC (``--hmac-digest-type``, SHA-256 by default) of that
   text is appended in base64 without padding (43 characters for SHA-256).
5. The constant first 10 characters ``U2FsdGVkX1`` (base64 of ``Salted__``) are removed
   from the front: what is left is the UDP payload. The HMAC still covers them, so a
   verifier puts them back before checking it.

:func:`verify` runs its checks in a fixed order and stops at the first that fails; the
:class:`Stage` it reports is a metrics label only (the packet is dropped either way).
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import IntEnum
from typing import Required, TypedDict, Unpack

from gatekeeper.model import DEFAULT_SPA_HMAC_DIGEST
from gatekeeper.spa import cipher
from gatekeeper.spa.cipher import (
    DEFAULT_SUITE,
    DIGEST_LENGTHS,
    SALTED_PREFIX,
    TAG_LENGTHS,
    Suite,
    b64_len,
    text_fits,
)
from gatekeeper.spa.hosts import host_ip
from gatekeeper.spa.keyfile import (
    HMAC_KEY,
    HMAC_PASSPHRASE,
    KEY,
    PASSPHRASE,
    KeyFileError,
    b64decode,
    format_keys,
    read_keys,
)
from gatekeeper.spa.nat import NatTarget, nat_decision
from gatekeeper.spa.replay import Recorded, ReplayCache

DEFAULT_WINDOW = 120.0  # seconds a timestamp may be off either way (fwknopd's default)
FKO_VERSION = "3.0.0"  # the protocol version fwknop 2.6.x writes

MAX_ENCRYPTION_KEY = 32  # libfko refuses longer Rijndael keys (base64 or passphrase)
MAX_HMAC_KEY = 128  # the client cuts a longer --key-hmac to 128 bytes; refused here
MIN_KEY = 16  # gatekeeper's floor for base64 keys; ``fwknop --key-gen`` makes 32 and 64

# The shortest access request that can be granted (16-digit random, 1-byte user, 1-digit
# timestamp, version and type, "::,tcp/0", six colons) is 38 bytes and its digest of
# plaintext: the shortest useful text follows from the shortest digest a door takes.
_MIN_MESSAGE = 38
MAX_PACKET = 1500  # fwknop's ceiling


@functools.lru_cache(maxsize=64)
def min_text(suite: Suite) -> int:
    """The shortest text (prefix removed, no HMAC) of a packet ``suite`` can grant."""
    plain = _MIN_MESSAGE + min(TAG_LENGTHS[d] for d in suite.digests)
    return b64_len(16 + (plain // 16 + 1) * 16) - len(SALTED_PREFIX)  # PKCS#7 adds 1-16


MIN_PACKET = min_text(DEFAULT_SUITE) + TAG_LENGTHS[DEFAULT_SPA_HMAC_DIGEST]


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
    HMAC_TYPE = 10  # the HMAC is right for the door's key, but of another digest type
    DIGEST_TYPE = 11  # the message digest is of a type the door does not accept
    COMMAND = 12  # a command message (fwknop --server-cmd) whose text the door does not allow
    GPG_BUSY = 13  # a GnuPG packet over the door's GnuPG time budget: dropped undecrypted
    GPG_RECIPIENT = 14  # a GnuPG packet for a key other than the door's recipient
    GPG_UNSIGNED = 15  # a GnuPG packet without a signature, on a door that requires one
    GPG_SIGNER = 16  # a GnuPG signature that is bad, or by a signer the door does not allow


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
PROTOCOLS = frozenset({"tcp", "udp", "icmp", "none"})  # what fwknop lets a client ask for

Access = tuple[str, int]  # ("tcp", 22)


@dataclass(frozen=True, slots=True, repr=False)
class SpaKeys:
    """The raw Rijndael and HMAC keys of one fwknop client: base64 keys decoded, or
    passphrases as typed; no HMAC key (``b""``) for a door without HMAC."""

    encryption: bytes
    hmac: bytes
    origin: str = "<keys>"  # where they came from, for messages

    def __post_init__(self) -> None:
        if not 1 <= len(self.encryption) <= MAX_ENCRYPTION_KEY:
            raise ValueError(f"encryption key must be 1-{MAX_ENCRYPTION_KEY} bytes")
        if len(self.hmac) > MAX_HMAC_KEY:
            raise ValueError(f"HMAC key must be at most {MAX_HMAC_KEY} bytes")
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
    grant: str | None = None  # the address to open the access (or run the command) for
    recorded: Recorded | None = None  # new to the replay cache (from ACCESS on): now recorded
    nat: NatTarget | None = None  # on OK for NAT access: DNAT the -A port to this target

    @property
    def ok(self) -> bool:
        return self.stage is Stage.OK


# -- keys -------------------------------------------------------------------------------

_SPA_KEYS = {
    KEY: range(MIN_KEY, MAX_ENCRYPTION_KEY + 1),
    HMAC_KEY: range(MIN_KEY, MAX_HMAC_KEY + 1),
}
# access.conf's passphrase lines: the text as typed is the key (what --key-rijndael and
# --key-hmac take), of any length the client accepts
_PASSPHRASES = {
    PASSPHRASE: (KEY, range(1, MAX_ENCRYPTION_KEY + 1)),
    HMAC_PASSPHRASE: (HMAC_KEY, range(1, MAX_HMAC_KEY + 1)),
}
_KEY_GEN = "fwknop --key-gen or gatekeeper spa --key-gen"


def parse_key_file(text: str, name: str, *, with_hmac: bool = True) -> SpaKeys:
    """The keys of a key file in any spelling :mod:`gatekeeper.spa.keyfile` reads: a
    Rijndael key (``KEY_BASE64`` or the passphrase ``KEY``) and, ``with_hmac``, an HMAC
    key (``HMAC_KEY_BASE64`` or ``HMAC_KEY``); without, an HMAC key is refused (the door
    would not check it). Anything else is a :class:`KeyFileError` naming ``name`` and
    the line."""
    fields = _SPA_KEYS if with_hmac else {KEY: _SPA_KEYS[KEY]}
    phrases = _PASSPHRASES if with_hmac else {PASSPHRASE: _PASSPHRASES[PASSPHRASE]}
    found = read_keys(text, name, fields, _KEY_GEN, phrases)
    hmac_key = found.get(HMAC_KEY, b"")
    if hmac.compare_digest(found[KEY], hmac_key):
        raise KeyFileError(f"{name}: the encryption and HMAC keys must differ")
    return SpaKeys(found[KEY], hmac_key, name)


def format_key_file(keys: SpaKeys) -> str:
    """The two lines ``fwknop --key-gen`` prints, for these keys."""
    return format_keys({KEY: keys.encryption, HMAC_KEY: keys.hmac})


def generate_keys(rng: Callable[[int], bytes] = os.urandom) -> SpaKeys:
    """Fresh keys of the sizes ``fwknop --key-gen`` makes: 32 and 64 bytes."""
    return SpaKeys(rng(32), rng(64), "<generated>")


def seal(keys: SpaKeys, plaintext: bytes, salt: bytes | None = None,
         suite: Suite = DEFAULT_SUITE) -> bytes:
    """Encrypt and (unless the suite has no HMAC) authenticate a plaintext (steps 3-5
    above): the UDP payload."""
    text = cipher.encrypt(keys.encryption, plaintext,
                          secrets.token_bytes(8) if salt is None else salt, suite.mode)
    tag = b"" if suite.hmac_digest is None else cipher.tag(keys.hmac, text, suite.hmac_digest)
    return text[len(SALTED_PREFIX):] + tag


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
    if len(fields) < 6 or len(digest) not in DIGEST_LENGTHS:
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


def _other_hmac(keys: SpaKeys, body: bytes, suite: Suite) -> bool:
    """Whether the packet carries an HMAC of another digest type made with this key (the
    client's --hmac-digest-type differs from the door's): tried only for the types whose
    length leaves a text the client can make, at most four HMACs."""
    for name, length in TAG_LENGTHS.items():
        if name == suite.hmac_digest or not text_fits(len(body) - length + len(SALTED_PREFIX)):
            continue
        text, tag = body[:-length], body[-length:]
        if hmac.compare_digest(cipher.tag(keys.hmac, SALTED_PREFIX + text, name), tag):
            return True
    return False


class Rules(TypedDict, total=False):
    """What a door permits, the same for :func:`verify` and :func:`check_plaintext`: its
    ``replay`` cache, the ``(proto, port)`` pairs it opens (``allowed``), the packet's
    ``source`` address, ``other_source`` (fwknop ``-s``/``-a`` another address), the
    timestamp ``window``, the ``commands`` it runs, its NAT targets (``nat``, ``force_nat``)."""

    replay: Required[ReplayCache]
    allowed: Required[Collection[Access]]
    source: Required[str | bytes]
    other_source: bool
    window: float
    commands: Collection[str]
    nat: Collection[NatTarget]
    force_nat: NatTarget | None


def verify(
    data: bytes,
    keys: SpaKeys,
    now: float,
    *,
    suite: Suite = DEFAULT_SUITE,
    tell_types: bool = True,
    **rules: Unpack[Rules],
) -> SpaResult:
    """Check one SPA packet (a UDP payload) against one key and a door's :class:`Rules`;
    never raises on any ``data``.

    The checks, in order: size; the HMAC of the suite's type (constant-time, before any
    decryption; a packet whose HMAC is right for this key under another type stops at
    ``HMAC_TYPE`` if ``tell_types``, else at ``HMAC``; a suite without HMAC skips this);
    decryption in the suite's mode; field parsing; the message digest of a type the
    suite accepts (``DIGEST_TYPE``), then its value; the timestamp within ``window``
    seconds of ``now`` either way; replay (the packet is then remembered for ``2 * window``
    seconds, even if a later check fails); every requested ``(proto, port)`` in
    ``allowed`` and the message an access request (type 1 or 3; NAT: :func:`gatekeeper.spa.nat.nat_decision`),
    or a command message (type 0) whose text is one of ``commands`` (else ``COMMAND``);
    the address in the message equal to ``source`` (the packet's source address, text or
    packed) unless ``other_source``. With ``other_source`` the message's address is granted, or
    ``source`` when the client sent ``0.0.0.0`` (``fwknop -s``). An IPv4-mapped address
    (``::ffff:a.b.c.d``, in the message or as ``source``) is the IPv4 host: the grant is
    always for the IPv4 form, the one its packets come from.

    For several keys on one port call this once per key: a wrong key fails at ``HMAC``
    (without HMAC: mostly at ``DECRYPT``, else at ``PARSE``), so the first result past
    those belongs to the key that made the packet.
    """
    if len(data) > 2 * MAX_PACKET:  # bounds the work of normalising
        return SpaResult(Stage.SIZE)
    body = _normalise(data)
    length = 0 if suite.hmac_digest is None else TAG_LENGTHS[suite.hmac_digest]
    if len(body) > MAX_PACKET:
        return SpaResult(Stage.SIZE)
    if len(body) < min_text(suite) + length:  # of another HMAC type, or too short
        other = length > 0 and tell_types and _other_hmac(keys, body, suite)
        return SpaResult(Stage.HMAC_TYPE if other else Stage.SIZE)
    text = body[:len(body) - length]
    if suite.hmac_digest is not None:
        expected_tag = cipher.tag(keys.hmac, SALTED_PREFIX + text, suite.hmac_digest)
        if not hmac.compare_digest(expected_tag, body[-length:]):
            other = tell_types and _other_hmac(keys, body, suite)
            return SpaResult(Stage.HMAC_TYPE if other else Stage.HMAC)
    plaintext = cipher.decrypt(keys.encryption, SALTED_PREFIX + text, suite.mode)
    if plaintext is None:
        return SpaResult(Stage.DECRYPT)
    return check_plaintext(plaintext, replay_key(text), now, digests=suite.digests, **rules)


def check_plaintext(
    plaintext: bytes,
    key: bytes,
    now: float,
    *,
    digests: Collection[str] = DEFAULT_SUITE.digests,
    **rules: Unpack[Rules],
) -> SpaResult:
    """:func:`verify`'s checks from field parsing on, for a decrypted ``plaintext`` (of
    Rijndael or GnuPG) whose replay-cache key is ``key``."""
    replay, allowed, source = rules["replay"], rules["allowed"], rules["source"]
    window = rules.get("window", DEFAULT_WINDOW)
    try:
        message, encoded = _parse(plaintext)
    except (ValueError, UnicodeError, binascii.Error):
        return SpaResult(Stage.PARSE)
    kind = DIGEST_LENGTHS[len(message.digest)]
    if kind not in digests:
        return SpaResult(Stage.DIGEST_TYPE)
    expected = cipher.b64encode(hashlib.new(kind, encoded).digest())
    if not hmac.compare_digest(expected, message.digest.encode("ascii")):
        return SpaResult(Stage.DIGEST)
    if abs(now - message.timestamp) > window:
        return SpaResult(Stage.STALE, message)
    seen = replay.record(key, now, 2 * window)
    if not isinstance(seen, Recorded):
        return SpaResult(Stage.REPLAY, message)
    target = None
    if message.message_type == MessageType.COMMAND:
        if message.command not in rules.get("commands", ()):
            return SpaResult(Stage.COMMAND, message, recorded=seen)
    else:
        grantable, target = nat_decision(message.message_type, message.access,
                                         message.nat_access, rules.get("nat", ()),
                                         rules.get("force_nat"))
        if not grantable or not all(a in allowed for a in message.access):
            return SpaResult(Stage.ACCESS, message, recorded=seen)
    return _nat_grant(_grantee(message, seen, source, rules.get("other_source", False)), target)


def _nat_grant(result: SpaResult, target: NatTarget | None) -> SpaResult:
    """A grant with its NAT target (DNAT keeps the family: else ``ACCESS``)."""
    if target is None or not result.ok or result.grant is None:
        return result
    if ipaddress.ip_address(result.grant).version != ipaddress.ip_address(target[0]).version:
        return SpaResult(Stage.ACCESS, result.message, recorded=result.recorded)
    return SpaResult(Stage.OK, result.message, result.grant, result.recorded, target)


def _grantee(message: SpaMessage, seen: Recorded, source: str | bytes, other_source: bool) -> SpaResult:
    """:func:`verify`'s last check: the address granted, the packet's source or (with
    ``other_source``) the message's."""
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
