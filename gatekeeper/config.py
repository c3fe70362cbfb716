"""Load and validate a gatekeeper TOML config into immutable objects.

Every problem is reported as one :class:`ConfigError` line that names the file and
the key (``door[0].sequence[2]``) so an admin can fix it without reading code.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import shlex
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from gatekeeper.errors import GatekeeperError

TCP = 6
UDP = 17
ICMP = 1  # an ICMP or ICMPv6 echo request; the "port" is its payload length

PROTO_NAMES = {TCP: "tcp", UDP: "udp", ICMP: "icmp"}
PROTO_NUMBERS = {name: num for num, name in PROTO_NAMES.items()}

TCP_FLAG_BITS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10, "urg": 0x20}

MAX_STEPS = 32
MAX_OPEN_FOR = 7 * 24 * 3600
MAX_SEQUENCE_TIMEOUT = 3600
MAX_ICMP_PAYLOAD = 65507
DEFAULT_SPA_PORT = 62201  # fwknop's default (UDP)
DEFAULT_SPA_WINDOW = 120.0
SPA_KINDS = ("sequence", "spa", "encrypted_sequence", "one_time_sequences")
MAX_ONE_TIME_LINES = 100_000
ONE_TIME_USED = "#used# "  # how a used line of a one-time sequences file starts
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,24}\Z")
_IFACE_RE = re.compile(r"^[A-Za-z0-9_.@][^\s/:!]{0,14}\Z")


def step_key(proto: int, port: int) -> int:
    return proto << 16 | port


class ConfigError(GatekeeperError):
    """A config problem, already phrased as one line for the admin."""


@dataclass(frozen=True, slots=True)
class Step:
    """One port written the knockd way, ``PORT[:PROTO]``."""

    proto: int
    port: int

    def __str__(self) -> str:
        return f"{self.port}:{PROTO_NAMES[self.proto]}"

    @property
    def key(self) -> int:
        """The compact ``proto << 16 | port`` form the engine matches packets against."""
        return step_key(self.proto, self.port)


@dataclass(frozen=True, slots=True)
class TcpFlags:
    """TCP flags a packet must have set (``required``) and must not have (``forbidden``)."""

    required: int
    forbidden: int

    def matches(self, flags: int) -> bool:
        return flags & self.required == self.required and not flags & self.forbidden


@dataclass(frozen=True, slots=True)
class Door:
    name: str
    sequence: tuple[Step, ...]
    opens: tuple[Step, ...]
    sequence_timeout: float = 5.0
    tcp_flags: TcpFlags = TcpFlags(TCP_FLAG_BITS["syn"], 0)
    open_for: int = 30
    close_sequence: tuple[Step, ...] = ()
    start_command: tuple[str, ...] = ()
    stop_command: tuple[str, ...] = ()
    command_timeout: float = 10.0
    host: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    # "reset" (knockd's way): any packet that is not the next step starts over. "ignore":
    # such packets leave progress alone, so a spoofed packet between a client's knocks
    # cannot break its sequence; the scanner lockout keeps port sweeps from walking in.
    wrong_knock: str = "reset"
    # What opens the door: "sequence" (a plain knock, the engine's), or one of the
    # special kinds that gatekeeper.engine.doors handles (their ``sequence`` is empty).
    kind: str = "sequence"
    spa: SpaDoor | None = None
    encrypted: EncryptedDoor | None = None
    one_time: OneTimeDoor | None = None
    # With [cluster]: what a knock does while the shared store is unreachable. "closed":
    # it is dropped and counts for nothing; "local": this gateway alone tracks it.
    cluster_fallback: str = "closed"

    @property
    def special(self) -> bool:
        return self.kind != "sequence"

    @property
    def ignore_wrong(self) -> bool:
        return self.wrong_knock == "ignore"


@dataclass(frozen=True, slots=True, repr=False)
class SpaDoor:
    """``spa = true``: fwknop-compatible single packet authorization on a UDP port."""

    key_file: str
    keys: Any  # gatekeeper.spa.fwknop.SpaKeys (imported lazily: plain configs need no crypto)
    port: int = DEFAULT_SPA_PORT
    window: float = DEFAULT_SPA_WINDOW
    other_source: bool = False

    def __repr__(self) -> str:  # never print key material
        return f"SpaDoor(key_file={self.key_file!r}, port={self.port})"


@dataclass(frozen=True, slots=True, repr=False)
class EncryptedDoor:
    """``encrypted_sequence = { key_file, ports }``: a sealed request knocked as ports.

    The key file holds one line ``KEY_BASE64: ...`` (``gatekeeper spa --key-gen
    --sequence``; the spellings of :mod:`gatekeeper.spa.keyfile` are read): an AES key of
    16, 24 or 32 bytes, base64.
    """

    key_file: str
    key: bytes
    first: int  # the range first..first+255
    last: int
    window: float = DEFAULT_SPA_WINDOW

    def __repr__(self) -> str:
        return f"EncryptedDoor(key_file={self.key_file!r}, ports={self.first}-{self.last})"


@dataclass(frozen=True, slots=True)
class OneTimeDoor:
    """``one_time_sequences = "PATH"``: knockd's one-time sequences file.

    ``lines`` holds each unused sequence with its line number in the file (1-based);
    used lines are commented out in the file (``#used# ...``) and so absent there, but
    their ports are in ``used`` (the ruleset keeps sending them to the worker that
    knows they were used, see render.py).
    """

    path: str
    lines: tuple[tuple[int, tuple[Step, ...]], ...]
    used: frozenset[Step] = frozenset()


def default_workers() -> int:
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


MAX_WORKERS = 64
MAX_BATCH = 1024  # gatekeeper.queue._nfq's MAX_SIZE
DEFAULT_BATCH = 4  # measured: see "Speed work" in README.md (batch sizes 1-64)
DEFAULT_AUDIT_INTERVAL = 1.0  # one audit (iptables-save, both families) costs about 4 ms
MIN_AUDIT_INTERVAL = 0.1


@dataclass(frozen=True, slots=True)
class Settings:
    queue: int = 0
    interfaces: tuple[str, ...] = ()  # () guards all but loopback; "ppp+" is a wildcard
    hotplug_interfaces: tuple[str, ...] = ()  # of interfaces: may be absent at start
    public: tuple[Step, ...] = ()
    max_sources: int = 65536
    workers: int = 1  # "one per CPU" is resolved when the config is read
    queue_maxlen: int = 4096
    batch: int = DEFAULT_BATCH  # packets a worker reads (and verdicts) at once: throughput against latency
    control: str = "/run/gatekeeper/control.sock"  # "" turns the control socket off
    state_dir: str = "/var/lib/gatekeeper"  # replay logs of SPA/encrypted doors; "" = memory only
    scan_limit: int = 0  # distinct non-knock ports within the window; 0: longest sequence + 3
    scan_lockout: int = 60  # seconds a source seen scanning cannot complete a sequence
    prefix_quota: int = 64  # sources of one /24 or /64 part-way through a sequence; 0: no quota
    failure_limit: int = 10  # failed sequences of one source within failure_lockout; 0: no limit
    prefix_failure_limit: int = 100  # the same for one /24 or /64; 0: no limit
    failure_lockout: int = 300  # the window those limits count in, and how long they lock out
    audit_interval: float = DEFAULT_AUDIT_INTERVAL  # seconds between audits of the running ruleset
    ruleset_repair: bool = True  # put our jumps back first when another program got ahead

    @property
    def queues(self) -> range:
        return range(self.queue, self.queue + self.workers)


DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"  # loopback: never a public address by default


@dataclass(frozen=True, slots=True)
class Metrics:
    listen: str = DEFAULT_METRICS_LISTEN  # "" turns the exporter off


CLUSTER_FALLBACKS = ("closed", "local")
DEFAULT_CLUSTER_PREFIX = "gatekeeper"
DEFAULT_CLUSTER_TIMEOUT_MS = 50


@dataclass(frozen=True, slots=True, repr=False)
class Cluster:
    """``[cluster]``: knock progress and grants shared by several gateways on Redis/Valkey."""

    redis: str = ""  # redis://[user:password@]host:port[/db] or rediss://...
    sentinels: tuple[tuple[str, int], ...] = ()  # or Sentinel: these, and the service name
    service: str = ""
    prefix: str = DEFAULT_CLUSTER_PREFIX
    timeout_ms: int = DEFAULT_CLUSTER_TIMEOUT_MS
    password: str = ""  # for Sentinel's master (a URL carries its own)

    def __repr__(self) -> str:  # never print a password
        return f"Cluster({self.where()!r}, prefix={self.prefix!r})"

    def where(self) -> str:
        """The store, as log lines, errors and the status name it (never a password)."""
        if self.redis:
            return redact_url(self.redis).partition("://")[2]
        return f"sentinel {self.service} via {','.join(f'{h}:{p}' for h, p in self.sentinels)}"

    def redact(self, text: str) -> str:
        """``text`` (an error's, say) with every password of this config in it hidden: the
        URL's (user part or ``password=``, as written and decoded) and Sentinel's."""
        secrets = {self.password}
        if self.redis:
            userinfo, query = _url_secrets(self.redis)
            secrets.update((userinfo.partition(":")[2] if ":" in userinfo else userinfo, query))
        for secret in sorted({s for v in secrets for s in (v, unquote(v))} - {""}, key=len,
                             reverse=True):
            text = text.replace(secret, "***")
        return text


_QUERY_PASSWORD = re.compile(r"([?&;]password=)([^&#;]*)", re.I)


def _url_secrets(url: str) -> tuple[str, str]:
    """(the user part, the ``password=`` query value) of a store URL, as written."""
    rest = url.partition("://")[2] or url
    userinfo = rest[:rest.rfind("@", 0, (rest + "?").index("?"))] if "@" in rest else ""
    found = _QUERY_PASSWORD.search(rest)
    return userinfo, found.group(2) if found else ""


def redact_url(url: str) -> str:
    """A store URL as it may be printed: the password of its user part (``user:***@``,
    or ``***@`` for a user part with no colon) and a ``password=`` query value hidden."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, _ = _url_secrets(url)
    if userinfo:
        user, colon, _ = userinfo.partition(":")
        rest = (f"{user}:***" if colon else "***") + rest[len(userinfo):]
    return scheme + sep + _QUERY_PASSWORD.sub(r"\1***", rest)


@dataclass(frozen=True, slots=True)
class Config:
    settings: Settings
    doors: tuple[Door, ...]
    path: str = "<config>"
    protected: frozenset[int] = field(default=frozenset())
    metrics: Metrics = Metrics()
    cluster: Cluster | None = None  # None: a single gateway, state in process
    seed: int = 0  # HMARK hash seed: from the config's text, so stable yet not guessable
    text: str = ""


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate ``path``; raises :class:`ConfigError`."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{name}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{name}: cannot read: {exc}") from None
    return loads(text, name)


def loads(text: str, name: str = "<config>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name}: not valid TOML: {exc}") from None
    cfg = _Parser(name).config(data)
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")
    return replace(cfg, seed=seed, text=text)


class _Parser:
    def __init__(self, name: str) -> None:
        self.name = name

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.name}: {key}: {message}")

    def _table(self, value: Any, key: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table")
        for k in value:
            if k not in allowed:
                allowed_text = ", ".join(sorted(allowed))
                shown = k if k.isprintable() else repr(k)  # keep the message on one line
                raise self.fail(f"{key}.{shown}" if key else shown, f"unknown key (allowed: {allowed_text})")
        return value

    def _int(self, value: Any, key: str, lo: int, hi: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be a whole number, got {value!r}")
        if not lo <= value <= hi:
            raise self.fail(key, f"must be between {lo} and {hi}, got {value}")
        return value

    def _number(self, value: Any, key: str, lo: float, hi: float) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"must be a number of seconds, got {value!r}")
        if not lo < value <= hi:
            raise self.fail(key, f"must be more than {lo:g} and at most {hi:g}, got {value}")
        return float(value)

    def _str(self, value: Any, key: str) -> str:
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {value!r}")
        return value

    def _list(self, value: Any, key: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list, got {value!r}")
        return value

    def step(self, value: Any, key: str, allowed: tuple[int, ...] = (TCP, UDP, ICMP)) -> Step:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        text = self._str(value, key).strip().lower()
        port_text, colon, proto_text = text.partition(":")
        proto_text = proto_text if colon else "tcp"
        proto = PROTO_NUMBERS.get(proto_text)
        if proto is None:
            raise self.fail(key, f"{value!r}: protocol must be tcp, udp or icmp")
        if proto not in allowed:
            names = " or ".join(PROTO_NAMES[p] for p in allowed)
            raise self.fail(key, f"{value!r}: only {names} is allowed here")
        if not (port_text.isascii() and port_text.isdigit()):
            raise self.fail(key, f"{value!r}: expected PORT[:PROTO], e.g. 7000:udp")
        port = int(port_text)
        if proto == ICMP:
            if port > MAX_ICMP_PAYLOAD:
                raise self.fail(key, f"{value!r}: icmp payload size must be 0-{MAX_ICMP_PAYLOAD}")
        elif not 1 <= port <= 65535:
            raise self.fail(key, f"{value!r}: port must be 1-65535")
        return Step(proto, port)

    def steps(
        self, value: Any, key: str, allowed: tuple[int, ...] = (TCP, UDP, ICMP), *, sequence: bool
    ) -> tuple[Step, ...]:
        items = self._list(value, key)
        if not items:
            raise self.fail(key, "must not be empty")
        if len(items) > MAX_STEPS:
            raise self.fail(key, f"at most {MAX_STEPS} entries")
        out = tuple(self.step(v, f"{key}[{i}]", allowed) for i, v in enumerate(items))
        if sequence:
            for i in range(1, len(out)):
                if out[i] == out[i - 1]:
                    raise self.fail(
                        f"{key}[{i}]",
                        f"{out[i]} repeats the step before it; a repeat cannot be told apart "
                        "from a retransmitted knock",
                    )
        elif len(set(out)) != len(out):
            raise self.fail(key, "lists a port twice")
        return out

    def tcp_flags(self, value: Any, key: str) -> TcpFlags:
        text = self._str(value, key)
        required = forbidden = 0
        for raw in text.split(","):
            word = raw.strip().lower()
            negate = word.startswith("!")
            word = word[1:] if negate else word
            bit = TCP_FLAG_BITS.get(word)
            if bit is None:
                names = ", ".join(TCP_FLAG_BITS)
                raise self.fail(key, f"{raw.strip()!r}: flags are {names} (prefix ! to forbid)")
            if negate:
                forbidden |= bit
            else:
                required |= bit
        if required & forbidden:
            raise self.fail(key, f"{text!r} both requires and forbids a flag")
        return TcpFlags(required, forbidden)

    def command(self, value: Any, key: str) -> tuple[str, ...]:
        if isinstance(value, str):
            try:
                argv = shlex.split(value)
            except ValueError as exc:
                raise self.fail(key, f"cannot split into arguments: {exc}") from None
        else:
            argv = [self._str(v, f"{key}[{i}]") for i, v in enumerate(self._list(value, key))]
        if not argv or not argv[0]:
            raise self.fail(key, "must name a program")
        return tuple(argv)

    def settings(self, raw: Any) -> Settings:
        data = self._table(
            raw, "gatekeeper",
            {"queue", "interfaces", "hotplug_interfaces", "public", "max_sources", "workers",
             "queue_maxlen", "batch", "control", "scan_limit", "scan_lockout", "state_dir",
             "prefix_quota", "failure_limit", "prefix_failure_limit", "failure_lockout",
             "audit_interval", "ruleset_repair"},
        )
        queue = self._int(data.get("queue", 0), "gatekeeper.queue", 0, 65535)
        ifaces = tuple(
            self._str(v, f"gatekeeper.interfaces[{i}]")
            for i, v in enumerate(self._list(data.get("interfaces", []), "gatekeeper.interfaces"))
        )
        for i, iface in enumerate(ifaces):
            if not _IFACE_RE.match(iface):
                raise self.fail(f"gatekeeper.interfaces[{i}]", f"{iface!r} is not an interface name")
            if iface == "lo" or (iface.endswith("+") and "lo".startswith(iface[:-1])):
                raise self.fail(f"gatekeeper.interfaces[{i}]", f"{iface!r}: loopback is never guarded")
        if len(set(ifaces)) != len(ifaces):
            raise self.fail("gatekeeper.interfaces", "lists an interface twice")
        hotplug = self.hotplug_interfaces(data.get("hotplug_interfaces", []), ifaces)
        public: tuple[Step, ...] = ()
        if self._list(data.get("public", []), "gatekeeper.public"):
            public = self.steps(data["public"], "gatekeeper.public", (TCP, UDP), sequence=False)
        max_sources = self._int(data.get("max_sources", 65536), "gatekeeper.max_sources", 16, 10_000_000)
        workers = self._int(data.get("workers", default_workers()), "gatekeeper.workers", 1, MAX_WORKERS)
        if queue + workers - 1 > 65535:
            raise self.fail("gatekeeper.workers", f"queues {queue}..{queue + workers - 1} exceed 65535")
        maxlen = self._int(data.get("queue_maxlen", 4096), "gatekeeper.queue_maxlen", 16, 1_000_000)
        batch = self._int(data.get("batch", DEFAULT_BATCH), "gatekeeper.batch", 1, MAX_BATCH)
        control = self._str(data.get("control", "/run/gatekeeper/control.sock"), "gatekeeper.control")
        if control and (not control.startswith("/") or len(control.encode()) > 107):
            raise self.fail("gatekeeper.control", f"{control!r}: an absolute path of at most 107 bytes "
                            "('' turns the control socket off)")
        scan_limit = self._int(data.get("scan_limit", 0), "gatekeeper.scan_limit", 0, 65535)
        scan_lockout = self._int(data.get("scan_lockout", 60), "gatekeeper.scan_lockout", 0, 86400)
        prefix_quota = self._int(data.get("prefix_quota", 64), "gatekeeper.prefix_quota", 0, 10_000_000)
        failure_limit = self._int(data.get("failure_limit", 10), "gatekeeper.failure_limit", 0, 1_000_000)
        prefix_failure_limit = self._int(data.get("prefix_failure_limit", 100),
                                         "gatekeeper.prefix_failure_limit", 0, 1_000_000)
        failure_lockout = self._int(data.get("failure_lockout", 300), "gatekeeper.failure_lockout", 1, 86400)
        audit_interval = self._number(data.get("audit_interval", DEFAULT_AUDIT_INTERVAL),
                                      "gatekeeper.audit_interval", 0, 60)
        if audit_interval < MIN_AUDIT_INTERVAL:
            raise self.fail("gatekeeper.audit_interval", f"must be at least {MIN_AUDIT_INTERVAL:g} s "
                            f"(each audit runs iptables-save twice), got {audit_interval:g}")
        repair = data.get("ruleset_repair", True)
        if not isinstance(repair, bool):
            raise self.fail("gatekeeper.ruleset_repair", f"must be true or false, got {repair!r}")
        state_dir = self._str(data.get("state_dir", "/var/lib/gatekeeper"), "gatekeeper.state_dir")
        if state_dir and not state_dir.startswith("/"):
            raise self.fail("gatekeeper.state_dir", f"{state_dir!r}: an absolute path "
                            "('' keeps replay caches in memory only)")
        return Settings(queue=queue, interfaces=ifaces, hotplug_interfaces=hotplug, public=public,
                        max_sources=max_sources,
                        workers=workers, queue_maxlen=maxlen, batch=batch, control=control,
                        scan_limit=scan_limit, scan_lockout=scan_lockout, state_dir=state_dir,
                        prefix_quota=prefix_quota, failure_limit=failure_limit,
                        prefix_failure_limit=prefix_failure_limit, failure_lockout=failure_lockout,
                        audit_interval=audit_interval, ruleset_repair=repair)

    def hotplug_interfaces(self, raw: Any, ifaces: tuple[str, ...]) -> tuple[str, ...]:
        """Guarded interfaces that may be absent when gatekeeper starts (a hot-plugged
        link: wg0, a USB modem): each one of ``interfaces`` by its exact name."""
        key = "gatekeeper.hotplug_interfaces"
        names = tuple(self._str(v, f"{key}[{i}]") for i, v in enumerate(self._list(raw, key)))
        for i, name in enumerate(names):
            if name.endswith("+"):
                raise self.fail(f"{key}[{i}]", f"{name!r} is a wildcard, which never has to "
                                "exist: list it in interfaces only")
            if name not in ifaces:
                raise self.fail(f"{key}[{i}]", f"{name!r} is not in gatekeeper.interfaces "
                                "(only a guarded interface can be hot-plugged)")
        if len(set(names)) != len(names):
            raise self.fail(key, "lists an interface twice")
        return names

    def door(self, raw: Any, index: int) -> Door:
        where = f"door[{index}]"
        data = self._table(
            raw,
            where,
            {
                "name", "sequence", "sequence_timeout", "tcp_flags", "opens", "open_for",
                "close_sequence", "start_command", "stop_command", "command_timeout", "host",
                "wrong_knock",
                "spa", "key_file", "spa_port", "spa_window", "spa_other_source",
                "encrypted_sequence", "one_time_sequences", "cluster_fallback",
            },
        )
        if "name" not in data:
            raise self.fail(f"{where}.name", "is required")
        name = self._str(data["name"], f"{where}.name")
        if not _NAME_RE.match(name):
            raise self.fail(f"{where}.name", f"{name!r}: use 1-24 letters, digits, '-' or '_'")
        where = f"door[{index}] ({name})"
        kinds = [k for k in SPA_KINDS
                 if k in data and not (k == "spa" and data[k] is False)]
        if len(kinds) > 1:
            raise self.fail(f"{where}.{kinds[1]}",
                            f"a door is opened by exactly one of sequence, spa, encrypted_sequence "
                            f"or one_time_sequences; this one also has {kinds[0]}")
        kind = kinds[0] if kinds else "sequence"
        for required in ("sequence", "opens") if kind == "sequence" else ("opens",):
            if required not in data:
                raise self.fail(f"{where}.{required}", "is required")
        kwargs: dict[str, Any] = {
            "name": name,
            "sequence": (self.steps(data["sequence"], f"{where}.sequence", sequence=True)
                         if kind == "sequence" else ()),
            "opens": self.steps(data["opens"], f"{where}.opens", (TCP, UDP), sequence=False),
            "kind": kind,
        }
        self.special(data, where, kind, kwargs)
        if "sequence_timeout" in data:
            kwargs["sequence_timeout"] = self._number(
                data["sequence_timeout"], f"{where}.sequence_timeout", 0, MAX_SEQUENCE_TIMEOUT
            )
        if "tcp_flags" in data:
            kwargs["tcp_flags"] = self.tcp_flags(data["tcp_flags"], f"{where}.tcp_flags")
        if "open_for" in data:
            kwargs["open_for"] = self._int(data["open_for"], f"{where}.open_for", 1, MAX_OPEN_FOR)
        if "close_sequence" in data:
            kwargs["close_sequence"] = self.steps(
                data["close_sequence"], f"{where}.close_sequence", sequence=True
            )
        for cmd in ("start_command", "stop_command"):
            if cmd in data:
                kwargs[cmd] = self.command(data[cmd], f"{where}.{cmd}")
        if "wrong_knock" in data:
            mode = self._str(data["wrong_knock"], f"{where}.wrong_knock")
            if mode not in ("reset", "ignore"):
                raise self.fail(f"{where}.wrong_knock", f"{mode!r}: use \"reset\" or \"ignore\"")
            kwargs["wrong_knock"] = mode
        if "cluster_fallback" in data:
            mode = self._str(data["cluster_fallback"], f"{where}.cluster_fallback")
            if mode not in CLUSTER_FALLBACKS:
                raise self.fail(f"{where}.cluster_fallback", f"{mode!r}: use \"closed\" or \"local\"")
            kwargs["cluster_fallback"] = mode
        if "command_timeout" in data:
            kwargs["command_timeout"] = self._number(
                data["command_timeout"], f"{where}.command_timeout", 0, 3600
            )
        if "host" in data:
            text = self._str(data["host"], f"{where}.host")
            try:
                if "%" in text:
                    raise ValueError("scoped")
                kwargs["host"] = ipaddress.ip_address(text)
            except ValueError:
                raise self.fail(f"{where}.host", f"{text!r} is not an IPv4 or IPv6 address") from None
        return Door(**kwargs)

    def special(self, data: dict[str, Any], where: str, kind: str, kwargs: dict[str, Any]) -> None:
        """The keys of the special kinds: only on a door of that kind."""
        spa_keys = ("key_file", "spa_port", "spa_window", "spa_other_source")
        if kind != "spa":
            for key in spa_keys:
                if key in data:
                    raise self.fail(f"{where}.{key}", "only for a door with spa = true")
        if kind != "sequence" and "close_sequence" in data:
            raise self.fail(f"{where}.close_sequence", f"only for a plain sequence door, not {kind}")
        if kind not in ("sequence", "one_time_sequences") and "tcp_flags" in data:
            raise self.fail(f"{where}.tcp_flags", f"only for a sequence or one-time door, not {kind}")
        if kind == "spa":
            if data["spa"] is not True:
                raise self.fail(f"{where}.spa", f"must be true or false, got {data['spa']!r}")
            if "key_file" not in data:
                raise self.fail(f"{where}.key_file", "is required with spa = true")
            path = self._str(data["key_file"], f"{where}.key_file")
            text = self.key_file(path, f"{where}.key_file")
            from gatekeeper.spa.fwknop import parse_key_file
            from gatekeeper.spa.keyfile import KeyFileError

            try:
                keys = parse_key_file(text, path)
            except KeyFileError as exc:
                raise self.fail(f"{where}.key_file", str(exc)) from None
            port = self._int(data.get("spa_port", DEFAULT_SPA_PORT), f"{where}.spa_port", 1, 65535)
            window = self._number(data.get("spa_window", DEFAULT_SPA_WINDOW), f"{where}.spa_window",
                                  0, 3600)
            other = data.get("spa_other_source", False)
            if not isinstance(other, bool):
                raise self.fail(f"{where}.spa_other_source", f"must be true or false, got {other!r}")
            kwargs["spa"] = SpaDoor(path, keys, port, window, other)
        elif kind == "encrypted_sequence":
            key = f"{where}.encrypted_sequence"
            table = self._table(data[kind], key, {"key_file", "ports", "window"})
            for required in ("key_file", "ports"):
                if required not in table:
                    raise self.fail(f"{key}.{required}", "is required")
            path = self._str(table["key_file"], f"{key}.key_file")
            secret = self.sequence_key(path, f"{key}.key_file")
            ports = self._str(table["ports"], f"{key}.ports")
            m = re.fullmatch(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*", ports)
            if m is None:
                raise self.fail(f"{key}.ports", f"{ports!r}: expected FIRST-LAST, e.g. 745-1000")
            first, last = int(m.group(1)), int(m.group(2))
            if last - first != 255 or not 1 <= first <= 65535 - 255:
                raise self.fail(f"{key}.ports", f"{ports!r}: must span exactly 256 ports within "
                                "1-65535, e.g. 745-1000")
            window = self._number(table.get("window", DEFAULT_SPA_WINDOW), f"{key}.window", 0, 3600)
            kwargs["encrypted"] = EncryptedDoor(path, secret, first, last, window)
        elif kind == "one_time_sequences":
            key = f"{where}.one_time_sequences"
            path = self._str(data[kind], key)
            kwargs["one_time"] = self.one_time(path, key)

    def key_file(self, path: str, key: str) -> str:
        """A key file's text. Only its owner may read it (mode & 0o077 == 0), and the owner
        is root or the user gatekeeper runs as (the systemd unit's ``gatekeeper``)."""
        if not path.startswith("/"):
            raise self.fail(key, f"{path!r}: must be an absolute path")
        try:
            with open(path, encoding="utf-8") as f:
                st = os.fstat(f.fileno())
                mode = st.st_mode
                if mode & 0o077:
                    raise self.fail(key, f"{path}: must be readable only by root or the daemon's "
                                    f"user (mode {mode & 0o777:04o}; chmod 600 {path})")
                if st.st_uid not in (0, os.geteuid()):
                    raise self.fail(key, f"{path}: owned by uid {st.st_uid}; it must belong to "
                                    "root or the user gatekeeper runs as")
                return f.read(1 << 16)
        except FileNotFoundError:
            raise self.fail(key, f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise self.fail(key, f"{path}: cannot read: {exc}") from None

    def sequence_key(self, path: str, key: str) -> bytes:
        """The AES key of an encrypted sequence: a ``KEY_BASE64: ...`` line."""
        from gatekeeper.spa.keyfile import KeyFileError
        from gatekeeper.spa.sequence import parse_key_file

        try:
            return parse_key_file(self.key_file(path, key), path)
        except KeyFileError as exc:
            raise self.fail(key, str(exc)) from None

    def one_time(self, path: str, key: str) -> OneTimeDoor:
        """knockd's format: a sequence a line, ``port[:proto]`` comma- or space-separated,
        ``#`` comments (a used line is commented out)."""
        if not path.startswith("/"):
            raise self.fail(key, f"{path!r}: must be an absolute path")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise self.fail(key, f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise self.fail(key, f"{path}: cannot read: {exc}") from None
        lines: list[tuple[int, tuple[Step, ...]]] = []
        used: set[Step] = set()
        for number, line in enumerate(text.splitlines()[:MAX_ONE_TIME_LINES], 1):
            if line.startswith(ONE_TIME_USED):
                try:
                    used.update(self.steps(line[len(ONE_TIME_USED):].split("#", 1)[0]
                                           .replace(",", " ").split(), key, sequence=True))
                except GatekeeperError:
                    pass  # a used line is never knocked again; its ports only route
                continue
            body = line.split("#", 1)[0].strip()
            if not body:
                continue
            steps = self.steps(body.replace(",", " ").split(), f"{key} ({path}:{number})",
                               sequence=True)
            lines.append((number, steps))
        self._writable(path, key)
        return OneTimeDoor(path, tuple(lines), frozenset(used))

    def _writable(self, path: str, key: str) -> None:
        """A used line is marked in the file (a new copy beside it, then a rename) before its
        grant is given: a file the daemon cannot rewrite would grant nothing, so refuse it."""
        directory = os.path.dirname(path) or "/"
        for what, target in (("file", path), ("directory", directory)):
            if not os.access(target, os.W_OK):
                raise self.fail(key, f"{path}: the daemon cannot write its {what} {target} "
                                "(a used line is marked there before its grant); keep the "
                                "file where it may write, e.g. under state_dir")

    def config(self, data: dict[str, Any]) -> Config:
        self._table(data, "", {"gatekeeper", "door", "metrics", "cluster"})
        settings = self.settings(data.get("gatekeeper", {}))
        raw_doors = data.get("door")
        if raw_doors is None or raw_doors == []:
            raise self.fail("door", "no [[door]] defined; a gatekeeper with no door only drops")
        doors = tuple(self.door(d, i) for i, d in enumerate(self._list(raw_doors, "door")))
        self._cross_check(settings, doors)
        protected = frozenset(s.key for d in doors for s in d.opens)
        metrics = self.metrics(data.get("metrics", {}))
        cluster = self.cluster(data["cluster"]) if "cluster" in data else None
        return Config(settings=settings, doors=doors, path=self.name, protected=protected,
                      metrics=metrics, cluster=cluster)

    def cluster(self, raw: Any) -> Cluster:
        data = self._table(raw, "cluster", {"redis", "sentinels", "service", "prefix", "timeout_ms",
                                            "password"})
        url = self._str(data.get("redis", ""), "cluster.redis")
        sentinels: list[tuple[str, int]] = []
        for i, item in enumerate(self._list(data.get("sentinels", []), "cluster.sentinels")):
            text = self._str(item, f"cluster.sentinels[{i}]")
            host, colon, port = text.rpartition(":")
            host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
            if not colon or not host or not port.isascii() or not port.isdigit() \
                    or not 1 <= int(port) <= 65535:
                raise self.fail(f"cluster.sentinels[{i}]", f"{text!r}: expected HOST:PORT, "
                                "e.g. 192.0.2.10:26379")
            sentinels.append((host, int(port)))
        service = self._str(data.get("service", ""), "cluster.service")
        if url and sentinels:
            raise self.fail("cluster.sentinels", "give either redis or sentinels (with service), "
                            "not both")
        if url:
            if not url.startswith(("redis://", "rediss://", "unix://")):
                raise self.fail("cluster.redis", f"{redact_url(url)!r}: expected a URL "
                                "redis://HOST:PORT[/DB], rediss://... or unix://PATH")
            try:
                _ = urlsplit(url).port  # what redis-py reads: a bad one raises there, naming it
            except ValueError:
                raise self.fail("cluster.redis", f"{redact_url(url)!r}: not a URL (percent-encode "
                                "/ ? # @ and : in a password: %2F %3F %23 %40 %3A)") from None
            if service:
                raise self.fail("cluster.service", "only with sentinels")
        elif sentinels:
            if not service:
                raise self.fail("cluster.service", "is required with sentinels (the name of the "
                                "master the sentinels monitor)")
        else:
            raise self.fail("cluster.redis", "is required: a redis:// URL, or sentinels and service")
        prefix = self._str(data.get("prefix", DEFAULT_CLUSTER_PREFIX), "cluster.prefix")
        if not _NAME_RE.match(prefix):
            raise self.fail("cluster.prefix", f"{prefix!r}: use 1-24 letters, digits, '-' or '_'")
        timeout = self._int(data.get("timeout_ms", DEFAULT_CLUSTER_TIMEOUT_MS), "cluster.timeout_ms",
                            1, 10_000)
        password = self._str(data.get("password", ""), "cluster.password")
        return Cluster(redis=url, sentinels=tuple(sentinels), service=service, prefix=prefix,
                       timeout_ms=timeout, password=password)

    def metrics(self, raw: Any) -> Metrics:
        data = self._table(raw, "metrics", {"listen"})
        listen = self._str(data.get("listen", DEFAULT_METRICS_LISTEN), "metrics.listen")
        if listen:
            host, colon, port = listen.rpartition(":")
            host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise self.fail("metrics.listen", f"{listen!r}: expected ADDRESS:PORT, e.g. "
                                "127.0.0.1:9464 ('' turns metrics off)") from None
            if not colon or not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise self.fail("metrics.listen", f"{listen!r}: port must be 1-65535")
        return Metrics(listen=listen)

    def _cross_check(self, settings: Settings, doors: tuple[Door, ...]) -> None:
        names: set[str] = set()
        sequences: dict[tuple[Step, ...], str] = {}
        public = {s.key for s in settings.public}
        protected: dict[int, str] = {}
        for i, door in enumerate(doors):
            if door.name in names:
                raise self.fail(f"door[{i}].name", f"{door.name!r} is used by another door")
            names.add(door.name)
            for step in door.opens:
                if step.key in public:
                    raise self.fail(f"door[{i}] ({door.name}).opens", f"{step} is also public")
                if door.host is None:
                    protected[step.key] = door.name
        for i, door in enumerate(doors):
            where = f"door[{i}] ({door.name})"
            for kind, seq in (("sequence", door.sequence), ("close_sequence", door.close_sequence)):
                if not seq:
                    continue
                other = sequences.get(seq)
                if other is not None:
                    raise self.fail(f"{where}.{kind}", f"same sequence as {other}")
                sequences[seq] = f"{door.name}.{kind}"
                for j, step in enumerate(seq):
                    if step.key in public:
                        raise self.fail(f"{where}.{kind}[{j}]", f"knock port {step} is also public")
                    if step.key in protected:
                        raise self.fail(
                            f"{where}.{kind}[{j}]",
                            f"knock port {step} is also protected by door {protected[step.key]!r}",
                        )
        self._cross_check_special(public, protected, doors)

    def _cross_check_special(self, public: set[int], protected: dict[int, str],
                             doors: tuple[Door, ...]) -> None:
        """SPA ports and encrypted ranges must not be knock, public or protected ports,
        nor overlap each other; one-time sequences must not use another door's ports."""
        knocks: dict[int, str] = {}
        for door in doors:
            for step in (*door.sequence, *door.close_sequence):
                knocks[step.key] = door.name
        taken: dict[int, str] = {}  # special keys -> door name
        for i, door in enumerate(doors):
            where = f"door[{i}] ({door.name})"
            keys: list[tuple[int, str]] = []
            if door.spa is not None:
                keys = [(step_key(UDP, door.spa.port), f"{where}.spa_port")]
            elif door.encrypted is not None:
                e = door.encrypted
                keys = [(step_key(p, port), f"{where}.encrypted_sequence.ports")
                        for p in (TCP, UDP) for port in range(e.first, e.last + 1)]
            elif door.one_time is not None:
                keys = [(s.key, f"{where}.one_time_sequences")
                        for _, steps in door.one_time.lines for s in steps]
            mine: set[int] = set()
            for k, key in keys:
                step = Step(k >> 16, k & 0xFFFF)
                for what, table in (("public", public), ("a knock port", knocks),
                                    ("protected", protected), ("used by another door", taken)):
                    if k in table and not (what == "used by another door" and k in mine):
                        owner = table[k] if isinstance(table, dict) else ""
                        text = f"{step} is {what}" + (f" ({owner!r})" if owner else "")
                        raise self.fail(key, text)
                mine.add(k)
            for k in mine:
                taken[k] = door.name
