"""The special doors: SPA, encrypted port sequences and one-time sequences.

Pure like the engine (no socket, file, clock or logging): packet facts, a monotonic
``now`` and a wall-clock ``wall`` (Unix seconds, for the timestamps inside SPA packets
and encrypted sequences) in; a decision out. The worker hands a packet here only when
its ``proto << 16 | port`` is in :attr:`SpecialDoors.keys` (and only when the config has
special doors at all), so the plain-knock hot path never pays for any of this.

Grants go through :meth:`Engine.grant`, so they share the engine's grant bookkeeping
(expiry, the in-queue accept path, the scanner lockout). What is granted:

* an SPA packet: exactly the ports it asks for (``-A tcp/22,udp/53``), each of which the
  door must open (else nothing is granted); a type 3 message (``fwknop -f SECONDS``)
  may shorten the door's ``open_for``, never lengthen it;
* an encrypted sequence: the one port sealed in it (the door must open it); its
  ``open_for`` field, when not 0, may shorten the door's ``open_for`` likewise;
* a one-time sequence: all of the door's ``opens``, as a plain knock sequence does.

State kept here, all bounded:

* a :class:`ReplayCache` per SPA door and per encrypted-sequence door (only messages that
  authenticated and are fresh are ever offered to it);
* per encrypted-sequence door, the in-range ports each source has knocked so far (at
  most ``max_sources`` sources, the oldest dropped first; a collection older than the
  door's ``sequence_timeout`` starts afresh);
* per one-time door, the progress of each source through the door's current sequence
  (the first line not yet used) and the lines used since the config was read.

A message new to a replay cache is an effect, not a call: it is queued in
:attr:`SpecialDoors.seen` (a :class:`ReplaySeen` each, which the worker drains after each
packet and appends to the door's journal). With ``[cluster]`` (``shared_replay``),
whether another gateway saw it first is a question: :meth:`SpecialDoors.handle` returns
a :class:`ReplayQuery`, the worker asks the shared store, and :meth:`SpecialDoors.answer`
turns the store's answer into the decision (as the shared knock does, ``engine/shared.py``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from gatekeeper.engine.engine import Engine, Granted, Knocked, Outcome, Reason, Verdict
from gatekeeper.engine.special_events import (
    CommandAsked,
    GpgQuery,
    NatGranted,
    ReplayQuery,
    ReplaySeen,
    SequenceUsed,
    SpaRefused,
    SpecialDecision,
    SpecialEvent,
)
from gatekeeper.model import PROTO_NAMES, PROTO_NUMBERS, TCP, UDP, Config, Door, Port, port_key
from gatekeeper.spa import fwknop
from gatekeeper.spa import gpg as gpgcodec
from gatekeeper.spa import sequence as seqcodec
from gatekeeper.spa.cipher import Suite
from gatekeeper.spa.replay import Recorded, ReplayCache
from gatekeeper.spa.transports import ANY_KEYS, NO_PORT, door_keys, echo_key, spa_shaped

_DROP = Verdict.DROP
_R_WRONG, _R_KNOCK, _R_DUPLICATE = Reason.WRONG, Reason.KNOCK, Reason.DUPLICATE
_R_COMPLETED, _R_SCANNER, _R_IGNORED = Reason.COMPLETED, Reason.SCANNER, Reason.IGNORED

# The stage labels of gatekeeper_spa_total: an SPA door counts fwknop.Stage names, an
# encrypted-sequence door SequenceStage names plus ACCESS and SOURCE (checked here).
SPA_STAGES = tuple(s.name.lower() for s in fwknop.Stage)
SEQUENCE_STAGES = (*(s.name.lower() for s in seqcodec.SequenceStage), "access", "source")
# The stages at which verify() may have tried the other HMAC types (TYPE_PROBES)
_PROBED = frozenset({fwknop.Stage.SIZE, fwknop.Stage.HMAC, fwknop.Stage.HMAC_TYPE})
# Packets a second a door checks for another HMAC type (up to 4 more HMACs each, to count
# hmac_type apart from a wrong key); over it, a flood of junk costs one HMAC a packet
# and a packet of another type counts as hmac
TYPE_PROBES = 64


def shared_admits(door: Door, fresh: bool | None) -> bool:
    """Whether a message new here is admitted given the shared store's answer: ``fresh``,
    or with no answer (None) the door's ``cluster_fallback`` ("local" trusts this
    gateway's cache, "closed" admits nothing)."""
    return door.cluster_fallback == "local" if fresh is None else fresh


