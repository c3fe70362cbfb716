"""``import-fwknop`` for the GnuPG settings of an access.conf stanza: its ``spa_gpg`` table.

A stanza with ``GPG_DECRYPT_ID`` and no Rijndael key becomes a GnuPG door: ``GPG_HOME_DIR``
(the stanza's, else fwknopd.conf's, else fwknopd's default ``/root/.gnupg``) is ``home``,
``GPG_DECRYPT_ID`` ``recipient``, ``GPG_REMOTE_ID`` ``signers``, ``GPG_FINGERPRINT_ID``
``fingerprints``, ``GPG_REQUIRE_SIG N`` (or ``GPG_DISABLE_SIG Y``) ``require_signature =
false``, ``GPG_DECRYPT_PW`` a passphrase file (mode 0600) beside the key files. A stanza
with a Rijndael key as well keeps its Rijndael door, and a warning says how to add the
GnuPG one.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable

from gatekeeper.importers.fwknop_conf import Stanza, Value, yes
from gatekeeper.importers.key_files import KeyFile
from gatekeeper.importers.output import toml_list, toml_str

DEFAULT_HOME = "/root/.gnupg"  # fwknopd's GPG_HOME_DIR
_KEY_ID = re.compile(r"(?:[0-9A-F]{8}|[0-9A-F]{16}|[0-9A-F]{40})\Z")
_NOT_CARRIED = {
    "GPG_EXE": "gatekeeper runs the gpg on its PATH",
    "GPG_IGNORE_SIG_VERIFY_ERROR": "gatekeeper refuses every signature that is not good "
                                   "(stage gpg_signer)",
}
Warn = Callable[[int | None, str, str], None]


def is_gpg(stanza: Stanza) -> bool:
    return any(k.startswith("GPG_") for k in stanza.values)


def _ids(value: Value | None, pattern: re.Pattern[str]) -> tuple[list[str], list[str]]:
    """(the IDs that fit ``pattern``, the others) of a comma-separated list."""
    good: list[str] = []
    bad: list[str] = []
    for entry in (e.strip() for e in ("" if value is None else value.text).split(",")):
        if entry:
            text = entry.replace(" ", "").upper().removeprefix("0X")
            (good if pattern.match(text) else bad).append(text if pattern.match(text) else entry)
    return good, bad


def gpg_table(stanza: Stanza, door: str, key_dir: str, server_home: Value | None,
              warn: Warn) -> tuple[str, list[KeyFile], str | None]:
    """The door's ``spa_gpg`` value, the passphrase file to write, and why the door cannot
    work (None: it can)."""
    values = stanza.values
    for key, why in _NOT_CARRIED.items():
        if key in values:
            warn(values[key].line, door, f"{key} {values[key].text}: {why}; not carried over")
    home_value = values.get("GPG_HOME_DIR") or server_home
    home = DEFAULT_HOME if home_value is None else home_value.text
    decrypt = values.get("GPG_DECRYPT_ID")
    recipient, bad = _ids(decrypt, _KEY_ID)
    problem = None
    if bad or len(recipient) != 1:
        given = "no GPG_DECRYPT_ID" if decrypt is None else f"GPG_DECRYPT_ID {decrypt.text!r}"
        problem = (f"{given}: gatekeeper needs the key ID (8 or 16 hex digits) or fingerprint of "
                   "the secret key to decrypt with (gpg --list-secret-keys --keyid-format long)")
    signers, bad_signers = _ids(values.get("GPG_REMOTE_ID"), _KEY_ID)
    fingerprints, bad_fprs = _ids(values.get("GPG_FINGERPRINT_ID"), re.compile(r"[0-9A-F]{40}\Z"))
    for key, bad_ids in (("GPG_REMOTE_ID", bad_signers), ("GPG_FINGERPRINT_ID", bad_fprs)):
        if bad_ids:
            problem = problem or (f"{key} {', '.join(bad_ids)}: gatekeeper takes key IDs (8 or 16 hex "
                                  "digits) and fingerprints (40)")
    asked = values.get("GPG_REQUIRE_SIG")  # fwknopd's default Y; with GPG_DISABLE_SIG Y as well: Y
    required = (asked is None or yes(asked)) and not (yes(values.get("GPG_DISABLE_SIG")) and not yes(asked))
    if required and not signers and not fingerprints:
        problem = problem or ("GPG_REQUIRE_SIG without GPG_REMOTE_ID or GPG_FINGERPRINT_ID (fwknopd "
                              "refuses it too)")
    parts = [f"home = {toml_str(home)}", f"recipient = {toml_str(recipient[0] if recipient else '')}"]
    if signers:
        parts.append(f"signers = {toml_list(signers)}")
    if fingerprints:
        parts.append(f"fingerprints = {toml_list(fingerprints)}")
    if not required:
        parts.append("require_signature = false")
        warn(stanza.line, door, "GnuPG signatures not required (GPG_REQUIRE_SIG N): anyone with the "
             "door's public key can make packets it takes")
    files: list[KeyFile] = []
    password = values.get("GPG_DECRYPT_PW")
    if password is not None:
        path = posixpath.join(key_dir, f"{door}.gpg-passphrase")
        files.append(KeyFile(path, password.text + "\n"))
        parts.append(f"passphrase_file = {toml_str(path)}")
    return "{ " + ", ".join(parts) + " }", files, problem
