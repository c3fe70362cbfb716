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
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from gatekeeper.config import Cluster
from gatekeeper.errors import GatekeeperError


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
        """(address, door, port) of a grant key, or None if it is not one."""
        head = f"{self.prefix}:{{"
        if not key.startswith(head):
            return None
        address, sep, rest = key[len(head):].partition("}:g:")
        door, colon, port = rest.partition(":")
        return (address, door, port) if sep and address and door and colon and port else None


def where(cluster: Cluster) -> str:
    """The store, for log lines (never a password)."""
    if cluster.redis:
        return cluster.redis.split("@")[-1].split("://")[-1]
    return f"sentinel {cluster.service} via {','.join(f'{h}:{p}' for h, p in cluster.sentinels)}"


def require_client() -> None:
    """[cluster] needs the redis client library (the optional extra ``cluster``)."""
    try:
        import redis  # noqa: F401
    except ImportError:
        raise GatekeeperError("[cluster] needs the redis client library: pip install "
                              "'gatekeeper[cluster]' (or remove [cluster])") from None


def connect(cluster: Cluster, timeout: float) -> Any:
    """A redis-py client that fails fast: ``timeout`` seconds to connect and to answer, no
    retries (the caller decides what a failure means). Imported here, lazily."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    options: dict[str, Any] = {
        "socket_timeout": timeout, "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0), "retry_on_timeout": False, "decode_responses": True,
    }
    if cluster.redis:
        return redis.Redis.from_url(cluster.redis, **options)
    from redis.sentinel import Sentinel

    sentinel = Sentinel(list(cluster.sentinels), socket_timeout=timeout,  # type: ignore[no-untyped-call]
                        socket_connect_timeout=timeout)
    return sentinel.master_for(cluster.service, password=cluster.password or None,  # type: ignore[no-untyped-call]
                               **options)
