"""fwknopd's access.conf and fwknopd.conf as fwknopd 2.6 reads them, for
``gatekeeper import-fwknop``.

Both files are lines ``NAME value``: the name is the first word (a trailing ``:`` is
dropped, names are case-sensitive), the value the rest of the line after the blanks that
follow it, up to a ``;``. A line whose first non-blank character is ``#`` is a comment; a
later ``#`` belongs to the value. In access.conf each ``SOURCE`` line starts a stanza, the
lines after it up to the next ``SOURCE`` are its settings, and a setting given twice counts
the last time, as in fwknopd. What fwknopd itself refuses (an unknown ``SOURCE`` entry, a
port that is not ``tcp/N`` or ``udp/N``, a timeout that is not a number, bad base64, a
stanza without a key) is an :class:`FwknopError` naming the file and line.

``%include FILE`` and ``%include_folder DIR`` (its ``*.conf`` files) are followed as in
fwknopd, through a :class:`Files` the caller gives (the parser itself reads nothing), and so
is fwknopd.conf's ``ACCESS_FOLDER`` (:func:`parse_folder`) and ``%include_keys FILE`` (the
keys of the stanza it is in); a file that cannot be read, an
include cycle or nesting deeper than fwknopd's is an error naming the file and line.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from dataclasses import dataclass, field
from typing import Protocol

from gatekeeper.errors import GatekeeperError
from gatekeeper.importers.output import Notice
from gatekeeper.spa.keyfile import b64decode

ACCESS_KEYS = frozenset({
    "SOURCE", "DESTINATION", "OPEN_PORTS", "RESTRICT_PORTS", "KEY", "KEY_BASE64", "HMAC_KEY",
    "HMAC_KEY_BASE64", "HMAC_DIGEST_TYPE", "ENCRYPTION_MODE", "FW_ACCESS_TIMEOUT", "MAX_FW_TIMEOUT",
    "ENABLE_CMD_EXEC", "ENABLE_CMD_SUDO_EXEC", "CMD_SUDO_EXEC_USER", "CMD_SUDO_EXEC_GROUP",
    "CMD_EXEC_USER", "CMD_EXEC_GROUP", "CMD_CYCLE_OPEN", "CMD_CYCLE_CLOSE", "CMD_CYCLE_TIMER",
    "REQUIRE_USERNAME", "REQUIRE_SOURCE_ADDRESS", "REQUIRE_SOURCE", "FORCE_NAT", "FORCE_SNAT",
    "FORCE_MASQUERADE", "DISABLE_DNAT", "FORWARD_ALL", "ACCESS_EXPIRE", "ACCESS_EXPIRE_EPOCH",
    "GPG_HOME_DIR", "GPG_EXE", "GPG_DECRYPT_ID", "GPG_DECRYPT_PW", "GPG_ALLOW_NO_PW",
    "GPG_REQUIRE_SIG", "GPG_DISABLE_SIG", "GPG_IGNORE_SIG_VERIFY_ERROR", "GPG_REMOTE_ID",
    "GPG_FINGERPRINT_ID",
})
KEY_NAMES = ("KEY", "KEY_BASE64", "HMAC_KEY", "HMAC_KEY_BASE64")
KEYS_FILE_NAMES = frozenset({*KEY_NAMES, "GPG_DECRYPT_ID", "GPG_DECRYPT_PW", "GPG_ALLOW_NO_PW",
                             "GPG_REQUIRE_SIG", "GPG_DISABLE_SIG", "GPG_IGNORE_SIG_VERIFY_ERROR",
                             "GPG_REMOTE_ID", "GPG_FINGERPRINT_ID"})  # what a %include_keys file sets
_OTHER = {"KEY": "KEY_BASE64", "KEY_BASE64": "KEY", "HMAC_KEY": "HMAC_KEY_BASE64",
          "HMAC_KEY_BASE64": "HMAC_KEY"}
_RAW = frozenset(KEY_NAMES)  # their values are kept as written: blanks at the end count
INCLUDE_DEPTH = 3  # fwknopd's MAX_DEPTH: access.conf, a file it includes, one that one includes
MAX_NESTING = 8  # any nesting (%include_folder has no bound in fwknopd)
_PORT = re.compile(r"(tcp|udp)/(\d{1,5})\Z")
_NUMBER = re.compile(r"\d{1,10}\Z")
MODES = ("cbc", "cfb", "ofb", "ctr", "ecb", "legacy", "asymmetric")  # ENCRYPTION_MODE, any case
HMAC_TYPES = ("md5", "sha1", "sha256", "sha384", "sha512", "sha3_256", "sha3_512")

# What the converter makes of them. fwknopd.conf settings gatekeeper has no use for
# (how fwknopd sniffs, runs iptables, logs):
NOT_NEEDED = frozenset({
    "PCAP_DISPATCH_COUNT", "PCAP_LOOP_SLEEP", "ENABLE_PCAP_PROMISC", "MAX_SNIFF_BYTES",
    "EXIT_AT_INTF_DOWN", "ENABLE_DIGEST_PERSISTENCE", "RULES_CHECK_THRESHOLD", "CMD_EXEC_TIMEOUT",
    "LOCALE", "SYSLOG_IDENTITY", "SYSLOG_FACILITY", "ENABLE_RULE_PREPEND", "ENABLE_NAT_DNS",
    "ENABLE_IPT_OUTPUT", "FLUSH_IPT_AT_INIT", "FLUSH_IPT_AT_EXIT", "IPT_INPUT_ACCESS",
    "IPT_OUTPUT_ACCESS", "IPT_FORWARD_ACCESS", "IPT_DNAT_ACCESS", "IPT_SNAT_ACCESS",
    "IPT_MASQUERADE_ACCESS", "ENABLE_IPT_COMMENT_CHECK", "FWKNOP_RUN_DIR", "FWKNOP_CONF_DIR",
    "ACCESS_FILE", "FWKNOP_PID_FILE", "DIGEST_FILE", "DIGEST_DB_FILE", "GPG_HOME_DIR", "GPG_EXE",
    "SUDO_EXE", "FIREWALL_EXE", "VERBOSE", "UDPSERV_SELECT_TIMEOUT", "TCPSERV_PORT",
    "ENABLE_X_FORWARDED_FOR", "SNAT_TRANSLATE_IP", "FIREWD_INPUT_ACCESS", "FIREWD_OUTPUT_ACCESS",
    "FIREWD_FORWARD_ACCESS", "FIREWD_DNAT_ACCESS", "FIREWD_SNAT_ACCESS", "FIREWD_MASQUERADE_ACCESS",
    "ENABLE_FIREWD_COMMENT_CHECK", "ENABLE_FIREWD_OUTPUT", "FAULT_INJECTION_TAG",
})
NAT_FORWARDING = ("fwknopd forwarded NAT access (fwknop -N) to whatever internal address and port "
                  "the client named (host names too, with ENABLE_NAT_DNS); gatekeeper forwards only "
                  "to the targets a door lists in spa_nat (addresses, no names): list them (each "
                  "door has a commented spa_nat line)")
# fwknopd.conf Y/N settings with no gatekeeper counterpart (or not the same): a warning when on
SERVER_FLAGS = {
    "ENABLE_TCP_SERVER": "SPA over TCP (fwknop -P tcp) needs a listening TCP server, which gatekeeper "
                         "does not run (README, Transports): clients can send -P tcpraw to a door with "
                         "spa_transports = [\"udp\", \"tcpraw\"]",
    "ENABLE_SPA_OVER_HTTP": "SPA over HTTP (fwknop -P http) needs a listening TCP server, which gatekeeper "
                            "does not run (README, Transports): clients can send -P tcpraw or udp",
    "ENABLE_IPT_FORWARDING": NAT_FORWARDING,
    "ENABLE_IPT_LOCAL_NAT": "local NAT access (fwknop --nat-local) is not supported by gatekeeper: "
                            "such requests are refused (stage access)",
    "ENABLE_IPT_SNAT": "SNAT of granted traffic is not supported by gatekeeper",
    "ENABLE_FIREWD_FORWARDING": NAT_FORWARDING,
    "ENABLE_FIREWD_LOCAL_NAT": "local NAT access (fwknop --nat-local) is not supported by gatekeeper: "
                               "such requests are refused (stage access)",
    "ENABLE_PCAP_ANY_DIRECTION": "gatekeeper takes SPA packets addressed to the gateway only",
    "ENABLE_DESTINATION_RULE": "gatekeeper doors have no destination filter",
}
STANZA_WARNINGS = {
    "REQUIRE_USERNAME": "gatekeeper does not check the username an SPA packet carries (fwknop -U)",
    "ACCESS_EXPIRE": "gatekeeper doors do not expire: remove the door when access should end",
    "ACCESS_EXPIRE_EPOCH": "gatekeeper doors do not expire: remove the door when access should end",
    "CMD_CYCLE_OPEN": "not carried over: a door's start_command (argv, %IP% the client's address) "
                      "runs when a grant begins; write it by hand",
    "CMD_CYCLE_CLOSE": "not carried over: a door's stop_command runs when a grant ends; write it by hand",
    "CMD_CYCLE_TIMER": "not carried over: a grant lasts open_for",
    "CMD_EXEC_USER": "gatekeeper runs server commands as the daemon's user (the unit: gatekeeper)",
    "CMD_EXEC_GROUP": "gatekeeper runs server commands as the daemon's group (the unit: gatekeeper)",
    "ENABLE_CMD_SUDO_EXEC": "gatekeeper runs no command through sudo: list each in spa_commands",
    "CMD_SUDO_EXEC_USER": "gatekeeper runs no command through sudo",
    "CMD_SUDO_EXEC_GROUP": "gatekeeper runs no command through sudo",
    "FORCE_SNAT": "SNAT of granted traffic is not supported by gatekeeper",
    "FORCE_MASQUERADE": "masquerading granted traffic is not supported by gatekeeper",
    "DISABLE_DNAT": "gatekeeper always DNATs a NAT access grant (spa_nat); not carried over",
    "FORWARD_ALL": "forwarding everything is not supported by gatekeeper; not carried over",
}
YES_NO = frozenset({"ENABLE_CMD_SUDO_EXEC", "FORCE_MASQUERADE", "DISABLE_DNAT", "FORWARD_ALL"})


class FwknopError(GatekeeperError):
    """An fwknop config that cannot be read or parsed: one line naming file and line."""


@dataclass(frozen=True, slots=True)
class Value:
    """A setting's value (trimmed, except a key's) and the line it is on."""

    text: str
    line: int
    file: str | None = None  # the keys file it is from (%include_keys), else the stanza's


@dataclass
class Stanza:
    """One ``SOURCE`` stanza of access.conf."""

    source: Value
    values: dict[str, Value] = field(default_factory=dict)
    file: str = "access.conf"  # the file it is in

    @property
    def line(self) -> int:
        return self.source.line


@dataclass
class FwknopConf:
    """A parsed file: access.conf's stanzas (with its included files', ``files`` in the
    order read), or fwknopd.conf's settings (``values``); notices name their file."""

    name: str
    stanzas: list[Stanza] = field(default_factory=list)
    values: dict[str, Value] = field(default_factory=dict)
    notices: list[tuple[str, Notice]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def _lines(text: str, name: str, notices: list[tuple[str, Notice]]) -> list[tuple[int, str, str]]:
    """(line number, name, value) of each setting line; a name with no value is ignored,
    as fwknopd does, with a notice."""
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.lstrip(" \t")
        if not line or line[0] in "#;":
            continue
        parts = re.match(r"(\S+)[ \t]*([^;\r\n]*)", line)
        assert parts is not None  # a non-blank line has a first word
        if not parts.group(2).strip():
            notices.append((name, Notice(number, None, f"{parts.group(1)} has no value: ignored, as "
                                         "fwknopd does")))
            continue
        out.append((number, parts.group(1).removesuffix(":"), parts.group(2)))
    return out


class Files(Protocol):
    """How the parser reads the files an access.conf includes (the command reads the disk,
    tests a dict); both raise OSError."""

    def read(self, path: str) -> str:
        """The text of a file."""

    def names(self, folder: str) -> list[str]:
        """The names of a folder's entries."""


class NoFiles:
    """Files for a text parsed alone: every included file is missing."""

    def read(self, path: str) -> str:
        raise FileNotFoundError(2, "No such file or directory", path)

    def names(self, folder: str) -> list[str]:
        raise FileNotFoundError(2, "No such file or directory", folder)


def conf_names(names: list[str]) -> list[str]:
    """The files of a folder fwknopd reads (their part from the last ``.`` starts with
    ``.conf``), sorted: fwknopd takes them in directory order, which no one sets."""
    return sorted(n for n in names if "." in n and n[n.rindex("."):].startswith(".conf"))


class _Access:
    """access.conf and what it includes, read as fwknopd does: an included file's stanzas
    come where its %include line is, and the lines after that line still belong to the
    stanza before it."""

    def __init__(self, files: Files, name: str) -> None:
        self.files = files
        self.conf = FwknopConf(name)
        self.stack: list[str] = []

    def include(self, path: str, where: str, depth: int, most: int = MAX_NESTING) -> None:
        """Parse an included file at ``depth`` (at most ``most``); ``where`` is the
        ``file:line: %include ...`` of the line that includes it."""
        if posixpath.normpath(path) in self.stack:
            chain = " -> ".join([*self.stack[self.stack.index(posixpath.normpath(path)):], path])
            raise FwknopError(f"{where}: include cycle ({chain}): fwknopd does not start "
                              "with it either")
        if depth > most:
            raise FwknopError(f"{where}: an %include deeper than {most} files (fwknopd refuses it too)"
                              if most == INCLUDE_DEPTH else f"{where}: files nested more than {most} deep")
        try:
            text = self.files.read(path)
        except OSError as exc:
            raise FwknopError(f"{where}: cannot read {path}: {exc.strerror or exc} (fwknopd does "
                              "not start either)") from None
        self.file(text, path, depth)

    def folder(self, folder: str, where: str, depth: int) -> None:
        """Every ``*.conf`` file of a folder (%include_folder, ACCESS_FOLDER)."""
        folder = folder.rstrip("/") or "/"
        try:
            names = conf_names(self.files.names(folder))
        except OSError as exc:
            raise FwknopError(f"{where}: cannot open the folder {folder}: {exc.strerror or exc} "
                              "(fwknopd does not start either)") from None
        for file_name in names:
            self.include(posixpath.join(folder, file_name), where, depth)

    def keys(self, path: str, where: str, stanza: Stanza) -> None:
        """%include_keys: a keys file's KEY*/HMAC_KEY*/GPG_* lines set them in the stanza
        being read (other names are ignored), as in fwknopd, which then checks the stanza
        has a key; what fwknopd cannot read there is an error naming the keys file and line."""
        try:
            text = self.files.read(path)
        except OSError as exc:
            raise FwknopError(f"{where}: cannot read the keys file {path}: {exc.strerror or exc} "
                              "(fwknopd then drops the stanza if it holds no key)") from None
        for number, raw in enumerate(text.splitlines(), 1):
            if not raw or raw[0] in "#;\r":
                continue
            found = re.match(r"\s*(\S+)\s*([^;\r\n]*)", raw)
            if found is None or not found.group(2):
                raise FwknopError(f"{path}:{number}: {raw.strip()!r} is not NAME value (fwknopd stops "
                                  "reading the keys file there)")
            key, value = found.group(1).rpartition(":")[0] or found.group(1), found.group(2)
            if key not in KEYS_FILE_NAMES:
                self.conf.notices.append((path, Notice(number, None, f"{key} in a keys file "
                                          "(%include_keys): ignored, as fwknopd does; only keys and "
                                          "GPG_* settings count there")))
                continue
            if key in (*KEY_NAMES, "GPG_DECRYPT_PW") and value.strip().lower() == "__changeme__":
                raise FwknopError(f"{path}:{number}: {key} is __CHANGEME__ (fwknopd refuses it too)")
            if key.endswith("_BASE64") and not _is_base64(value.strip()):
                raise FwknopError(f"{path}:{number}: {key} is not base64 (fwknopd refuses it too)")
            stanza.values.pop(_OTHER.get(key, ""), None)  # the later of KEY and KEY_BASE64 counts
            stanza.values[key] = Value(value if key in _RAW else value.strip(), number, path)
        if key_bytes(stanza, "KEY_BASE64", "KEY", stanza.file) is None and \
                not any(k.startswith("GPG_") for k in stanza.values):
            raise FwknopError(f"{where}: the stanza of SOURCE {stanza.source.text} has no KEY or "
                              "KEY_BASE64 after its keys file (fwknopd drops the stanza)")

    def file(self, text: str, name: str, depth: int) -> None:
        """One file's lines; ``depth`` 1 is access.conf (or a file of ACCESS_FOLDER)."""
        self.stack.append(posixpath.normpath(name))
        self.conf.files.append(name)
        notes = self.conf.notices
        current: Stanza | None = None
        for number, key, value in _lines(text, name, notes):
            where = f"{name}:{number}: {key} {value.strip()}"
            if key in ("%include", "%include_folder") or (key == "%include_keys" and current):
                if not value.strip().startswith("/"):
                    notes.append((name, Notice(number, None, f"{key} {value.strip()}: read from the "
                                               "current directory; fwknopd reads it from its own")))
                if key == "%include_keys" and current is not None:  # mypy: current is set
                    self.keys(value.strip(), where, current)
                elif key == "%include":
                    self.include(value.strip(), where, depth + 1, INCLUDE_DEPTH)
                else:
                    self.folder(value.strip(), where, depth + 1)
                continue
            if key == "%include_keys":
                notes.append((name, Notice(number, None, f"{key} before any SOURCE line: ignored, as "
                                           "fwknopd does")))
                continue
            if key not in ACCESS_KEYS:
                notes.append((name, Notice(number, None, f"{key} is not an fwknopd 2.6 access.conf "
                                           "setting: ignored, as fwknopd does")))
                continue
            found = Value(value if key in _RAW else value.strip(), number)
            if key == "SOURCE":
                sources(found, name)
                current = Stanza(found, file=name)
                self.conf.stanzas.append(current)
                continue
            if current is None:
                notes.append((name, Notice(number, None, f"{key} before any SOURCE line: ignored, as "
                                           "fwknopd does")))
                continue
            before = current.values.get(key)
            if before is not None:
                of = f" of {before.file}" if before.file else ""
                notes.append((name, Notice(number, None, f"{key} is set again (line {before.line}{of}): "
                                           "the last one counts, as in fwknopd")))
            if _OTHER.get(key) in current.values and current.values[_OTHER[key]].file is not None:
                del current.values[_OTHER[key]]  # a keys file's line comes before this one
            current.values[key] = found
        self.stack.pop()

    def done(self) -> FwknopConf:
        if not self.conf.stanzas:
            raise FwknopError(f"{self.conf.name}: no SOURCE line: fwknopd needs at least one access "
                              "stanza")
        for stanza in self.conf.stanzas:
            check_stanza(stanza, stanza.file)
        return self.conf


def parse_access(text: str, name: str, files: Files | None = None) -> FwknopConf:
    """access.conf's stanzas, with those of the files it includes (read through ``files``);
    raises :class:`FwknopError` on what fwknopd refuses too."""
    access = _Access(files or NoFiles(), name)
    access.file(text, name, 1)
    return access.done()


FOLDER_BUG = ("fwknopd 2.6 takes each file of ACCESS_FOLDER as a whole access.conf and, after each, "
              "adds the port lists of the stanzas read before once more, after which it denies them "
              "every request (\"denied per access.conf\"): only the stanzas of the file it read last "
              "(in directory order) opened ports; gatekeeper opens those of every door")


def parse_folder(folder: Value, server_name: str, files: Files) -> FwknopConf:
    """The stanzas of an ACCESS_FOLDER's ``*.conf`` files, each read as an access.conf."""
    access = _Access(files, folder.text)
    access.folder(folder.text, f"{server_name}:{folder.line}: ACCESS_FOLDER {folder.text}", 1)
    top = folder.text.rstrip("/") or "/"
    if len({f for f in access.conf.files if posixpath.dirname(f) == top}) > 1:
        access.conf.notices.append((server_name, Notice(folder.line, None, FOLDER_BUG)))
    return access.done()


def parse_server(text: str, name: str) -> FwknopConf:
    """fwknopd.conf's settings (every name; the converter says which it takes)."""
    conf = FwknopConf(name)
    for number, key, value in _lines(text, name, conf.notices):
        conf.values[key] = Value(value.strip(), number)
    return conf


def sources(value: Value, name: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None:
    """A SOURCE's networks, or None for ``ANY`` (among them)."""
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    any_source = False
    for entry in (e.strip() for e in value.text.split(",")):
        if entry.upper() == "ANY":
            any_source = True
            continue
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise FwknopError(f"{name}:{value.line}: SOURCE: {entry!r} is not ANY, an address or "
                              "a network") from None
    return None if any_source else nets


def ports(value: Value, name: str) -> list[tuple[str, int]]:
    """OPEN_PORTS / RESTRICT_PORTS: ``proto/port`` entries, comma-separated."""
    out = []
    for entry in (e.strip() for e in value.text.split(",")):
        found = _PORT.match(entry.lower())
        if found is None or int(found.group(2)) > 65535:
            raise FwknopError(f"{name}:{value.line}: {entry!r} is not tcp/PORT or udp/PORT "
                              "(0-65535)")
        out.append((found.group(1), int(found.group(2))))
    return out


def number(value: Value, name: str, key: str) -> int:
    """A whole number of seconds."""
    if not _NUMBER.match(value.text):
        raise FwknopError(f"{name}:{value.line}: {key} {value.text!r} is not a whole number of seconds")
    return int(value.text)


def force_nat(value: Value, name: str) -> str:
    """FORCE_NAT ``IP PORT`` (an IPv4 address, as fwknopd takes it) as ``IP:PORT``."""
    words = value.text.split()
    try:
        host = ipaddress.IPv4Address(words[0]) if len(words) == 2 and words[1].isdigit() else None
    except ValueError:
        host = None
    if host is None or not 1 <= int(words[1]) <= 65535:
        raise FwknopError(f"{name}:{value.line}: FORCE_NAT {value.text!r}: need an IPv4 address and "
                          "a port 1-65535 (fwknopd refuses it too)")
    return f"{host}:{int(words[1])}"


def yes(value: Value | None) -> bool:
    """fwknopd's Y/N: a value starting with Y or y is yes."""
    return value is not None and value.text[:1] in ("Y", "y")


def _is_base64(text: str) -> bool:
    try:
        return bool(b64decode(text.encode("ascii")))
    except (ValueError, UnicodeError):
        return False


def key_bytes(stanza: Stanza, base64_name: str, phrase_name: str, name: str) -> tuple[Value, bytes] | None:
    """The key a stanza gives under either name (the later line counts): its line and bytes."""
    given = [v for k, v in stanza.values.items() if k in (base64_name, phrase_name)]
    if not given:
        return None
    value = max(given, key=lambda v: v.line)
    if stanza.values.get(phrase_name) is value:
        return value, value.text.encode("utf-8", "surrogateescape")
    if not _is_base64(value.text.strip()):
        raise FwknopError(f"{value.file or name}:{value.line}: {base64_name} is not base64")
    return value, b64decode(value.text.strip().encode("ascii"))


def check_stanza(stanza: Stanza, name: str) -> None:
    """What fwknopd refuses in a stanza: no key at all, equal keys, bad values."""
    values = stanza.values
    keys = key_bytes(stanza, "KEY_BASE64", "KEY", name)
    hmac_key = key_bytes(stanza, "HMAC_KEY_BASE64", "HMAC_KEY", name)
    if keys is None and not any(k.startswith("GPG_") for k in values):
        raise FwknopError(f"{name}:{stanza.line}: the stanza of SOURCE {stanza.source.text} has no "
                          "KEY or KEY_BASE64 (fwknopd refuses it too)")
    if keys is not None and hmac_key is not None and keys[1] == hmac_key[1]:
        raise FwknopError(f"{hmac_key[0].file or name}:{hmac_key[0].line}: the encryption and HMAC "
                          "keys are the same (fwknopd refuses them too)")
    for key in ("OPEN_PORTS", "RESTRICT_PORTS"):
        if key in values:
            ports(values[key], name)
    for key, known in (("ENCRYPTION_MODE", MODES), ("HMAC_DIGEST_TYPE", HMAC_TYPES)):
        if key in values and values[key].text.lower() not in known:
            raise FwknopError(f"{name}:{values[key].line}: {key} {values[key].text!r}: fwknopd takes "
                              f"{', '.join(known)}")
    for key in ("FW_ACCESS_TIMEOUT", "MAX_FW_TIMEOUT"):
        if key in values:
            number(values[key], name, key)
    if "FORCE_NAT" in values:
        force_nat(values["FORCE_NAT"], name)


def pcap_transports(pcap_filter: str) -> list[str]:
    """spa_transports for what a PCAP_FILTER lets in besides UDP, or [] for none: tcp (the
    clients' -P tcpraw), icmp (-P icmp), a UDP portrange (--rand-port)."""
    words = set(pcap_filter.lower().replace("(", " ").replace(")", " ").split())
    extra = [t for word, t in (("tcp", "tcpraw"), ("icmp", "icmp"), ("portrange", "udp-any"))
             if word in words]
    return ["udp", *extra] if extra else []
