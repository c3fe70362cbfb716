"""The supervisor's side of ``[cluster]``: every grant, wherever it was made, in this
gateway's kernel sets.

A thread owned by the supervisor (it outlives workers) subscribes to the grants channel
and writes each grant published by another gateway into the kernel sets (the ports it
granted, no others of the door), then hands it to the supervisor's grant book (log line,
commands, status). On every (re)connection it
subscribes first and then scans the grant keys with their remaining time (PTTL), so a
grant made while it was away is not missed. A store that stops answering (no reply to a
ping within :data:`DEAD_SECONDS`) is reconnected to, with a short pause between tries.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from gatekeeper.cluster.store import Keys, connect, where
from gatekeeper.config import Config

log = logging.getLogger("gatekeeper")

PING_SECONDS = 0.5
DEAD_SECONDS = 2.0
RETRY_SECONDS = 0.5
# what the mirror tells the supervisor: ("grant", address, door, seconds, ["22:tcp", ...]: the
# ports granted) or ("revoke", address, door: every port of the door)
Note = tuple[Any, ...]


class Mirror:
    def __init__(self, config: Config, node: str, sets: Any, notify: Callable[[Note], None],
                 connect_timeout: float = 1.0) -> None:
        assert config.cluster is not None
        self.cluster = config.cluster
        self.doors = {d.name: d for d in config.doors}
        self.keys = Keys(self.cluster.prefix)
        self.node = node
        self.sets = sets
        self.notify = notify
        self.timeout = max(connect_timeout, self.cluster.timeout_ms / 1000)
        self.up = False
        self.since = time.monotonic()
        self.error = "not connected yet"
        self.mirrored = 0
        self.resyncs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-mirror", daemon=True)
        self._client: Any = None

    def set_config(self, config: Config) -> None:
        self.doors = {d.name: d for d in config.doors}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        client = self._client
        if client is not None:
            try:
                client.close()
            except Exception:
                pass
        self._thread.join(5.0)

    def status(self) -> dict[str, Any]:
        return {"store": where(self.cluster), "up": self.up,
                "since": round(time.monotonic() - self.since, 1),
                "error": "" if self.up else self.error, "mirrored": self.mirrored,
                "resyncs": self.resyncs}

    # -- the thread ---------------------------------------------------------------------

    def _state(self, up: bool, error: str = "") -> None:
        if up == self.up:
            return
        self.up, self.since = up, time.monotonic()
        if up:
            log.warning("cluster: connected to the store %s; grants of every gateway are "
                        "mirrored here", where(self.cluster))
        else:
            self.error = error
            log.error("cluster: lost the store %s (%s); grants already made keep working, "
                      "new grants of other gateways are not mirrored until it returns",
                      where(self.cluster), error)

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                self._session()
            except Exception as exc:
                text = f"{type(exc).__name__}: {exc}"
                if first and not self.up:
                    self.error = text
                    log.error("cluster: cannot reach the store %s (%s); retrying",
                              where(self.cluster), text)
                self._state(False, text)
            first = False
            self._stop.wait(RETRY_SECONDS)

    def _session(self) -> None:
        client = self._client = connect(self.cluster, self.timeout)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.keys.channel)
            count = self._resync(client)
            self.resyncs += 1
            self._state(True)
            log.info("cluster: resynced %d grant(s) from the store", count)
            heard = pinged = time.monotonic()
            while not self._stop.is_set():
                msg = pubsub.get_message(timeout=PING_SECONDS)
                now = time.monotonic()
                if msg is not None:
                    heard = now
                    if msg.get("type") == "message":
                        self._on_message(str(msg["data"]))
                if now - pinged >= PING_SECONDS:
                    pubsub.ping()
                    pinged = now
                if now - heard > DEAD_SECONDS:
                    raise TimeoutError(f"no answer to a ping for {DEAD_SECONDS:g} s")
        finally:
            try:
                pubsub.close()
                client.close()
            except Exception:
                pass

    def _resync(self, client: Any) -> int:
        count = 0
        keys: list[str] = []
        for key in client.scan_iter(match=self.keys.grant_pattern, count=1000):
            keys.append(key)
            if len(keys) >= 1000:
                count += self._adopt(client, keys)
                keys = []
        if keys:
            count += self._adopt(client, keys)
        return count

    def _adopt(self, client: Any, keys: list[str]) -> int:
        """Grant what these keys hold (a port each): the ports of one address and door
        with the same time left together. Returns how many grants were written."""
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.pttl(key)
        found: dict[tuple[str, str, int], list[str]] = {}
        for key, ttl in zip(keys, pipe.execute(), strict=True):
            parsed = self.keys.parse_grant(key)
            if parsed is not None and int(ttl) > 0:
                found.setdefault((parsed[0], parsed[1], int(ttl)), []).append(parsed[2])
        return sum(self._grant(address, door, ms / 1000, ports)
                   for (address, door, ms), ports in found.items())

    def _on_message(self, data: str) -> None:
        parts = data.split("|")
        if len(parts) < 4 or parts[1] == self.node:
            return  # (made here: the worker wrote its own kernel set first)
        try:
            parts[2] = str(ipaddress.ip_address(parts[2]))
        except ValueError:
            log.error("cluster: unreadable message on %s: %r", self.keys.channel, data[:200])
            return
        if parts[0] == "g" and len(parts) == 6 and parts[4].isdigit():
            self._grant(parts[2], parts[3], int(parts[4]) / 1000, parts[5].split(","))
        elif parts[0] == "r" and len(parts) == 4:
            door = self.doors.get(parts[3])
            if door is not None:
                try:
                    self.sets.remove(parts[2], door)
                except Exception as exc:
                    log.error("cluster: revoke door=%s address=%s: kernel set not updated (%s)",
                              door.name, parts[2], exc)
                self.notify(("revoke", parts[2], door.name))

    def _grant(self, address: str, door_name: str, seconds: float, ports: list[str]) -> int:
        """Write ``ports`` ("22:tcp", ...) of a door into the kernel sets, those alone (the
        door's other ports keep what they had); ports the door does not open here are
        left out."""
        door = self.doors.get(door_name)
        if door is None:
            return 0  # a door this gateway does not run
        wanted = set(ports)
        steps = tuple(s for s in door.opens if str(s) in wanted)
        if not steps:
            return 0
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            log.error("cluster: a grant key for %r is no address: ignored", address[:100])
            return 0
        try:
            self.sets.add(address, door, seconds, steps)
        except Exception as exc:
            log.error("cluster: grant door=%s address=%s: kernel set not updated (%s)",
                      door_name, address, exc)
            return 0
        self.mirrored += 1
        self.notify(("grant", address, door_name, seconds, [str(s) for s in steps]))
        return 1
