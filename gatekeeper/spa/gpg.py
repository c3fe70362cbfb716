"""fwknop's GnuPG SPA packets (``fwknop --gpg-recipient-key K --gpg-signer-key S``), pure.

The client builds the same plaintext as for Rijndael (encoded message, ``:``, digest; see
:mod:`gatekeeper.spa.fwknop`), has GnuPG encrypt it to the server's key (and sign it with
the signer's), base64-encodes the binary OpenPGP message without ``=`` padding, and with
``--use-hmac`` appends the HMAC of that text. Its first two characters, always ``hQ``
from an old-format public-key packet longer than 255 bytes (an RSA key of 2048 bits or
more), are cut off the front as ``U2FsdGVkX1`` is for Rijndael: the HMAC still covers
them. fwknopd takes text of 400 characters or more for GnuPG (``MIN_GNUPG_MSG_SIZE``).

Nothing here runs ``gpg``: :func:`unwrap` checks size and HMAC and returns the OpenPGP
message to decrypt; an adapter (``gatekeeper/queue/gpg.py``) runs GnuPG on it, within a
:class:`Budget`, and :func:`judge` reads GnuPG's status lines into the plaintext (which
:func:`gatekeeper.spa.fwknop.check_plaintext` then checks like a Rijndael one) or the
stage that refuses it.
"""

from __future__ import annotations

import binascii
import hmac
import re
from dataclasses import dataclass

from gatekeeper.spa import cipher
from gatekeeper.spa.cipher import TAG_LENGTHS
from gatekeeper.spa.fwknop import MAX_PACKET, Stage
from gatekeeper.spa.keyfile import b64decode

GPG_PREFIX = b"hQ"  # fwknop's B64_GPG_PREFIX
MIN_GPG_TEXT = 400  # fwknop's MIN_GNUPG_MSG_SIZE, prefix included
MAX_PLAINTEXT = MAX_PACKET  # more output than any SPA plaintext: refused (and gpg killed)
_STATUS = "[GNUPG:] "
_HEX = re.compile(r"[0-9A-F]+\Z")


@dataclass(frozen=True, slots=True)
class Sealed:
    """A GnuPG SPA packet past size and HMAC: ``message`` is the binary OpenPGP message."""

    message: bytes


def unwrap(data: bytes, hmac_key: bytes, hmac_digest: str | None,
           tell_types: bool = False) -> Stage | Sealed:
    """The OpenPGP message of a packet, or where it stopped: ``SIZE`` (too short or long
    for GnuPG SPA), ``HMAC`` (``hmac_digest`` given and the HMAC with ``hmac_key`` wrong;
    ``HMAC_TYPE`` instead, if ``tell_types``, when it is right under another digest type),
    ``DECRYPT`` (not base64). Cheap: no public-key work (at most five HMACs)."""
    if len(data) > 2 * MAX_PACKET:
        return Stage.SIZE
    body = data.strip()
    length = 0 if hmac_digest is None else TAG_LENGTHS[hmac_digest]
    if len(body) > MAX_PACKET:
        return Stage.SIZE
    if len(body) - length + len(GPG_PREFIX) < MIN_GPG_TEXT:
        other = hmac_digest is not None and tell_types and _other_type(body, hmac_key, hmac_digest)
        return Stage.HMAC_TYPE if other else Stage.SIZE
    text = GPG_PREFIX + body[:len(body) - length]
    if hmac_digest is not None and not hmac.compare_digest(
            cipher.tag(hmac_key, text, hmac_digest), body[-length:]):
        other = tell_types and _other_type(body, hmac_key, hmac_digest)
        return Stage.HMAC_TYPE if other else Stage.HMAC
    try:
        return Sealed(b64decode(text))
    except (ValueError, binascii.Error):
        return Stage.DECRYPT


def _other_type(body: bytes, hmac_key: bytes, hmac_digest: str) -> bool:
    """Whether the packet's HMAC is right for ``hmac_key`` under a digest type other than
    the door's (the client's ``--hmac-digest-type`` differs)."""
    for name, length in TAG_LENGTHS.items():
        if name == hmac_digest or len(body) - length + len(GPG_PREFIX) < MIN_GPG_TEXT:
            continue
        if hmac.compare_digest(cipher.tag(hmac_key, GPG_PREFIX + body[:-length], name), body[-length:]):
            return True
    return False


@dataclass(frozen=True, slots=True)
class Decrypted:
    """What one ``gpg --decrypt`` run gave: its output (None: too much, or none), its
    ``--status-fd`` text, the adapter's ``error`` (timeout, cannot run, ...) if any, and
    gpg's exit ``code``."""

    plaintext: bytes | None
    status: str
    error: str = ""
    code: int = -1


