"""The supervisor's side of ``[cluster]``: every grant, wherever it was made, in this
gateway's kernel sets.

A thread owned by the supervisor (it outlives workers) subscribes to the grants channel
and writes each grant published by another gateway into the kernel sets (the ports it
granted, no others of the door), then hands it to the supervisor's grant book (log line,
commands, status). On every (re)connection it
subscribes first and then scans the grant keys with their remaining time (PTTL), so a
grant made while it was away is not missed. A store that stops answering (no reply to a
ping within :data:`DEAD_SECONDS`) is reconnected to, with a short pause between tries.
A message or grant key that does not parse (``store.parse_message``, ``Keys.parse_grant``)
is ignored and counted, the session kept; durations are clamped to the door's ``open_for``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from gatekeeper.cluster.store import Keys, ascii_int, connect, grant_seconds, parse_message
from gatekeeper.model import Config, Door

log = logging.getLogger("gatekeeper")

PING_SECONDS = 0.5
DEAD_SECONDS = 2.0
RETRY_SECONDS = 0.5
BAD_LOG_SECONDS = 60.0  # unreadable messages: one log line at most this often
# what the mirror tells the supervisor: ("grant", address, door, seconds, ["22:tcp", ...]: the
# ports granted) or ("revoke", address, door: every port of the door)
Note = tuple[Any, ...]


class Mirror:
    def __init__(self, config: Config, node: str, sets: Any, notify: Callable[[Note], None],
                 connect_timeout: float = 1.0, stats: Any = None) -> None:
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
        self.bad = 0  # messages and grant keys that did not parse: ignored
        self.stats = stats  # metrics.Stats: counts them for gatekeeper_cluster_bad_messages_total
        self._bad_logged = -BAD_LOG_SECONDS
        self._bad_unlogged = 0
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
        return {"store": self.cluster.where(), "up": self.up,
                "since": round(time.monotonic() - self.since, 1),
                "error": "" if self.up else self.error, "mirrored": self.mirrored,
                "resyncs": self.resyncs, "bad_messages": self.bad}

    # -- the thread ---------------------------------------------------------------------

    def _state(self, up: bool, error: str = "") -> None:
        if up == self.up:
            return
        self.up, self.since = up, time.monotonic()
        if up:
            log.warning("cluster: connected to the store %s; grants of every gateway are "
                        "mirrored here", self.cluster.where())
        else:
            self.error = error
            log.error("cluster: lost the store %s (%s); grants already made keep working, "
                      "new grants of other gateways are not mirrored until it returns",
                      self.cluster.where(), error)

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                self._session()
            except Exception as exc:
                text = self.cluster.redact(f"{type(exc).__name__}: {exc}")
                if first and not self.up:
                    self.error = text
                    log.error("cluster: cannot reach the store %s (%s); retrying",
                              self.cluster.where(), text)
                self._state(False, text)
            first = False
            self._stop.wait(RETRY_SECONDS)

    def _session(self) -> None:
        client = self._client = connect(self.cluster, self.timeout, name="gatekeeper-mirror")
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
                        self._on_message(msg["data"])
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
            ms = ascii_int(ttl)
            if parsed is None or ms is None or ms == -1:  # (-1: a key without expiry)
                self._bad("grant key", f"{key} {ttl}")
            elif ms > 0:  # (-2: gone since the scan)
                found.setdefault((parsed[0], parsed[1], ms), []).append(parsed[2])
        written = 0
        for (address, door_name, ms), ports in found.items():
            door = self.doors.get(door_name)
            time_left = None if door is None else grant_seconds(door, ms)
            if door is not None and time_left is not None:
                written += self._grant(address, door, time_left, ports)
        return written

    def _on_message(self, data: object) -> None:
        """One message of the grants channel: never raises (a bad one is counted)."""
        try:
            message = parse_message(data) if isinstance(data, str) else None
            if message is None:
                self._bad("message", data)
                return
            kind, node, address, door_name, ms, ports = message
            door = self.doors.get(door_name)
            if node == self.node or door is None:
                return  # made here (the worker wrote its own kernel set first), or not run here
            if kind == "g":
                self._grant(address, door, grant_seconds(door, ms) or 0.0, list(ports))
                return
            try:
                self.sets.remove(address, door)
            except Exception as exc:
                log.error("cluster: revoke door=%s address=%s: kernel set not updated (%s)",
                          door.name, address, exc)
            self.notify(("revoke", address, door.name))
        except Exception as exc:  # nothing a message says may end the session
            self._bad("message", f"{data!r}: {type(exc).__name__}: {exc}")

    def _bad(self, what: str, data: object) -> None:
        """Count what did not parse; log it, one line a minute at most."""
        self.bad += 1
        if self.stats is not None:
            self.stats.cluster_bad_messages += 1
        now = time.monotonic()
        if now - self._bad_logged < BAD_LOG_SECONDS:
            self._bad_unlogged += 1
            return
        more = f" ({self._bad_unlogged} more since the last line)" if self._bad_unlogged else ""
        self._bad_logged, self._bad_unlogged = now, 0
        log.error("cluster: ignored an unreadable %s from the store %s: %s%s", what,
                  self.cluster.where(), self.cluster.redact(repr(data)[:200]), more)

    def _grant(self, address: str, door: Door, time_left: float, ports: list[str]) -> int:
        """Write ``ports`` ("22:tcp", ...) of a door into the kernel sets for ``time_left``
        seconds (never more than its open_for), those alone (the door's other ports keep
        what they had); ports the door does not open here are left out."""
        wanted = set(ports)
        steps = tuple(s for s in door.opens if str(s) in wanted)
        if not steps or time_left <= 0:
            return 0
        try:
            self.sets.add(address, door, time_left, steps)
        except Exception as exc:
            log.error("cluster: grant door=%s address=%s: kernel set not updated (%s)",
                      door.name, address, exc)
            return 0
        self.mirrored += 1
        self.notify(("grant", address, door.name, time_left, [str(s) for s in steps]))
        return 1
