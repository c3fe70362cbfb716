"""What a gatekeeper config says, as immutable objects: doors, the ports they open,
settings, and the protocol numbers, defaults and limits they are written in.

No I/O: :mod:`gatekeeper.config.load` reads a TOML file (and the key and one-time
files it names) into these objects; the engine, the netfilter renderer, the worker and
the cluster gate only read them.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote

# Protocol numbers (IPPROTO_*) as the engine, the ruleset and the clients use them.
TCP: Final = 6
UDP: Final = 17
ICMP: Final = 1  # an ICMP or ICMPv6 echo request; the "port" is its payload length

PROTO_NAMES = {TCP: "tcp", UDP: "udp", ICMP: "icmp"}
PROTO_NUMBERS = {name: num for num, name in PROTO_NAMES.items()}

TCP_FLAG_BITS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10, "urg": 0x20}

MAX_STEPS = 32
MAX_OPEN_FOR = 7 * 24 * 3600
MAX_SEQUENCE_TIMEOUT = 3600
MAX_ICMP_PAYLOAD = 65507
DEFAULT_SPA_PORT = 62201  # fwknop's default (UDP)
DEFAULT_SPA_WINDOW = 120.0
# fwknop's ENCRYPTION_MODE values (-M; "legacy" is fwknop < 2.5's key handling, CBC)
SPA_MODES = ("cbc", "cfb", "ofb", "ctr", "ecb", "legacy")
DEFAULT_SPA_MODE = "cbc"
# the digest types of --hmac-digest-type (fwknop's HMAC_DIGEST_TYPE) and -m
SPA_DIGEST_TYPES = ("md5", "sha1", "sha256", "sha384", "sha512")
DEFAULT_SPA_HMAC_DIGEST = "sha256"
# -m a door takes unless spa_digests names others: md5 and sha1 are broken for
# collisions, so taking them (fwknopd does) is an explicit opt-in
DEFAULT_SPA_DIGESTS = ("sha256", "sha384", "sha512")
# spa_transports: how a door's SPA packets may arrive. "udp": to spa_port (fwknop's
# default); "tcpraw": a raw TCP segment to spa_port (-P tcpraw); "icmp": an ICMP echo
# request or reply (-P icmp); "udp-any": UDP to any port of SPA_ANY_PORTS (--rand-port)
SPA_TRANSPORTS = ("udp", "tcpraw", "icmp", "udp-any")
DEFAULT_SPA_TRANSPORTS = ("udp",)
SPA_ANY_PORTS = (10000, 65535)  # the ports fwknop --rand-port picks from
# No SPA packet of any suite is shorter (gatekeeper.spa.fwknop.min_text): the floor of
# the ruleset's length match for the other transports, and an "N:icmp" knock step's
# ceiling when a door takes SPA over ICMP
SPA_MIN_PAYLOAD = 96
SPA_KINDS = ("sequence", "spa", "encrypted_sequence", "one_time_sequences")
MAX_ONE_TIME_LINES = 100_000
ONE_TIME_USED = "#used# "  # how a used line of a one-time sequences file starts
DEFAULT_CONTROL_SOCKET = "/run/gatekeeper/control.sock"
DEFAULT_STATE_DIR = "/var/lib/gatekeeper"  # the shipped unit's StateDirectory


def port_key(proto: int, port: int) -> int:
    return proto << 16 | port


@dataclass(frozen=True, slots=True)
class Port:
    """A protocol and port written the knockd way, ``PORT[:PROTO]``: a step of a knock
    sequence, a port a door opens, a public port. For icmp the port is the echo
    request's payload length."""

    proto: int
    port: int

    def __str__(self) -> str:
        return f"{self.port}:{PROTO_NAMES[self.proto]}"

    @property
    def key(self) -> int:
        """The compact ``proto << 16 | port`` form the engine matches packets against."""
        return port_key(self.proto, self.port)


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
    sequence: tuple[Port, ...]
    opens: tuple[Port, ...]
    sequence_timeout: float = 5.0
    tcp_flags: TcpFlags = TcpFlags(TCP_FLAG_BITS["syn"], 0)
    open_for: int = 30
    close_sequence: tuple[Port, ...] = ()
    start_command: tuple[str, ...] = ()
    stop_command: tuple[str, ...] = ()
    command_timeout: float = 10.0
    host: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    # "reset" (knockd's way): any packet that is not the next step starts over. "ignore":
    # such packets leave progress alone, so a spoofed packet between a client's knocks
    # cannot break its sequence; the scanner lockout keeps port sweeps from walking in.
    wrong_knock: str = "reset"
    # What opens the door: "sequence" (a plain knock, the engine's), or one of the
    # special kinds that gatekeeper.engine.special handles (their ``sequence`` is empty).
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
    # spa_hmac = false: Rijndael only, unauthenticated (and the only way to -M legacy)
    hmac: bool = True
    hmac_digest: str = DEFAULT_SPA_HMAC_DIGEST  # spa_hmac_digest
    digests: tuple[str, ...] = DEFAULT_SPA_DIGESTS  # spa_digests
    mode: str = DEFAULT_SPA_MODE  # spa_encryption_mode
    # spa_commands: what ``fwknop --server-cmd TEXT`` may run, TEXT exactly -> argv (no
    # shell; %IP% is the client's address); none by default (fwknopd's ENABLE_CMD_EXEC)
    commands: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # spa_nat: the internal (host, port) targets ``fwknop -N HOST:PORT`` may ask for,
    # DNATed from the gateway port it asks for with -A (fwknopd's ENABLE_IPT_FORWARDING);
    # spa_force_nat: every request goes to this one, whatever it asks (FORCE_NAT)
    nat: tuple[tuple[str, int], ...] = ()
    force_nat: tuple[str, int] | None = None
    gpg: SpaGpg | None = None  # spa_gpg: fwknop's GnuPG packets instead of Rijndael
    transports: tuple[str, ...] = DEFAULT_SPA_TRANSPORTS  # spa_transports

    def __repr__(self) -> str:  # never print key material
        return f"SpaDoor(key_file={self.key_file!r}, port={self.port})"

    @property
    def nat_targets(self) -> tuple[tuple[str, int], ...]:
        """Every internal target of the door, the forced one included."""
        return tuple(dict.fromkeys((*self.nat, *((self.force_nat,) if self.force_nat else ()))))

    def command(self, text: str) -> tuple[str, ...] | None:
        """The argv that the server command ``text`` runs, or None: not allowed."""
        return next((argv for name, argv in self.commands if name == text), None)


