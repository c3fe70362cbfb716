"""``gatekeeper import-fwknop``: convert fwknopd's access.conf (and fwknopd.conf) into
gatekeeper's TOML and key files.

The files are read by :mod:`gatekeeper.importers.fwknop_conf`, as fwknopd 2.6 reads them.
Every ``SOURCE`` stanza becomes an SPA door (``spa = true``):

* its keys go to a key file of its own (``KEY_BASE64:``/``HMAC_KEY_BASE64:`` lines, or
  access.conf's passphrase lines ``KEY``/``HMAC_KEY`` where the text survives the key
  file's format), written mode 0600; no HMAC key is ``spa_hmac = false``;
* ``OPEN_PORTS`` less ``RESTRICT_PORTS`` is ``opens``; ``FW_ACCESS_TIMEOUT`` (default
  30 s) is ``open_for``; ``HMAC_DIGEST_TYPE`` and ``ENCRYPTION_MODE`` carry over;
  ``REQUIRE_SOURCE_ADDRESS N`` (fwknopd's default) is ``spa_other_source = true``;
  ``FORCE_NAT IP PORT`` is ``spa_force_nat = "IP:PORT"``; with fwknopd.conf's
  ``ENABLE_IPT_FORWARDING Y`` each other door gets a commented ``spa_nat`` line (fwknopd
  forwarded to any target a client named, gatekeeper only to those listed);
* from fwknopd.conf, the UDP port of ``PCAP_FILTER`` (or ``UDPSERV_PORT``) is
  ``spa_port`` (its ``tcp``, ``icmp`` and ``portrange`` words add ``spa_transports``),
  ``MAX_SPA_PACKET_AGE`` ``spa_window``, ``PCAP_INTF`` the guarded interface.

Gatekeeper takes one key an SPA port, so the second stanza's door listens on the next
free port, and so on. What does not carry over is a warning, one line each naming the file
and line; a door that cannot work as fwknopd's did (no OPEN_PORTS: fwknopd opened any port
asked for; a key the key file cannot hold) is written commented out. The GnuPG settings
(``GPG_*``) are :mod:`gatekeeper.importers.fwknop_gpg`'s.
"""

from __future__ import annotations

import base64
import posixpath
from dataclasses import dataclass, field

from gatekeeper.importers.fwknop_conf import (
    NOT_NEEDED,
    SERVER_FLAGS,
    STANZA_WARNINGS,
    YES_NO,
    Files,
    FwknopConf,
    FwknopError,
    NoFiles,
    Stanza,
    Value,
    force_nat,
    key_bytes,
    number,
    parse_access,
    parse_folder,
    parse_server,
    pcap_transports,
    ports,
    sources,
    yes,
)
from gatekeeper.importers.fwknop_gpg import gpg_table, is_gpg
from gatekeeper.importers.key_files import KeyFile
from gatekeeper.importers.output import (
    Notice,
    interface_problem,
    printable,
    toml_list,
    toml_str,
)
from gatekeeper.model import DEFAULT_SPA_DIGESTS, DEFAULT_SPA_PORT, MAX_OPEN_FOR
from gatekeeper.spa.fwknop import MAX_ENCRYPTION_KEY, MAX_HMAC_KEY, MIN_KEY

__all__ = ["DEFAULT_KEY_DIR", "Conversion", "FwknopError", "KeyFile", "convert"]

DEFAULT_KEY_DIR = "/etc/gatekeeper"
DEFAULT_ACCESS_TIMEOUT = 30  # fwknopd's FW_ACCESS_TIMEOUT
DEFAULT_INTERFACE = "eth0"  # fwknopd's PCAP_INTF
MAX_WINDOW = 3600  # spa_window's ceiling
_GATEKEEPER_MODES = ("cbc", "cfb", "ofb", "ctr", "ecb", "legacy")
_GATEKEEPER_HMACS = ("md5", "sha1", "sha256", "sha384", "sha512")
HMAC_NAMES = ("HMAC_KEY_BASE64", "HMAC_KEY")
@dataclass(frozen=True, slots=True)
class Conversion:
    toml: str
    warnings: tuple[str, ...]  # one line each: FILE:LINE: warning: [door] message
    doors: int  # doors converted (not commented out); 0 leaves nothing to run
    key_files: tuple[KeyFile, ...]


