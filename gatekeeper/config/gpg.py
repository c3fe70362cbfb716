"""A door's ``spa_gpg`` table: fwknop's GnuPG SPA packets (fwknopd's ``GPG_*`` settings).

::

    spa_gpg = { home = "/var/lib/gatekeeper/gnupg", recipient = "KEYID", fingerprints = ["..."] }

``home`` is the GnuPG home with the door's secret key (GPG_HOME_DIR) and the signers'
public keys; ``recipient`` the key ID or fingerprint of the secret key (GPG_DECRYPT_ID);
``signers`` key IDs (GPG_REMOTE_ID) and ``fingerprints`` (GPG_FINGERPRINT_ID) a signature
must come from; ``require_signature`` (GPG_REQUIRE_SIG, default true); ``passphrase_file``
the secret key's passphrase (GPG_DECRYPT_PW; none: the key has none, GPG_ALLOW_NO_PW);
``budget`` the share of a worker's time the door may spend in gpg, ``timeout`` a run's
limit in seconds. The door's ``key_file``, if given, holds its HMAC key only.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from typing import Any

from gatekeeper.config import keyfiles
from gatekeeper.config.values import Reader
from gatekeeper.model import DEFAULT_GPG_BUDGET, DEFAULT_GPG_TIMEOUT, GPG_PROGRAM, SpaGpg

GPG_SETTINGS = {"home", "recipient", "signers", "fingerprints", "require_signature",
                "passphrase_file", "budget", "timeout"}
_KEY_ID = re.compile(r"(?:[0-9A-F]{8}|[0-9A-F]{16}|[0-9A-F]{40})\Z")
_FINGERPRINT = re.compile(r"[0-9A-F]{40}\Z")
MAX_SIGNERS = 256
log = logging.getLogger("gatekeeper.config")


def _hex(raw: Any, key: str, reader: Reader, pattern: re.Pattern[str], what: str) -> str:
    text = reader._str(raw, key).replace(" ", "").upper().removeprefix("0X")
    if not pattern.match(text):
        raise reader.fail(key, f"{raw!r}: must be {what}")
    return text


def _hex_list(raw: Any, key: str, reader: Reader, pattern: re.Pattern[str], what: str) -> tuple[str, ...]:
    values = reader._list(raw, key)
    if len(values) > MAX_SIGNERS:
        raise reader.fail(key, f"at most {MAX_SIGNERS} entries")
    return tuple(_hex(v, f"{key}[{i}]", reader, pattern, what) for i, v in enumerate(values))


def _directory(raw: Any, key: str, reader: Reader) -> str:
    path = reader._str(raw, key)
    if not path.startswith("/"):
        raise reader.fail(key, f"{path!r}: must be an absolute path")
    if not os.path.isdir(path):
        raise reader.fail(key, f"{path}: no such directory (a GnuPG home: gpg --homedir {path} ...)")
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise reader.fail(key, f"{path}: the daemon cannot write it (gpg keeps its agent's socket "
                          "there); keep it where it may write, e.g. under state_dir")
    return path


def spa_gpg(reader: Reader, raw: Any, where: str, key_file: str | None) -> SpaGpg:
    """The door's :class:`SpaGpg`, its HMAC key read from ``key_file`` (None: no HMAC)."""
    key = f"{where}.spa_gpg"
    data = reader._table(raw, key, GPG_SETTINGS)
    for needed in ("home", "recipient"):
        if needed not in data:
            raise reader.fail(f"{key}.{needed}", "is required")
    if shutil.which(GPG_PROGRAM) is None:
        raise reader.fail(key, f"{GPG_PROGRAM} (GnuPG) is not on PATH: apt install gnupg")
    home = _directory(data["home"], f"{key}.home", reader)
    recipient = _hex(data["recipient"], f"{key}.recipient", reader, _KEY_ID,
                     "the key ID (8 or 16 hex digits) or fingerprint (40) of the door's secret key")
    signers = _hex_list(data.get("signers", []), f"{key}.signers", reader, _KEY_ID,
                        "a key ID (8 or 16 hex digits) or fingerprint (40)")
    fingerprints = _hex_list(data.get("fingerprints", []), f"{key}.fingerprints", reader,
                             _FINGERPRINT, "a fingerprint (40 hex digits)")
    required = data.get("require_signature", True)
    if not isinstance(required, bool):
        raise reader.fail(f"{key}.require_signature", f"must be true or false, got {required!r}")
    if required and not signers and not fingerprints:
        raise reader.fail(f"{key}.signers", "name the signers (key IDs) or fingerprints a "
                          "signature may come from (or require_signature = false)")
    if not required:
        log.warning("%s: %s.require_signature = false: anyone with the door's public key can "
                    "make packets it takes (fwknopd's GPG_REQUIRE_SIG N)", reader.name, key)
    passphrase = ""
    if "passphrase_file" in data:
        passphrase = reader._str(data["passphrase_file"], f"{key}.passphrase_file")
        keyfiles.key_file(passphrase, f"{key}.passphrase_file", reader.fail)  # 0600, readable
    budget = reader._number(data.get("budget", DEFAULT_GPG_BUDGET), f"{key}.budget", 0, 1)
    timeout = reader._number(data.get("timeout", DEFAULT_GPG_TIMEOUT), f"{key}.timeout", 0, 10)
    hmac_key = b"" if key_file is None else hmac_only(key_file, f"{where}.key_file", reader)
    return SpaGpg(home, recipient, signers, fingerprints, required, passphrase, budget, timeout,
                  hmac_key)


def hmac_only(path: str, key: str, reader: Reader) -> bytes:
    """A GnuPG door's key file: one HMAC key (``HMAC_KEY_BASE64`` or ``HMAC_KEY``)."""
    from gatekeeper.spa.fwknop import MAX_HMAC_KEY, MIN_KEY
    from gatekeeper.spa.keyfile import HMAC_KEY, HMAC_PASSPHRASE, KeyFileError, read_keys

    text = keyfiles.key_file(path, key, reader.fail)
    try:
        found = read_keys(text, path, {HMAC_KEY: range(MIN_KEY, MAX_HMAC_KEY + 1)},
                          "fwknop --key-gen (its HMAC_KEY_BASE64 line)",
                          {HMAC_PASSPHRASE: (HMAC_KEY, range(1, MAX_HMAC_KEY + 1))})
    except KeyFileError as exc:
        raise reader.fail(key, str(exc)) from None
    return found[HMAC_KEY]