GPG_PROGRAM = "gpg"  # GnuPG, found on PATH (Debian: the gnupg package)
DEFAULT_GPG_BUDGET = 0.2  # spa_gpg.budget: share of a worker's time one door may spend in gpg
DEFAULT_GPG_TIMEOUT = 1.0  # spa_gpg.timeout: seconds one gpg run may take before it is killed


@dataclass(frozen=True, slots=True, repr=False)
class SpaGpg:
    """``spa_gpg = { home, recipient, ... }``: decrypt (and check the signature of) fwknop's
    GnuPG SPA packets with ``gpg`` in ``home``; ``hmac_key`` from the door's key file, if any."""

    home: str
    recipient: str  # key ID or fingerprint (upper-case hex) of the secret key to decrypt with
    signers: tuple[str, ...] = ()  # key IDs (8 or 16 hex digits) a signature may come from
    fingerprints: tuple[str, ...] = ()  # fingerprints (40 hex digits) likewise
    require_signature: bool = True
    passphrase_file: str = ""
    budget: float = DEFAULT_GPG_BUDGET
    timeout: float = DEFAULT_GPG_TIMEOUT
    hmac_key: bytes = b""  # b"": the door checks no HMAC

    def __repr__(self) -> str:  # never print key material
        return f"SpaGpg(home={self.home!r}, recipient={self.recipient!r})"


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
    lines: tuple[tuple[int, tuple[Port, ...]], ...]
    used: frozenset[Port] = frozenset()


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
    public: tuple[Port, ...] = ()
    max_sources: int = 65536
    workers: int = 1  # "one per CPU" is resolved when the config is read
    queue_maxlen: int = 4096
    batch: int = DEFAULT_BATCH  # packets a worker reads (and verdicts) at once: throughput against latency
    control: str = DEFAULT_CONTROL_SOCKET  # "" turns the control socket off
    state_dir: str = DEFAULT_STATE_DIR  # replay logs of SPA/encrypted doors; "" = memory only
    scan_limit: int = 0  # distinct non-knock ports within the window; 0: longest sequence + 3
    scan_lockout: int = 60  # seconds a source seen scanning cannot complete a sequence
    prefix_quota: int = 64  # sources of one /24 or /64 part-way through a sequence; 0: no quota
    failure_limit: int = 10  # failed sequences of one source within failure_lockout; 0: no limit
    prefix_failure_limit: int = 100  # the same for one /24 or /64; 0: no limit
    failure_lockout: int = 300  # the window those limits count in, and how long they lock out
    audit_interval: float = DEFAULT_AUDIT_INTERVAL  # seconds between audits of the running ruleset
    ruleset_repair: bool = True  # put our jumps back first when another program got ahead
    # drop in the kernel what cannot change a decision (gatekeeper.netfilter.prefilter)
    prefilter: bool = False

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
