"""Read a gatekeeper TOML config into the model: :func:`load` (a file), :func:`loads`
(its text). The tables and values are checked here, the files the config names in
:mod:`gatekeeper.config.keyfiles`, the rules across doors in :mod:`gatekeeper.config.checks`;
every problem is one :class:`~gatekeeper.config.ConfigError` line.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import re
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gatekeeper.config import ConfigError, gpg, keyfiles
from gatekeeper.config.checks import cross_check
from gatekeeper.config.values import Reader
from gatekeeper.errors import GatekeeperError
from gatekeeper.model import (
    CLUSTER_FALLBACKS,
    DEFAULT_CLUSTER_PREFIX,
    DEFAULT_CLUSTER_TIMEOUT_MS,
    DEFAULT_METRICS_LISTEN,
    DEFAULT_SPA_DIGESTS,
    DEFAULT_SPA_HMAC_DIGEST,
    DEFAULT_SPA_MODE,
    DEFAULT_SPA_PORT,
    DEFAULT_SPA_TRANSPORTS,
    DEFAULT_SPA_WINDOW,
    MAX_BATCH,
    MAX_ONE_TIME_LINES,
    MAX_OPEN_FOR,
    MAX_SEQUENCE_TIMEOUT,
    MAX_WORKERS,
    MIN_AUDIT_INTERVAL,
    ONE_TIME_USED,
    SPA_DIGEST_TYPES,
    SPA_KINDS,
    SPA_MODES,
    SPA_TRANSPORTS,
    TCP,
    UDP,
    Cluster,
    Config,
    Door,
    EncryptedDoor,
    Metrics,
    OneTimeDoor,
    Port,
    Settings,
    SpaDoor,
    redact_url,
)

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,24}\Z")
_IFACE_RE = re.compile(r"^[A-Za-z0-9_.@][^\s/:!]{0,14}\Z")
_DEFAULTS = Settings()
SPA_SETTINGS = ("key_file", "spa_port", "spa_window", "spa_other_source", "spa_hmac",
                "spa_hmac_digest", "spa_digests", "spa_encryption_mode", "spa_commands",
                "spa_nat", "spa_force_nat", "spa_gpg", "spa_transports")
MAX_SPA_COMMANDS = 64
# the command text rides in the message field (256 bytes) after the address and a comma
MAX_SPA_COMMAND = 200
log = logging.getLogger("gatekeeper.config")


def default_workers() -> int:
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


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


class _Parser(Reader):
    """The tables of a config: [gatekeeper], each [[door]], [metrics], [cluster]."""

    def settings(self, raw: Any) -> Settings:
        data = self._table(
            raw, "gatekeeper",
            {"queue", "interfaces", "hotplug_interfaces", "public", "max_sources", "workers",
             "queue_maxlen", "batch", "control", "scan_limit", "scan_lockout", "state_dir",
             "prefix_quota", "failure_limit", "prefix_failure_limit", "failure_lockout",
             "audit_interval", "ruleset_repair", "prefilter"},
        )
        queue = self._setting(data, "queue", 0, 65535)
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
        public: tuple[Port, ...] = ()
        if self._list(data.get("public", []), "gatekeeper.public"):
            public = self.ports(data["public"], "gatekeeper.public", (TCP, UDP), sequence=False)
        max_sources = self._setting(data, "max_sources", 16, 10_000_000)
        workers = self._int(data.get("workers", default_workers()), "gatekeeper.workers", 1, MAX_WORKERS)
        if queue + workers - 1 > 65535:
            raise self.fail("gatekeeper.workers", f"queues {queue}..{queue + workers - 1} exceed 65535")
        maxlen = self._setting(data, "queue_maxlen", 16, 1_000_000)
        batch = self._setting(data, "batch", 1, MAX_BATCH)
        control = self._str(data.get("control", _DEFAULTS.control), "gatekeeper.control")
        if control and (not control.startswith("/") or len(control.encode()) > 107):
            raise self.fail("gatekeeper.control", f"{control!r}: an absolute path of at most 107 bytes "
                            "('' turns the control socket off)")
        scan_limit = self._setting(data, "scan_limit", 0, 65535)
        scan_lockout = self._setting(data, "scan_lockout", 0, 86400)
        prefix_quota = self._setting(data, "prefix_quota", 0, 10_000_000)
        failure_limit = self._setting(data, "failure_limit", 0, 1_000_000)
        prefix_failure_limit = self._setting(data, "prefix_failure_limit", 0, 1_000_000)
        failure_lockout = self._setting(data, "failure_lockout", 1, 86400)
        audit_interval = self._number(data.get("audit_interval", _DEFAULTS.audit_interval),
                                      "gatekeeper.audit_interval", 0, 60)
        if audit_interval < MIN_AUDIT_INTERVAL:
            raise self.fail("gatekeeper.audit_interval", f"must be at least {MIN_AUDIT_INTERVAL:g} s "
                            f"(each audit runs iptables-save twice), got {audit_interval:g}")
        repair = self._bool(data.get("ruleset_repair", _DEFAULTS.ruleset_repair), "gatekeeper.ruleset_repair")
        pre = self._bool(data.get("prefilter", _DEFAULTS.prefilter), "gatekeeper.prefilter")
        state_dir = self._str(data.get("state_dir", _DEFAULTS.state_dir), "gatekeeper.state_dir")
        if state_dir and not state_dir.startswith("/"):
            raise self.fail("gatekeeper.state_dir", f"{state_dir!r}: an absolute path "
                            "('' keeps replay caches in memory only)")
        return Settings(queue=queue, interfaces=ifaces, hotplug_interfaces=hotplug, public=public,
                        max_sources=max_sources,
                        workers=workers, queue_maxlen=maxlen, batch=batch, control=control,
                        scan_limit=scan_limit, scan_lockout=scan_lockout, state_dir=state_dir,
                        prefix_quota=prefix_quota, failure_limit=failure_limit,
                        prefix_failure_limit=prefix_failure_limit, failure_lockout=failure_lockout,
                        audit_interval=audit_interval, ruleset_repair=repair, prefilter=pre)

    def _setting(self, data: dict[str, Any], name: str, lo: int, hi: int) -> int:
        """A whole number of [gatekeeper], or its default (:class:`Settings`)."""
        return self._int(data.get(name, getattr(_DEFAULTS, name)), f"gatekeeper.{name}", lo, hi)

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
                "spa", *SPA_SETTINGS,
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
            "sequence": (self.ports(data["sequence"], f"{where}.sequence", sequence=True)
                         if kind == "sequence" else ()),
            "opens": self.ports(data["opens"], f"{where}.opens", (TCP, UDP), sequence=False),
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
            kwargs["close_sequence"] = self.ports(
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
        if kind != "spa":
            for key in SPA_SETTINGS:
                if key in data:
                    raise self.fail(f"{where}.{key}", "only for a door with spa = true")
        if kind != "sequence" and "close_sequence" in data:
            raise self.fail(f"{where}.close_sequence", f"only for a plain sequence door, not {kind}")
        if kind not in ("sequence", "one_time_sequences") and "tcp_flags" in data:
            raise self.fail(f"{where}.tcp_flags", f"only for a sequence or one-time door, not {kind}")
        if kind == "spa":
            kwargs["spa"] = self.spa(data, where)
        elif kind == "encrypted_sequence":
            kwargs["encrypted"] = self.encrypted(data[kind], f"{where}.encrypted_sequence")
        elif kind == "one_time_sequences":
            key = f"{where}.one_time_sequences"
            path = self._str(data[kind], key)
            kwargs["one_time"] = self.one_time(path, key)

    def spa(self, data: dict[str, Any], where: str) -> SpaDoor:
        if data["spa"] is not True:
            raise self.fail(f"{where}.spa", f"must be true or false, got {data['spa']!r}")
        if "key_file" not in data and "spa_gpg" not in data:
            raise self.fail(f"{where}.key_file", "is required with spa = true (without spa_gpg)")
        path = self._str(data.get("key_file", ""), f"{where}.key_file")
        with_hmac = self._bool(data.get("spa_hmac", True), f"{where}.spa_hmac")
        spa_gpg = None
        if "spa_gpg" in data:  # GnuPG packets: an HMAC key (if any) instead of the Rijndael keys
            with_hmac = "key_file" in data
            if "spa_hmac" in data or "spa_encryption_mode" in data:
                raise self.fail(f"{where}.spa_gpg", "not with spa_hmac or spa_encryption_mode (a "
                                "key_file with an HMAC key turns HMAC on)")
            spa_gpg = gpg.spa_gpg(self, data["spa_gpg"], where, path if with_hmac else None)
        mode = self._choice(data.get("spa_encryption_mode", DEFAULT_SPA_MODE),
                            f"{where}.spa_encryption_mode", SPA_MODES)
        if mode == "legacy" and with_hmac:
            raise self.fail(f"{where}.spa_encryption_mode", "\"legacy\" packets carry no HMAC "
                            "(the client refuses both): it needs spa_hmac = false")
        if "spa_hmac_digest" in data and not with_hmac:
            raise self.fail(f"{where}.spa_hmac_digest", "not with spa_hmac = false")
        hmac_digest = self._choice(data.get("spa_hmac_digest", DEFAULT_SPA_HMAC_DIGEST),
                                   f"{where}.spa_hmac_digest", SPA_DIGEST_TYPES)
        digests = tuple(self._choice(d, f"{where}.spa_digests[{i}]", SPA_DIGEST_TYPES)
                        for i, d in enumerate(self._list(data.get("spa_digests",
                                                                  list(DEFAULT_SPA_DIGESTS)),
                                                         f"{where}.spa_digests")))
        if not digests:
            raise self.fail(f"{where}.spa_digests", "names no digest: no packet could pass")
        keys = None if spa_gpg else keyfiles.spa_keys(path, f"{where}.key_file", self.fail, with_hmac)
        port = self._int(data.get("spa_port", DEFAULT_SPA_PORT), f"{where}.spa_port", 1, 65535)
        window = self._number(data.get("spa_window", DEFAULT_SPA_WINDOW), f"{where}.spa_window",
                              0, 3600)
        other = self._bool(data.get("spa_other_source", False), f"{where}.spa_other_source")
        if not with_hmac and spa_gpg is None:
            log.warning("%s: %s.spa_hmac = false: its SPA packets are not authenticated, "
                        "anyone who can change one in flight can forge what it asks for "
                        "(fwknop without --use-hmac); use HMAC where the clients can",
                        self.name, where)
        commands = self.spa_commands(data.get("spa_commands", {}), f"{where}.spa_commands")
        return SpaDoor(path, keys, port, window, other, with_hmac, hmac_digest, digests, mode,
                       commands, gpg=spa_gpg, transports=self.spa_transports(data, f"{where}.spa_transports"),
                       **self.spa_nat(data, where))

    def spa_transports(self, data: dict[str, Any], key: str) -> tuple[str, ...]:
        """``spa_transports``: how the door's packets may arrive (model.SPA_TRANSPORTS)."""
        raw = self._list(data.get("spa_transports", list(DEFAULT_SPA_TRANSPORTS)), key)
        for i, value in enumerate(raw):
            if value in ("tcp", "http"):
                raise self.fail(f"{key}[{i}]", f"{value!r}: fwknop -P {value} needs a listening TCP "
                                "server, which gatekeeper does not run (README, SPA); use tcpraw")
        names = tuple(self._choice(v, f"{key}[{i}]", SPA_TRANSPORTS) for i, v in enumerate(raw))
        if not names or len(set(names)) != len(names):
            raise self.fail(key, "must name each transport once, at least one")
        return names

    def spa_commands(self, raw: Any, key: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """``{ "TEXT" = argv, ... }``: the exact texts ``fwknop --server-cmd`` may send."""
        if not isinstance(raw, dict):
            raise self.fail(key, 'must be a table of "command text" = ["/path/to/program", "arg", ...]')
        if len(raw) > MAX_SPA_COMMANDS:
            raise self.fail(key, f"{len(raw)} commands: at most {MAX_SPA_COMMANDS}")
        out = []
        for text, argv in raw.items():
            where = f"{key}.{text!r}"
            if not text or not text.isprintable() or len(text.encode()) > MAX_SPA_COMMAND:
                raise self.fail(where, f"the command text must be 1-{MAX_SPA_COMMAND} bytes of "
                                "printable text")
            command = self.command(argv, where)
            if not command[0].startswith("/"):
                raise self.fail(where, f"{command[0]!r}: name the program by its absolute path")
            out.append((text, command))
        return tuple(out)

    def _bool(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {value!r}")
        return value

    def _choice(self, value: Any, key: str, choices: tuple[str, ...]) -> str:
        text = self._str(value, key)
        if text not in choices:
            raise self.fail(key, f"{text!r}: use one of {', '.join(choices)}")
        return text

    def encrypted(self, raw: Any, key: str) -> EncryptedDoor:
        table = self._table(raw, key, {"key_file", "ports", "window"})
        for required in ("key_file", "ports"):
            if required not in table:
                raise self.fail(f"{key}.{required}", "is required")
        path = self._str(table["key_file"], f"{key}.key_file")
        secret = keyfiles.sequence_key(path, f"{key}.key_file", self.fail)
        ports = self._str(table["ports"], f"{key}.ports")
        m = re.fullmatch(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*", ports)
        if m is None:
            raise self.fail(f"{key}.ports", f"{ports!r}: expected FIRST-LAST, e.g. 745-1000")
        first, last = int(m.group(1)), int(m.group(2))
        if last - first != 255 or not 1 <= first <= 65535 - 255:
            raise self.fail(f"{key}.ports", f"{ports!r}: must span exactly 256 ports within "
                            "1-65535, e.g. 745-1000")
        window = self._number(table.get("window", DEFAULT_SPA_WINDOW), f"{key}.window", 0, 3600)
        return EncryptedDoor(path, secret, first, last, window)

    def one_time(self, path: str, key: str) -> OneTimeDoor:
        """knockd's format: a sequence a line, ``port[:proto]`` comma- or space-separated,
        ``#`` comments (a used line is commented out)."""
        text = keyfiles.one_time_text(path, key, self.fail)
        lines: list[tuple[int, tuple[Port, ...]]] = []
        used: set[Port] = set()
        for number, line in enumerate(text.splitlines()[:MAX_ONE_TIME_LINES], 1):
            if line.startswith(ONE_TIME_USED):
                try:
                    used.update(self.ports(line[len(ONE_TIME_USED):].split("#", 1)[0]
                                           .replace(",", " ").split(), key, sequence=True))
                except GatekeeperError:
                    pass  # a used line is never knocked again; its ports only route
                continue
            body = line.split("#", 1)[0].strip()
            if not body:
                continue
            steps = self.ports(body.replace(",", " ").split(), f"{key} ({path}:{number})",
                               sequence=True)
            lines.append((number, steps))
        keyfiles.check_writable(path, key, self.fail)
        return OneTimeDoor(path, tuple(lines), frozenset(used))

    def config(self, data: dict[str, Any]) -> Config:
        self._table(data, "", {"gatekeeper", "door", "metrics", "cluster"})
        settings = self.settings(data.get("gatekeeper", {}))
        raw_doors = data.get("door")
        if raw_doors is None or raw_doors == []:
            raise self.fail("door", "no [[door]] defined; a gatekeeper with no door only drops")
        doors = tuple(self.door(d, i) for i, d in enumerate(self._list(raw_doors, "door")))
        cross_check(settings, doors, self.fail)
        protected = frozenset(s.key for d in doors for s in d.opens)
        metrics = self.metrics(data.get("metrics", {}))
        cluster = self.cluster(data["cluster"]) if "cluster" in data else None
        for i, d in enumerate(doors):
            if cluster is not None and d.spa is not None and d.spa.nat_targets:
                log.warning("%s: door[%d] (%s): NAT access is not shared through [cluster]: only "
                            "the gateway that verifies the SPA packet DNATs for it", self.name, i, d.name)
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