@dataclass(frozen=True, slots=True)
class Policy:
    """Whose packets a GnuPG door takes: decrypted with ``recipient`` (key ID or fingerprint),
    signed (unless not ``require_signature``) by a key of ``signers`` (key IDs) or
    ``fingerprints``; with neither list, any good signature."""

    recipient: str
    signers: tuple[str, ...] = ()
    fingerprints: tuple[str, ...] = ()
    require_signature: bool = True


def _is_key(fingerprints: tuple[str, ...], wanted: str) -> bool:
    """Whether ``wanted`` (a key ID, the end of a fingerprint, or a whole one) names one
    of the ``fingerprints`` (those of a key and its primary key)."""
    return any(f == wanted or (len(wanted) in (8, 16) and f.endswith(wanted)) for f in fingerprints)


def _signer_allowed(fprs: tuple[str, ...], policy: Policy) -> bool:
    if not policy.signers and not policy.fingerprints:
        return True
    return any(f in policy.fingerprints for f in fprs) or any(
        _is_key(fprs, s) for s in policy.signers)


def status_lines(status: str) -> list[list[str]]:
    """GnuPG's status lines as keyword and arguments; other lines are left out."""
    return [line[len(_STATUS):].split(" ") for line in status.splitlines() if line.startswith(_STATUS)]


def _hex_args(args: list[str]) -> tuple[str, ...]:
    return tuple(a for a in args if len(a) >= 16 and _HEX.match(a))


def judge(run: Decrypted, policy: Policy) -> Stage | bytes:
    """The plaintext of a GnuPG run, or the stage that refuses it: ``DECRYPT`` (not
    decrypted: malformed, tampered, timed out, too long), ``GPG_RECIPIENT`` (for a key
    this home has no secret key of, or decrypted with one other than ``recipient``),
    ``GPG_UNSIGNED`` (no signature, one required), ``GPG_SIGNER`` (a signature that is not
    good, made by a key not allowed, or more than one)."""
    lines = status_lines(run.status)
    words = {line[0] for line in lines}
    if "DECRYPTION_OKAY" not in words or run.plaintext is None or run.error:
        if "NO_SECKEY" in words and "DECRYPTION_OKAY" not in words:
            return Stage.GPG_RECIPIENT
        return Stage.DECRYPT
    if words & {"DECRYPTION_FAILED", "BADMDC"} or "GOODMDC" not in words:
        return Stage.DECRYPT
    used = next((_hex_args(line[1:]) for line in lines if line[0] == "DECRYPTION_KEY"), ())
    if not _is_key(used, policy.recipient):
        return Stage.GPG_RECIPIENT
    signatures = sum(1 for line in lines if line[0] == "NEWSIG")
    if signatures == 0 and not words & {"GOODSIG", "BADSIG", "ERRSIG", "VALIDSIG"}:
        if policy.require_signature:
            return Stage.GPG_UNSIGNED
        return run.plaintext if run.code == 0 else Stage.DECRYPT
    bad = {"BADSIG", "ERRSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG"}
    valid = [line for line in lines if line[0] == "VALIDSIG"]
    if signatures > 1 or words & bad or "GOODSIG" not in words or len(valid) != 1:
        return Stage.GPG_SIGNER
    args = valid[0][1:] or [""]  # signing key's fingerprint ... primary key's fingerprint (last)
    fprs = tuple(a for a in (args[0], args[-1]) if len(a) >= 32 and _HEX.match(a))
    if not fprs or not _signer_allowed(fprs, policy):
        return Stage.GPG_SIGNER
    return run.plaintext if run.code == 0 else Stage.DECRYPT


class Budget:
    """The GnuPG time one door may spend: a bucket of seconds that fills at ``share``
    seconds a second up to ``burst``; a run may start while it holds any, and what the run
    took is taken out (so the balance can go below zero, and a run of ``timeout`` seconds
    costs that much). Over time a door spends at most ``share`` of the worker's time in
    GnuPG, whatever is sent to it."""

    __slots__ = ("at", "balance", "burst", "share")

    def __init__(self, share: float, burst: float) -> None:
        self.share = share
        self.burst = burst
        self.balance = burst
        self.at: float | None = None

    def take(self, now: float) -> bool:
        """Whether a run may start at ``now`` (monotonic seconds)."""
        if self.at is not None:
            self.balance = min(self.burst, self.balance + (now - self.at) * self.share)
        self.at = now
        return self.balance > 0

    def spend(self, seconds: float) -> None:
        self.balance -= max(0.0, seconds)