def has_special(config: Config) -> bool:
    return any(d.special for d in config.doors)


class SpecialDoors:
    """Every special door of one config, and the state they keep."""

    def __init__(self, config: Config, engine: Engine,
                 counts: dict[tuple[str, str], int] | None = None) -> None:
        self.config = config
        self.engine = engine
        self.max_sources = config.settings.max_sources
        # (door, stage label) -> packets; the worker snapshots it (and keeps it over reloads)
        self.counts: dict[tuple[str, str], int] = {} if counts is None else counts
        self.spa_doors: dict[int, tuple[int, ...]] = {}  # key -> its SPA doors (spa.transports)
        self._strict: set[int] = set()  # the doors' spa_port over udp: every packet is SPA
        self._any: tuple[int, ...] = ()  # the udp-any doors: keys ANY_KEYS, by range
        self.replay: dict[str, ReplayCache] = {}  # by door name
        self.seen: list[ReplaySeen] = []  # new replay entries, for the worker's journals
        self.shared_replay = False  # [cluster]: new replay entries are a ReplayQuery first
        self._allowed: dict[int, frozenset[tuple[str, int]]] = {}
        self._suites: dict[int, Suite] = {}
        self._commands: dict[int, frozenset[str]] = {}  # door -> its spa_commands texts
        self._probes: dict[int, tuple[int, int]] = {}  # door -> (second, HMAC failures in it)
        self._gpg: dict[int, tuple[gpgcodec.Budget, gpgcodec.Policy]] = {}  # GnuPG doors
        self._open_keys: dict[int, frozenset[tuple[int, int]]] = {}
        self._encrypted: dict[int, int] = {}  # key -> encrypted door index
        self._collect: dict[int, dict[bytes, tuple[float, list[int]]]] = {}
        self._one_time: dict[int, int] = {}  # key -> one-time door index
        self._lines: dict[int, list[tuple[int, tuple[int, ...], str]]] = {}
        self._used: set[tuple[str, int]] = set()  # (path, line) used since the file was read
        self._progress: dict[int, dict[bytes, tuple[int, int, float]]] = {}
        for i, door in enumerate(config.doors):
            if door.spa is not None:
                strict, loose = door_keys(door.spa)
                self._strict.update(strict)
                for k in (*strict, *loose):
                    self.spa_doors[k] = (*self.spa_doors.get(k, ()), i)
                if "udp-any" in door.spa.transports:
                    self._any = (*self._any, i)
                self.replay[door.name] = ReplayCache()
                self._allowed[i] = frozenset((PROTO_NAMES[s.proto], s.port) for s in door.opens)
                spa = door.spa
                if (g := spa.gpg) is not None:
                    self._gpg[i] = (gpgcodec.Budget(g.budget, max(g.budget, g.timeout)), gpgcodec.Policy(
                        g.recipient, g.signers, g.fingerprints, g.require_signature))
                self._commands[i] = frozenset(text for text, _ in spa.commands)
                self._suites[i] = Suite(spa.mode, spa.hmac_digest if spa.hmac else None,
                                               frozenset(spa.digests))
            elif door.encrypted is not None:
                e = door.encrypted
                for proto in (TCP, UDP):
                    for port in range(e.first, e.last + 1):
                        self._encrypted[port_key(proto, port)] = i
                self._collect[i] = {}
                self.replay[door.name] = ReplayCache()
                self._open_keys[i] = frozenset((s.proto, s.port) for s in door.opens)
            elif door.one_time is not None:
                lines = []
                for number, steps in door.one_time.lines:
                    keys = tuple(s.key for s in steps)
                    lines.append((number, keys, ",".join(map(str, steps))))
                    for k in keys:
                        self._one_time[k] = i
                self._lines[i] = lines
                self._progress[i] = {}
        for k, doors in self.spa_doors.items():  # another door's key among udp-any's
            if self._any and k in ANY_KEYS:
                self.spa_doors[k] = tuple(sorted({*doors, *self._any}))  # in config order
        # Rijndael doors first; the first GnuPG door a packet passes size and HMAC for decrypts it
        self.spa_doors = {k: tuple(sorted(d, key=self._gpg.__contains__)) for k, d in self.spa_doors.items()}
        self._any = tuple(sorted(self._any, key=self._gpg.__contains__))
        self.spa_keys = frozenset(self.spa_doors) | frozenset(ANY_KEYS if self._any else ())
        others = frozenset(self._encrypted) | frozenset(self._one_time)
        self.keys = self.spa_keys | others if others else self.spa_keys

    def adopt(self, old: SpecialDoors) -> None:
        """Carry state over a reload: replay caches of doors that still exist (a replay
        must not work again because the config was reloaded) and one-time lines used."""
        for name, cache in old.replay.items():
            if name in self.replay:
                self.replay[name] = cache
        self._used |= old._used

    # -- the entry point ----------------------------------------------------------------

    def handle(self, src: bytes, dst: bytes, proto: int, port: int, flags: int, payload: bytes,
               now: float, wall: float) -> SpecialDecision | ReplayQuery | GpgQuery | None:
        """The decision for a packet to a special key, or None: not ours, ask the engine;
        with ``shared_replay``, a :class:`ReplayQuery` for a message new here; for a GnuPG
        packet, a :class:`GpgQuery` (GnuPG's work, for the worker to do)."""
        key = proto << 16 | port
        if key in self.spa_keys:
            spa = echo_key(proto, payload) if key == NO_PORT else key
            doors = self.spa_doors.get(spa)
            if doors is None and self._any and spa in ANY_KEYS:
                doors = self._any
            strict = spa in self._strict  # else what is not SPA-shaped is not SPA
            if doors is not None and (strict or spa_shaped(payload)):
                decision = self._spa(src, doors, payload, now, wall, strict)
                if decision is not None:
                    return decision
        index = self._encrypted.get(key)
        if index is not None:
            return self._encrypted_knock(index, src, proto, port, flags, now, wall)
        index = self._one_time.get(key)
        if index is not None:
            return self._one_time_knock(index, src, key, proto, flags, now)
        return None

    def _count(self, door: str, stage: str) -> None:
        k = (door, stage)
        self.counts[k] = self.counts.get(k, 0) + 1

    def _refuse(self, door: str, src: bytes, stage: str) -> SpecialDecision:
        """Count a refusal at ``stage`` and drop, saying so."""
        self._count(door, stage)
        return (_DROP, _R_WRONG, (SpaRefused(door, src, stage),))

    def _grant(self, address: bytes, index: int, now: float,
               extra: Iterable[SpecialEvent] = (), steps: Iterable[Port] | None = None,
               open_for: float = 0) -> SpecialDecision:
        door = self.config.doors[index]
        done = self.engine.grant(address, index, now, steps, open_for)
        if done.__class__ is Granted:
            return (_DROP, _R_COMPLETED, (Knocked(door.name, Outcome.COMPLETED), done, *extra))
        return (_DROP, _R_SCANNER, (Knocked(door.name, Outcome.COMPLETED), done, *extra))

    # -- SPA ----------------------------------------------------------------------------

    def _spa(self, src: bytes, doors: tuple[int, ...], payload: bytes, now: float,
             wall: float, strict: bool = True) -> SpecialDecision | ReplayQuery | GpgQuery | None:
        """None: on a loose key (spa/transports.py), no door found the packet SPA-sized."""
        second = int(now)
        stage = "size"  # (every SPA port has a door)
        for index in doors:
            door: Door = self.config.doors[index]
            spa = door.spa
            assert spa is not None
            at, probed = self._probes.get(index, (second, 0))
            if at != second:
                probed = 0
            if (g := spa.gpg) is not None:  # HMAC (if any), then GnuPG's work for the worker
                sealed = gpgcodec.unwrap(payload, g.hmac_key, spa.hmac_digest if g.hmac_key else None,
                                         probed < TYPE_PROBES)
                if sealed in _PROBED:
                    self._probes[index] = (second, probed + 1)
                if isinstance(sealed, gpgcodec.Sealed):
                    if not self._gpg[index][0].take(now):
                        return self._refuse(door.name, src, "gpg_busy")
                    return GpgQuery(door, index, src, sealed, now, wall)
                if sealed is fwknop.Stage.DECRYPT:
                    return self._refuse(door.name, src, "decrypt")
                if strict or sealed is not fwknop.Stage.SIZE:  # loose keys: see below
                    stage = sealed.name.lower()
                    self._count(door.name, stage)
                continue
            result = fwknop.verify(payload, spa.keys, wall, replay=self.replay[door.name],
                                   allowed=self._allowed[index], source=src,
                                   other_source=spa.other_source, window=spa.window,
                                   suite=self._suites[index], tell_types=probed < TYPE_PROBES,
                                   commands=self._commands[index], nat=spa.nat,
                                   force_nat=spa.force_nat)
            if result.stage in _PROBED:
                self._probes[index] = (second, probed + 1)
            if result.stage is fwknop.Stage.HMAC or result.stage is fwknop.Stage.SIZE:
                if strict or result.stage is fwknop.Stage.HMAC:
                    stage = result.stage.name.lower()
                    self._count(door.name, stage)
                continue  # not this door's key: maybe the next door's
            return self._seen(index, src, result, now) or self._spa_done(index, src, result, now)
        if not strict and stage == "size":
            return None
        names = ",".join(self.config.doors[i].name for i in doors)
        return (_DROP, _R_WRONG, (SpaRefused(names, src, stage),))

    def _spa_done(self, index: int, src: bytes, result: fwknop.SpaResult,
                  now: float) -> SpecialDecision:
        """The decision for the result of the door whose key made the packet."""
        if not result.ok:
            return self._refuse(self.config.doors[index].name, src, result.stage.name.lower())
        self._count(self.config.doors[index].name, result.stage.name.lower())
        message = result.message
        if result.ok and result.grant is not None and message is not None:
            if message.command is not None:  # verify() checked the door allows it
                door = self.config.doors[index].name
                return (_DROP, _R_COMPLETED, (Knocked(door, Outcome.COMPLETED),
                                              CommandAsked(door, result.grant, message.command)))
            # verify() checked every requested port is one the door opens
            steps = [Port(PROTO_NUMBERS[name], port) for name, port in message.access]
            if result.nat is not None:
                return self._nat_grant(index, result.grant, steps[0], result.nat, now,
                                       message.client_timeout or 0)
            return self._grant(ipaddress.ip_address(result.grant).packed, index, now,
                               steps=steps, open_for=message.client_timeout or 0)
        return (_DROP, _R_WRONG, ())  # this door's key made it: no other door's will

    def _nat_grant(self, index: int, address: str, step: Port, target: tuple[str, int],
                   now: float, open_for: int) -> SpecialDecision:
        """A NAT access grant: checked against the lockouts as any grant, kept out of the
        engine's table (a queued packet to the gateway port must not reach the gateway)."""
        door = self.config.doors[index]
        completed = Knocked(door.name, Outcome.COMPLETED)
        if self.engine.locked_out(ipaddress.ip_address(address).packed, now):
            return (_DROP, _R_SCANNER, (completed, Knocked(door.name, Outcome.LOCKED)))
        seconds = min(open_for, door.open_for) if open_for > 0 else door.open_for
        granted = Granted(door, address, now + seconds, False, (step,))
        return (_DROP, _R_COMPLETED, (completed, NatGranted(granted, *target)))
    def gpg_answer(self, query: GpgQuery, run: gpgcodec.Decrypted,
                   seconds: float) -> SpecialDecision | ReplayQuery:
        """The decision for a :class:`GpgQuery` given GnuPG's ``run``, which took ``seconds``
        (taken out of the door's budget): its plaintext is checked as a Rijndael one is."""
        index, door = query.index, query.door
        budget, policy = self._gpg[index]
        budget.spend(seconds)
        plaintext = gpgcodec.judge(run, policy)
        if isinstance(plaintext, fwknop.Stage):
            return self._refuse(door.name, query.src, plaintext.name.lower())
        spa = door.spa
        assert spa is not None
        result = fwknop.check_plaintext(
            plaintext, fwknop.replay_key(b"gpg\0" + plaintext), query.wall,
            replay=self.replay[door.name], allowed=self._allowed[index], source=query.src,
            other_source=spa.other_source, window=spa.window, digests=spa.digests,
            commands=self._commands[index], nat=spa.nat, force_nat=spa.force_nat)
        return self._seen(index, query.src, result, query.now) or self._spa_done(
            index, query.src, result, query.now)

    # -- replay caches: what they saw ---------------------------------------------------

    def _seen(self, index: int, src: bytes, result: fwknop.SpaResult | seqcodec.SequenceResult,
              now: float) -> ReplayQuery | None:
        """A message new to the door's replay cache: queued for the journal, or (shared
        replay) the question to ask the store first."""
        recorded: Recorded | None = result.recorded
        if recorded is None:
            return None
        door = self.config.doors[index]
        if self.shared_replay:
            return ReplayQuery(door, recorded.key, recorded.ttl, index, src, result, now)
        self.seen.append(ReplaySeen(door.name, recorded.key, recorded.expires))
        return None

    def answer(self, query: ReplayQuery, fresh: bool | None) -> SpecialDecision:
        """The decision for a :class:`ReplayQuery` given the store's answer: ``fresh``
        True (no gateway saw it), False (one did: a replay here too), None (the store did
        not answer: a door with ``cluster_fallback = "local"`` trusts its own cache, a
        "closed" one admits nothing)."""
        result = query.result
        if not shared_admits(query.door, fresh):
            return self._refuse(query.door.name, query.src, "replay")
        assert result.recorded is not None
        self.seen.append(ReplaySeen(query.door.name, query.key, result.recorded.expires))
        if isinstance(result, fwknop.SpaResult):
            return self._spa_done(query.index, query.src, result, query.now)
        return self._sequence_done(query.index, query.src, result, query.now)

    # -- encrypted port sequences -------------------------------------------------------

    def _encrypted_knock(self, index: int, src: bytes, proto: int, port: int, flags: int,
                         now: float, wall: float) -> SpecialDecision | ReplayQuery:
        door = self.config.doors[index]
        if proto == TCP and not door.tcp_flags.matches(flags):
            return (_DROP, _R_IGNORED, ())
        table = self._collect[index]
        entry = table.get(src)
        if entry is not None and now - entry[0] > door.sequence_timeout:
            del table[src]
            entry = None
        if entry is None:
            if len(table) >= self.max_sources:
                self._evict(table, now, door.sequence_timeout)
            table[src] = (now, [port])
            return (_DROP, _R_KNOCK, ())
        ports = entry[1]
        if ports[-1] == port:  # the encoding never repeats a port: a retransmit
            return (_DROP, _R_DUPLICATE, ())
        ports.append(port)
        needed = seqcodec.KNOCKS_V4 if len(src) == 4 else seqcodec.KNOCKS_V6
        if len(ports) < needed:
            return (_DROP, _R_KNOCK, ())
        del table[src]
        e = door.encrypted
        assert e is not None
        result = seqcodec.decode(ports, e.key, wall, e.window, replay=self.replay[door.name],
                                 port_range=(e.first, e.last))
        return self._seen(index, src, result, now) or self._sequence_done(index, src, result, now)

    def _sequence_done(self, index: int, src: bytes, result: seqcodec.SequenceResult,
                       now: float) -> SpecialDecision:
        door = self.config.doors[index]
        grant = result.grant
        if not result.ok or grant is None:
            return self._refuse(door.name, src, result.stage.name.lower())
        if (grant.proto, grant.port) not in self._open_keys[index]:
            return self._refuse(door.name, src, "access")
        try:
            same = ipaddress.ip_address(grant.address) == ipaddress.ip_address(src)
        except ValueError:
            same = False
        if not same:
            return self._refuse(door.name, src, "source")
        self._count(door.name, "ok")
        return self._grant(src, index, now, steps=(Port(grant.proto, grant.port),),
                           open_for=grant.open_for)

    def _evict(self, table: dict[bytes, Any], now: float, timeout: float) -> None:
        """The collector is full: drop the expired, else the oldest 1/64."""
        stale = [s for s, e in table.items() if now - e[0] > timeout]
        if not stale:
            stale = list(table)[: max(1, self.max_sources // 64)]
        for s in stale:
            del table[s]

    # -- one-time sequences -------------------------------------------------------------

    def current_line(self, index: int) -> tuple[int, tuple[int, ...], str] | None:
        """The door's sequence to knock now: its first line not used (knockd's way)."""
        door = self.config.doors[index]
        assert door.one_time is not None
        path = door.one_time.path
        for line in self._lines[index]:
            if (path, line[0]) not in self._used:
                return line
        return None

    def _one_time_knock(self, index: int, src: bytes, key: int, proto: int, flags: int,
                        now: float) -> SpecialDecision:
        door = self.config.doors[index]
        if proto == TCP and not door.tcp_flags.matches(flags):
            return (_DROP, _R_IGNORED, ())
        current = self.current_line(index)
        table = self._progress[index]
        if current is None:
            table.pop(src, None)
            return (_DROP, _R_WRONG, ())
        number, keys, text = current
        entry = table.get(src)
        progress = 0
        if entry is not None and entry[0] == number and now - entry[2] <= door.sequence_timeout:
            progress = entry[1]
        started = entry[2] if entry is not None and progress else now
        name = door.name
        if key == keys[progress]:
            progress += 1
            if progress == len(keys):
                table.pop(src, None)
                assert door.one_time is not None
                self._used.add((door.one_time.path, number))
                return self._grant(src, index, now,
                                   (SequenceUsed(name, door.one_time.path, number, text),))
            if progress == 1:
                started = now
            self._store(table, src, (number, progress, started), now, door.sequence_timeout)
            return (_DROP, _R_KNOCK, (Knocked(name, Outcome.ADVANCED),))
        if progress and key == keys[progress - 1]:
            return (_DROP, _R_DUPLICATE, (Knocked(name, Outcome.DUPLICATE),))
        events: tuple[SpecialEvent, ...] = ()
        if progress:
            events = (Knocked(name, Outcome.RESET),)
        if key == keys[0]:
            self._store(table, src, (number, 1, now), now, door.sequence_timeout)
            return (_DROP, _R_KNOCK, (*events, Knocked(name, Outcome.ADVANCED)))
        table.pop(src, None)
        return (_DROP, _R_WRONG, events)

    def _store(self, table: dict[bytes, tuple[int, int, float]], src: bytes,
               entry: tuple[int, int, float], now: float, timeout: float) -> None:
        if src not in table and len(table) >= self.max_sources:
            self._evict_progress(table, now, timeout)
        table[src] = entry

    def _evict_progress(self, table: dict[bytes, tuple[int, int, float]], now: float,
                        timeout: float) -> None:
        stale = [s for s, e in table.items() if now - e[2] > timeout]
        if not stale:
            stale = list(table)[: max(1, self.max_sources // 64)]
        for s in stale:
            del table[s]

    def tick(self, now: float) -> None:
        """Forget collections and progress that timed out; call about once a second."""
        for index, table in self._collect.items():
            timeout = self.config.doors[index].sequence_timeout
            for s in [s for s, e in table.items() if now - e[0] > timeout]:
                del table[s]
        for index, progress in self._progress.items():
            timeout = self.config.doors[index].sequence_timeout
            for s in [s for s, e in progress.items() if now - e[2] > timeout]:
                del progress[s]


__all__ = ["SEQUENCE_STAGES", "SPA_STAGES", "CommandAsked", "GpgQuery", "NatGranted", "ReplayQuery",
           "ReplaySeen", "SequenceUsed", "SpaRefused", "SpecialDecision", "SpecialDoors",
           "SpecialEvent", "has_special", "shared_admits"]