@dataclass
class _Door:
    stanza: Stanza
    name: str
    keys: list[tuple[str, str, str]] = field(default_factory=list)  # key, TOML value, comment
    extra: list[str] = field(default_factory=list)  # comment lines after the keys
    problem: str | None = None  # why the door is written commented out

    def add(self, key: str, value: str, comment: str = "") -> None:
        self.keys.append((key, value, comment))

    def lines(self, access_name: str) -> list[str]:
        origin = f"# SOURCE {self.stanza.source.text}: {access_name}, line {self.stanza.line}"
        out = ["[[door]]", origin]
        out += [f"{k} = {v}" + (f"  # {c}" if c else "") for k, v, c in self.keys]
        out += self.extra
        if self.problem is None:
            return out
        return [f"# NOT CONVERTED: {self.problem}"] + [f"# {ln}" for ln in out]


def _as_text(raw: bytes) -> str | None:
    """``raw`` as a key file's passphrase text (the rest of the line, blanks at either end
    removed), or None if it cannot be written so."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text and text == text.strip() and text.isprintable() else None


def _key_line(given: tuple[Value, bytes], phrase: bool, names: tuple[str, str], longest: int) -> str | None:
    """The key file line for a key: base64 if fwknopd's was (or the text cannot be written
    as typed), the passphrase line if it was one (or it is too short for base64)."""
    b64_name, phrase_name = names
    raw = given[1]
    text = _as_text(raw)
    fits_b64 = MIN_KEY <= len(raw) <= longest
    if text is not None and len(raw) <= longest and (phrase or not fits_b64):
        return f"{phrase_name}: {text}"
    if fits_b64:
        return f"{b64_name}: {base64.b64encode(raw).decode()}"
    return None


class _Converter:
    def __init__(self, access: FwknopConf, server: FwknopConf | None, key_dir: str) -> None:
        self.access = access
        self.server = server
        self.key_dir = key_dir
        self.notices = access.notices + (server.notices if server is not None else [])
        self.files: dict[str | None, str] = {}  # door name: the file its stanza is in
        self.given = access.name  # the access.conf named (not read with ACCESS_FOLDER)
        self.key_files: list[KeyFile] = []

    def warn(self, line: int | None, door: str | None, message: str, server: bool = False,
             file: str | None = None) -> None:
        name = file or (self.server.name if server and self.server is not None
                        else self.files.get(door, self.access.name))
        self.notices.append((name, Notice(line, door, message)))

    # fwknopd.conf

    def server_value(self, key: str) -> Value | None:
        return None if self.server is None else self.server.values.get(key)

    def port(self) -> int:
        """The UDP port fwknopd took SPA packets on."""
        if yes(self.server_value("ENABLE_UDP_SERVER")):
            value = self.server_value("UDPSERV_PORT")
            return DEFAULT_SPA_PORT if value is None else self.port_number(value, "UDPSERV_PORT")
        value = self.server_value("PCAP_FILTER")
        if value is None:
            return DEFAULT_SPA_PORT
        words = value.text.lower().split()
        found = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "port"]
        simple = set(words) - {"udp", "dst", "port", *found} == set() and len(found) == 1
        if found and found[0].isdigit() and 1 <= int(found[0]) <= 65535:
            if not simple:
                also = ", spa_transports from its tcp/icmp/portrange" if self.transports() else ""
                self.warn(value.line, None, f"PCAP_FILTER {value.text!r}: gatekeeper takes SPA packets "
                          f"to one UDP port; spa_port = {found[0]}{also}, the rest of the filter is not "
                          "carried over", server=True)
            return int(found[0])
        self.warn(value.line, None, f"PCAP_FILTER {value.text!r} names no single UDP port: spa_port = "
                  f"{DEFAULT_SPA_PORT} (fwknop's default); set it", server=True)
        return DEFAULT_SPA_PORT

    def transports(self) -> list[str]:
        value = self.server_value("PCAP_FILTER")
        return [] if value is None else pcap_transports(value.text)

    def port_number(self, value: Value, key: str) -> int:
        if value.text.isdigit() and 1 <= int(value.text) <= 65535:
            return int(value.text)
        raise FwknopError(f"{self.server.name if self.server else ''}:{value.line}: {key} "
                          f"{value.text!r} is not a port 1-65535")

    def window(self) -> int:
        """spa_window: fwknopd's MAX_SPA_PACKET_AGE (120 s), or the longest one gatekeeper has
        when fwknopd did not age packets."""
        aging = self.server_value("ENABLE_SPA_PACKET_AGING")
        if aging is not None and not yes(aging):
            self.warn(aging.line, None, f"ENABLE_SPA_PACKET_AGING {aging.text}: gatekeeper always checks "
                      f"an SPA packet's time; spa_window = {MAX_WINDOW} s, its longest", server=True)
            return MAX_WINDOW
        value = self.server_value("MAX_SPA_PACKET_AGE")
        if value is None:
            return 120
        assert self.server is not None
        seconds = number(value, self.server.name, "MAX_SPA_PACKET_AGE")
        if seconds > MAX_WINDOW:
            self.warn(value.line, None, f"MAX_SPA_PACKET_AGE {seconds}: spa_window = {MAX_WINDOW} s, "
                      "gatekeeper's longest", server=True)
            return MAX_WINDOW
        return seconds

    def settings(self) -> list[str]:
        value = self.server_value("PCAP_INTF")
        iface = DEFAULT_INTERFACE if value is None else value.text
        line = None if value is None else value.line
        out = ["[gatekeeper]"]
        reason = interface_problem(iface)
        if reason is not None:
            self.warn(line, None, f"PCAP_INTF {iface!r} cannot be guarded ({reason}); interfaces left "
                      "out, which guards every interface but loopback: set it", server=value is not None)
            out.append(f"# interfaces = [{toml_str(iface)}]  # fwknopd's PCAP_INTF: {reason}")
            guarded = "every interface but loopback"
        else:
            origin = "fwknopd's PCAP_INTF" if value else "fwknopd's default PCAP_INTF"
            out.append(f"interfaces = [{toml_str(iface)}]  # {origin}")
            guarded = iface
        self.warn(line, None, f"gatekeeper drops every new connection on {guarded} that no door grants "
                  "(fwknopd only added rules): list what must stay reachable in [gatekeeper] public",
                  server=value is not None)
        out.append("# public = [\"80:tcp\"]  # reachable without SPA; everything else on a guarded "
                   "interface is dropped")
        return out

    def server_warnings(self) -> None:
        if self.server is None:
            return
        for key, value in sorted(self.server.values.items(), key=lambda kv: kv[1].line):
            if key in SERVER_FLAGS:
                if yes(value):
                    self.warn(value.line, None, f"{key} {value.text}: {SERVER_FLAGS[key]}", server=True)
            elif key == "ACCESS_FOLDER":
                self.warn(value.line, None, f"ACCESS_FOLDER {value.text}: fwknopd reads its *.conf files "
                          f"instead of ACCESS_FILE, and so does the import ({', '.join(self.access.files)})"
                          f"{'' if self.given in self.access.files else f'; {self.given} is not imported'}",
                          server=True)
            elif key not in NOT_NEEDED and key not in ("PCAP_INTF", "PCAP_FILTER", "ENABLE_UDP_SERVER",
                                                        "UDPSERV_PORT", "ENABLE_SPA_PACKET_AGING",
                                                        "MAX_SPA_PACKET_AGE"):
                self.warn(value.line, None, f"{key} is not an fwknopd 2.6 setting gatekeeper knows: "
                          "not carried over", server=True)

    # one stanza

    def door(self, stanza: Stanza, name: str, port: int, window: int) -> _Door:
        door = _Door(stanza, name)
        door.add("name", toml_str(name))
        door.add("spa", "true")
        self.source(door)
        path = posixpath.join(self.key_dir, f"{name}.key")
        door.add("key_file", toml_str(path), "0600; chown it to the daemon's user (the unit: gatekeeper)")
        with_hmac = self.keys(door, path)
        door.add("spa_port", str(port))
        if self.transports():
            door.add("spa_transports", toml_list(self.transports()), "what fwknopd's PCAP_FILTER let in")
        door.add("spa_window", str(window), "fwknopd's MAX_SPA_PACKET_AGE")
        self.suite(door, with_hmac)
        self.other_source(door)
        self.opens(door)
        self.timeout(door)
        self.rest(door)
        return door

    def source(self, door: _Door) -> None:
        value = door.stanza.source
        if sources(value, door.stanza.file) is not None:
            self.warn(value.line, door.name, f"SOURCE {value.text}: gatekeeper doors have no source list; "
                      f"door {door.name!r} takes an authentic packet from any address (filter the "
                      "others before gatekeeper if that matters)")
        dest = door.stanza.values.get("DESTINATION")
        if dest is not None and dest.text.upper() != "ANY":
            self.warn(dest.line, door.name, f"DESTINATION {dest.text}: gatekeeper doors have no "
                      "destination filter; not carried over")

    def keys(self, door: _Door, path: str) -> bool:
        """Write the stanza's keys to the door's key file; whether it has an HMAC key."""
        stanza, name = door.stanza, door.stanza.file
        lines = [f"# keys of gatekeeper door {door.name}, from {printable(name)} line {stanza.line}"]
        enc = key_bytes(stanza, "KEY_BASE64", "KEY", name)
        mac = key_bytes(stanza, "HMAC_KEY_BASE64", "HMAC_KEY", name)
        if enc is None and "GPG_DECRYPT_ID" in stanza.values:  # a GnuPG door
            return self.gpg(door, path, mac, lines)
        if is_gpg(stanza):
            self.warn(min(v.line for k, v in stanza.values.items() if k.startswith("GPG_")), door.name,
                      "GnuPG settings beside a Rijndael key (or no GPG_DECRYPT_ID): this door takes "
                      "Rijndael packets; for GnuPG add a door with spa_gpg on another spa_port")
        if enc is None:
            return self.gpg(door, path, mac, lines)  # GPG_* without GPG_DECRYPT_ID: commented out
        for given, names, longest in ((enc, ("KEY_BASE64", "KEY"), MAX_ENCRYPTION_KEY),
                                      (mac, HMAC_NAMES, MAX_HMAC_KEY)):
            if given is None:
                continue
            phrase = stanza.values.get(names[1]) is given[0]
            line = _key_line(given, phrase, names, longest)
            if line is None:
                what = names[1] if phrase else names[0]
                door.problem = (f"its {what} ({len(given[1])} bytes) cannot go into a gatekeeper key "
                                f"file (base64 keys: {MIN_KEY}-{longest} bytes; passphrases: at most "
                                f"{longest} bytes of printable UTF-8, no blank at either end)")
                self.warn(given[0].line, door.name, f"{door.problem}: door left commented out",
                          file=given[0].file)
                return mac is not None
            lines.append(line)
        self.key_files.append(KeyFile(path, "\n".join(lines) + "\n"))
        if mac is None:
            door.add("spa_hmac", "false", "no HMAC_KEY in access.conf: UNAUTHENTICATED packets")
            self.warn(stanza.line, door.name, "no HMAC key: the door takes packets without HMAC (fwknop "
                      "without --use-hmac), as fwknopd did; anyone who can change one in flight can "
                      "forge what it asks for: give the clients HMAC keys when they can")
        return mac is not None

    def gpg(self, door: _Door, path: str, mac: tuple[Value, bytes] | None, lines: list[str]) -> bool:
        """A GnuPG door: its spa_gpg table, a passphrase file, and a key file if it has an HMAC key."""
        table, files, problem = gpg_table(door.stanza, door.name, self.key_dir,
                                          self.server_value("GPG_HOME_DIR"), self.warn)
        door.keys = [k for k in door.keys if k[0] != "key_file"]
        if mac is not None:
            line = _key_line(mac, door.stanza.values.get("HMAC_KEY") is mac[0], HMAC_NAMES, MAX_HMAC_KEY)
            if line is None:
                problem = problem or "its HMAC key cannot go into a gatekeeper key file"
            else:
                self.key_files.append(KeyFile(path, "\n".join([*lines, line]) + "\n"))
                door.add("key_file", toml_str(path), "0600: the HMAC key")
        door.add("spa_gpg", table, "fwknopd's GPG_* settings")
        self.key_files += files
        if problem is not None:
            door.problem = problem
            self.warn(door.stanza.line, door.name, f"{problem}: door left commented out")
        return mac is not None

    def suite(self, door: _Door, with_hmac: bool) -> None:
        values = door.stanza.values
        digest = values.get("HMAC_DIGEST_TYPE")
        if digest is not None:
            kind = digest.text.lower()
            if not with_hmac:
                self.warn(digest.line, door.name, "HMAC_DIGEST_TYPE without an HMAC key: not carried over")
            elif kind not in _GATEKEEPER_HMACS:
                door.problem = door.problem or f"HMAC_DIGEST_TYPE {digest.text} is not supported"
                self.warn(digest.line, door.name, f"HMAC_DIGEST_TYPE {digest.text} is not supported by "
                          "gatekeeper: door left commented out")
            elif kind != "sha256":
                door.add("spa_hmac_digest", toml_str(kind), "fwknopd's HMAC_DIGEST_TYPE")
        mode = values.get("ENCRYPTION_MODE")
        if mode is not None:
            kind = mode.text.lower()
            if kind == "asymmetric":
                if not any(k == "spa_gpg" for k, _, _ in door.keys):
                    self.warn(mode.line, door.name, "ENCRYPTION_MODE asymmetric is GnuPG: this door "
                              "takes Rijndael (CBC) packets (a GnuPG door needs GPG_DECRYPT_ID)")
            elif kind == "legacy" and with_hmac:
                door.problem = door.problem or "ENCRYPTION_MODE legacy with an HMAC key"
                self.warn(mode.line, door.name, "ENCRYPTION_MODE legacy goes without HMAC (the client "
                          "refuses both): door left commented out")
            elif kind in _GATEKEEPER_MODES and kind != "cbc":
                door.add("spa_encryption_mode", toml_str(kind), "fwknopd's ENCRYPTION_MODE")
        door.extra.append(f"# spa_digests = {toml_list(DEFAULT_SPA_DIGESTS)}  # the default; fwknopd "
                          "also took -m md5 and -m sha1: add them only if clients send them")

    def other_source(self, door: _Door) -> None:
        value = door.stanza.values.get("REQUIRE_SOURCE_ADDRESS") or door.stanza.values.get("REQUIRE_SOURCE")
        if not yes(value):
            door.add("spa_other_source", "true", "REQUIRE_SOURCE_ADDRESS N (fwknopd's default): -s and "
                     "-a for another address are granted")
            return
        assert value is not None
        door.add("spa_other_source", "false", "REQUIRE_SOURCE_ADDRESS Y")
        self.warn(value.line, door.name, "REQUIRE_SOURCE_ADDRESS Y: gatekeeper's spa_other_source = false "
                  "also refuses -a with an address that is not the packet's source (fwknopd granted it)")

    def opens(self, door: _Door) -> None:
        values, name = door.stanza.values, door.stanza.file
        open_ports = values.get("OPEN_PORTS")
        restrict = values.get("RESTRICT_PORTS")
        refused = set(ports(restrict, name)) if restrict is not None else set()
        if open_ports is None:
            door.add("opens", "[]", "list the ports this door may open")
            problem = "no OPEN_PORTS: fwknopd opened any port a client asked for"
            if restrict is not None:
                problem += f" but {restrict.text}"
            door.problem = door.problem or f"{problem}; gatekeeper opens only ports listed in opens"
            self.warn(door.stanza.line, door.name, f"{problem}; gatekeeper opens only ports listed in "
                      "opens: door left commented out, list them")
            return
        opens: list[str] = []
        for proto, port in ports(open_ports, name):
            text = f"{port}:{proto}"
            if port == 0:
                self.warn(open_ports.line, door.name, f"{proto}/0 is no port gatekeeper can open: left out")
            elif (proto, port) in refused:
                self.warn(restrict.line if restrict else open_ports.line, door.name,
                          f"{proto}/{port} is in OPEN_PORTS and RESTRICT_PORTS: fwknopd refused it, so "
                          "it is left out")
            elif text not in opens:
                opens.append(text)
        door.add("opens", toml_list(opens), "OPEN_PORTS" + (" less RESTRICT_PORTS" if restrict else ""))
        if not opens:
            door.problem = door.problem or "OPEN_PORTS leaves no port gatekeeper can open"
            self.warn(open_ports.line, door.name, f"{door.problem}: door left commented out")

    def timeout(self, door: _Door) -> None:
        values, name = door.stanza.values, door.stanza.file
        value = values.get("FW_ACCESS_TIMEOUT")
        seconds = DEFAULT_ACCESS_TIMEOUT if value is None else number(value, name, "FW_ACCESS_TIMEOUT")
        clamped = min(max(seconds, 1), MAX_OPEN_FOR)
        if value is not None and clamped != seconds:
            self.warn(value.line, door.name, f"FW_ACCESS_TIMEOUT {seconds} is outside gatekeeper's range; "
                      f"open_for = {clamped}")
        door.add("open_for", str(clamped), "FW_ACCESS_TIMEOUT" if value else
                 f"fwknopd's default FW_ACCESS_TIMEOUT ({DEFAULT_ACCESS_TIMEOUT} s)")
        most = values.get("MAX_FW_TIMEOUT")
        if most is not None and number(most, name, "MAX_FW_TIMEOUT") != clamped:
            self.warn(most.line, door.name, f"MAX_FW_TIMEOUT {most.text}: gatekeeper grants at most "
                      f"open_for = {clamped} s, also to a client asking for longer (fwknop -f)")

    def rest(self, door: _Door) -> None:
        """Command execution, NAT and the settings gatekeeper has no counterpart for."""
        values = door.stanza.values
        cmd = values.get("ENABLE_CMD_EXEC")
        if yes(cmd):
            assert cmd is not None
            self.warn(cmd.line, door.name, "ENABLE_CMD_EXEC Y: fwknopd ran any command a client sent; "
                      "gatekeeper runs only those listed in spa_commands (exact text -> argv): list them")
            door.extra.append('# spa_commands = { "TEXT" = ["/absolute/program", "arg"] }  # what '
                              "fwknop --server-cmd TEXT may run, exactly; none until listed")
        self.nat(door)
        for key, why in STANZA_WARNINGS.items():
            value = values.get(key)
            if value is None or (key in YES_NO and not yes(value)):
                continue
            self.warn(value.line, door.name, f"{key} {value.text}: {why}")

    def nat(self, door: _Door) -> None:
        """FORCE_NAT IP PORT: spa_force_nat; else, when fwknopd forwarded NAT requests, a
        commented spa_nat line to fill in."""
        nat = door.stanza.values.get("FORCE_NAT")
        forwarding = any(yes(self.server_value(k)) for k in ("ENABLE_IPT_FORWARDING",
                                                             "ENABLE_FIREWD_FORWARDING"))
        if nat is None:
            if forwarding:
                door.extra.append('# spa_nat = ["HOST:PORT"]  # the internal targets fwknop -N may '
                                  "ask for (fwknopd's ENABLE_IPT_FORWARDING took any); none until listed")
            return
        door.add("spa_force_nat", toml_str(force_nat(nat, door.stanza.file)), "FORCE_NAT: every "
                 "request is DNATed to it from the -A port; needs IPv4 forwarding on")

    # the whole file

    def convert(self) -> Conversion:
        port, window = self.port(), self.window()
        head = [f"# gatekeeper config converted from fwknopd's {self.access.name} by "
                "`gatekeeper import-fwknop`.", "# Read the warnings printed with it before use.", "",
                *self.settings()]
        self.server_warnings()
        body: list[str] = []
        taken: set[int] = set()
        converted = 0
        for i, stanza in enumerate(self.access.stanzas):
            name = "spa" if i == 0 else f"spa-{i + 1}"
            self.files[name] = stanza.file
            mine = port
            while mine in taken:
                mine = mine + 1 if mine < 65535 else 1
            taken.add(mine)
            if mine != port:
                self.warn(stanza.line, name, f"gatekeeper takes one key an SPA port: door {name!r} listens "
                          f"on udp/{mine}; its clients add --server-port {mine}")
            door = self.door(stanza, name, mine, window)
            converted += door.problem is None
            body += ["", *door.lines(printable(stanza.file))]
        order = {name: i for i, name in reversed(list(enumerate(self.access.files)))}
        notices = sorted(self.notices, key=lambda fn: (order.get(fn[0], len(order)), fn[1].line or 0))
        return Conversion(
            toml=printable("\n".join([*head, *body])) + "\n",
            warnings=tuple(printable(n.render(f)) for f, n in notices),
            doors=converted,
            key_files=tuple(self.key_files),
        )


def convert(access_text: str, access_name: str, key_dir: str = DEFAULT_KEY_DIR,
            server_text: str | None = None, server_name: str = "fwknopd.conf",
            files: Files | None = None) -> Conversion:
    """gatekeeper TOML and key files for an access.conf (and fwknopd.conf) text, the files
    it includes (or fwknopd.conf's ACCESS_FOLDER instead) read through ``files``; key files
    go under the absolute ``key_dir``. Raises :class:`FwknopError` on bad input."""
    if not key_dir.startswith("/"):
        raise FwknopError(f"{key_dir}: the key directory must be an absolute path")
    server = None if server_text is None else parse_server(server_text, server_name)
    folder = None if server is None else server.values.get("ACCESS_FOLDER")
    access = (parse_access(access_text, access_name, files) if folder is None or server is None
              else parse_folder(folder, server.name, files or NoFiles()))
    converter = _Converter(access, server, key_dir)
    converter.given = access_name
    return converter.convert()
