"""fwknop's Rijndael layer: the key derivation, the encryption modes and the HMAC types.

Pure and I/O-free. What the stock client (libfko 2.6) does, learnt from its packets:

* key and IV: OpenSSL's EVP_BytesToKey with MD5 and one round over the key and an 8-byte
  salt (``D1 = MD5(key || salt)``, ``Di = MD5(D(i-1) || key || salt)``, key = D1||D2,
  IV = D3); the key is the raw Rijndael key, a base64 key decoded or a passphrase as
  typed (1-32 bytes). ``-M legacy`` (fwknop before 2.5) first makes the key exactly 16
  bytes: a shorter one padded with ASCII ``0`` characters, a longer one cut.
* every mode (``-M cbc|cfb|ofb|ctr|ecb|legacy``) encrypts the PKCS#7-padded plaintext,
  so the ciphertext is whole 16-byte blocks; CFB is CFB-128, CTR a 128-bit big-endian
  counter starting at the IV; legacy is CBC. The result ``b"Salted__" + salt +
  ciphertext`` is base64-encoded.
* the HMAC (``--hmac-digest-type``, SHA-256 by default) of that base64 text, keyed with
  the raw HMAC key, is appended in unpadded base64.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.decrepit.ciphers import modes as decrepit
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from gatekeeper.model import (
    DEFAULT_SPA_DIGESTS,
    DEFAULT_SPA_HMAC_DIGEST,
    DEFAULT_SPA_MODE,
    SPA_DIGEST_TYPES,
    SPA_MODES,
)
from gatekeeper.spa.keyfile import b64decode

SALTED = b"Salted__"
SALTED_PREFIX = b"U2FsdGVkX1"  # base64 of "Salted__", removed by the client

_LEGACY_KEY = 16  # -M legacy pads shorter keys with b"0" to this length, cuts longer ones


def b64encode(data: bytes) -> bytes:
    """Standard base64 without the ``=`` padding, as fwknop writes it."""
    return base64.b64encode(data).rstrip(b"=")


def b64_len(n: int) -> int:
    """Length of ``n`` bytes in base64 without ``=`` padding."""
    return (4 * n + 2) // 3


DIGEST_LENGTHS = {b64_len(hashlib.new(name).digest_size): name for name in SPA_DIGEST_TYPES}
TAG_LENGTHS = {name: length for length, name in DIGEST_LENGTHS.items()}


def text_fits(length: int) -> bool:
    """Whether ``length`` characters of (prefixed) base64 can be ``Salted__``, a salt and
    whole blocks: the only texts the client makes."""
    raw = length * 3 // 4
    return length >= b64_len(32) and b64_len(raw) == length and raw % 16 == 0


def key_iv(key: bytes, salt: bytes, mode: str = DEFAULT_SPA_MODE) -> tuple[bytes, bytes]:
    """OpenSSL's EVP_BytesToKey with MD5 and one round: 32 bytes of key, 16 of IV."""
    if mode == "legacy":
        key = key[:_LEGACY_KEY].ljust(_LEGACY_KEY, b"0")
    out = b""
    block = b""
    while len(out) < 48:
        block = hashlib.md5(block + key + salt, usedforsecurity=False).digest()
        out += block
    return out[:32], out[32:48]


@dataclass(frozen=True, slots=True)
class Suite:
    """The packets a door takes: fwknopd's ENCRYPTION_MODE, HMAC_DIGEST_TYPE (None: no
    HMAC, Rijndael only) and the message digests (``-m``) it accepts."""

    mode: str = DEFAULT_SPA_MODE
    hmac_digest: str | None = DEFAULT_SPA_HMAC_DIGEST
    digests: frozenset[str] = frozenset(DEFAULT_SPA_DIGESTS)

    def __post_init__(self) -> None:
        if self.mode not in SPA_MODES:
            raise ValueError(f"encryption mode {self.mode!r}: one of {', '.join(SPA_MODES)}")
        if self.hmac_digest is not None and self.hmac_digest not in TAG_LENGTHS:
            raise ValueError(f"HMAC digest {self.hmac_digest!r}: one of {', '.join(TAG_LENGTHS)}")
        if self.mode == "legacy" and self.hmac_digest is not None:
            raise ValueError("legacy mode goes without HMAC (the client refuses both)")
        if not self.digests or not self.digests <= set(DIGEST_LENGTHS.values()):
            raise ValueError(f"digests: some of {', '.join(DIGEST_LENGTHS.values())}")


DEFAULT_SUITE = Suite()


def _cipher(key: bytes, iv: bytes, mode: str) -> Cipher[Any]:
    chosen: modes.Mode
    if mode in ("cbc", "legacy"):
        chosen = modes.CBC(iv)
    elif mode == "cfb":
        chosen = decrepit.CFB(iv)
    elif mode == "ofb":
        chosen = decrepit.OFB(iv)
    elif mode == "ctr":
        chosen = modes.CTR(iv)
    elif mode == "ecb":
        chosen = modes.ECB()
    else:
        raise ValueError(f"encryption mode {mode!r}: must be one of {', '.join(SPA_MODES)}")
    return Cipher(algorithms.AES(key), chosen)


def _run(context: Any, data: bytes) -> bytes:
    out: bytes = context.update(data) + context.finalize()
    return out


def tag(key: bytes, text: bytes, digest: str = DEFAULT_SPA_HMAC_DIGEST) -> bytes:
    """The HMAC of ``text`` in unpadded base64."""
    return b64encode(hmac.new(key, text, digest).digest())


def encrypt(key: bytes, plaintext: bytes, salt: bytes, mode: str = DEFAULT_SPA_MODE) -> bytes:
    """The full base64 text (``U2FsdGVkX1...``) of a plaintext."""
    if len(salt) != 8:
        raise ValueError("the salt must be 8 bytes")
    aes_key, iv = key_iv(key, salt, mode)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    return b64encode(SALTED + salt + _run(_cipher(aes_key, iv, mode).encryptor(), padded))


def decrypt(key: bytes, text: bytes, mode: str = DEFAULT_SPA_MODE) -> bytes | None:
    """Decrypt base64 text that starts with the ``Salted__`` prefix; None if it cannot."""
    try:
        raw = b64decode(text)
    except ValueError:
        return None
    ciphertext = raw[16:]
    if raw[:8] != SALTED or not ciphertext or len(ciphertext) % 16:
        return None
    aes_key, iv = key_iv(key, raw[8:16], mode)
    padded = _run(_cipher(aes_key, iv, mode).decryptor(), ciphertext)
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        return None
