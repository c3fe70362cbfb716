"""The shared store: connecting to Redis/Valkey, its keys, its scripts.

Keys (``P`` = ``[cluster] prefix``; the address in braces is a Redis Cluster hash tag, so
every key of one source lives on one shard)::

    P:{203.0.113.10}:p:<door>.open.<digest>   knock progress, PX = sequence_timeout
    P:{203.0.113.10}:g:<door>:<port>          a grant of one port ("22:tcp"), PX = open_for
    P:r:<door>:<digest>                       an SPA/encrypted-sequence replay entry
    P:grants                                  channel: "g|node|address|door|ms|ports" (ports
                                              "22:tcp,80:tcp", the ports granted now),
                                              "r|node|address|door" (every port of the door)

A grant is a key per port, each with its own expiry, as the engine holds it: an SPA
packet asking for 80 while 22 is open sets 80's key and leaves 22's alone; a plain
knock's completion sets one for every port of the door's ``opens``, a close sequence
deletes them all. Door names never contain ``:`` (config), so a key parses back.

Whatever the store says is read strictly (:func:`ascii_int`, :func:`address`,
:func:`parse_message`, :meth:`Keys.parse_grant`): a number is ASCII digits, an address is
one, a duration is at most the door's ``open_for`` (:func:`grant_seconds`). What does not parse
is no grant; the caller counts it (``gatekeeper_cluster_bad_messages_total``).
"""

from __future__ import annotations

import ipaddress
from importlib import resources
from typing import Any

from gatekeeper.errors import GatekeeperError
from gatekeeper.model import Cluster, Door

MAX_DIGITS = 15  # a number from the store: longer is no duration any door has
# a message of the grants channel: ("g", node, address, door, ms, ports) or
# ("r", node, address, door, 0, ())
Message = tuple[str, str, str, str, int, tuple[str, ...]]


def script(name: str) -> str:
    return resources.files("gatekeeper.cluster").joinpath(name).read_text(encoding="utf-8")


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.channel = f"{prefix}:grants"
        self.grant_pattern = f"{prefix}:{{*}}:g:*"

    def progress(self, address: str, ident: str) -> str:
        return f"{self.prefix}:{{{address}}}:p:{ident}"

    def grant(self, address: str, door: str, port: str) -> str:
        """The grant key of one port (``port`` as a door's ``opens`` spells it: "22:tcp")."""
        return f"{self.prefix}:{{{address}}}:g:{door}:{port}"

    def replay(self, door: str, digest: str) -> str:
        return f"{self.prefix}:r:{door}:{digest}"

    def parse_grant(self, key: str) -> tuple[str, str, str] | None:
        """(address, door, port) of a grant key (the address canonical), or None if it is
        not one."""
        head = f"{self.prefix}:{{"
        if not key.startswith(head) or not key.isascii():
            return None
        text, sep, rest = key[len(head):].partition("}:g:")
        door, colon, port = rest.partition(":")
        found = address(text) if sep and door and colon and port else None
        return (found, door, port) if found is not None else None


def ascii_int(value: object) -> int | None:
    """An integer the store sent: an int (as RESP integers arrive), or ASCII digits with
    an optional leading minus; None for anything else ("\u00b2".isdigit() is true and
    int() refuses it, int() reads Arabic-Indic digits: neither is a number here)."""
    if type(value) is int:
        return value
    if isinstance(value, str):
        digits = value[1:] if value.startswith("-") else value
        if 0 < len(digits) <= MAX_DIGITS and digits.isascii() and digits.isdigit():
            return int(value)
    return None


def address(text: str) -> str | None:
    """The canonical form of an address the store names, or None (a scoped IPv6
    address, ``fe80::1%eth0``, is none: no kernel set takes it)."""
    if not text.isascii() or "%" in text:
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def grant_seconds(door: Door, ms: int) -> float | None:
    """A grant's time (ms, as the store says) in seconds, never more than the door's
    ``open_for``; None for no time at all (0, expired, or no expiry: -1)."""
    return min(ms / 1000, float(door.open_for)) if ms > 0 else None


def parse_message(data: str) -> Message | None:
    """A message of the grants channel, or None if it is none a gateway sends."""
    parts = data.split("|")
    if parts[0] == "g" and len(parts) == 6:
        ms = ascii_int(parts[4])
        if ms is None or ms <= 0 or not parts[5].isascii():
            return None
        ports = tuple(parts[5].split(","))
    elif parts[0] == "r" and len(parts) == 4:
        ms, ports = 0, ()
    else:
        return None
    found = address(parts[2])
    if found is None or not parts[1] or not parts[3] or not parts[3].isascii():
        return None
    return parts[0], parts[1], found, parts[3], ms, ports


def require_client() -> None:
    """[cluster] needs the redis client library (the optional extra ``cluster``)."""
    try:
        import redis  # noqa: F401
    except ImportError:
        raise GatekeeperError("[cluster] needs the redis client library: pip install "
                              "'gatekeeper[cluster]' (or remove [cluster])") from None


def connect(cluster: Cluster, timeout: float, name: str = "") -> Any:
    """A redis-py client that fails fast: ``timeout`` seconds to connect and to answer, no
    retries (the caller decides what a failure means). Imported here, lazily. Bytes
    that are no UTF-8 arrive replaced (U+FFFD), to be refused by the strict parsers
    here, never raised while reading. ``name``: its connections' name in the store's
    ``CLIENT LIST``."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    options: dict[str, Any] = {
        "socket_timeout": timeout, "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0), "retry_on_timeout": False, "decode_responses": True,
        "encoding_errors": "replace", "client_name": name or None,
    }
    if cluster.redis:
        return redis.Redis.from_url(cluster.redis, **options)
    from redis.sentinel import Sentinel

    sentinel = Sentinel(list(cluster.sentinels), socket_timeout=timeout,  # type: ignore[no-untyped-call]
                        socket_connect_timeout=timeout)
    return sentinel.master_for(cluster.service, password=cluster.password or None,  # type: ignore[no-untyped-call]
                               **options)
