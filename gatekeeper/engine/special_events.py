"""What :class:`gatekeeper.engine.special.SpecialDoors` returns besides the engine's events:
the effects of a special door's decision (for the worker to carry out) and the questions
it asks the worker (a shared replay check, GnuPG's work). Data only."""

from __future__ import annotations

from dataclasses import dataclass

from gatekeeper.engine.engine import Event, Granted, Reason, Verdict
from gatekeeper.model import Door
from gatekeeper.spa import fwknop
from gatekeeper.spa import gpg as gpgcodec
from gatekeeper.spa import sequence as seqcodec


@dataclass(frozen=True, slots=True)
class SequenceUsed:
    """A one-time sequence was used: line ``line`` of ``path`` must be marked used."""

    door: str
    path: str
    line: int
    steps: str  # the line's sequence, "7000:udp,8000:tcp", to check it is still that line


@dataclass(frozen=True, slots=True)
class CommandAsked:
    """An SPA command message (``fwknop --server-cmd``) that door ``door`` allows: the
    supervisor runs its argv (the door's ``spa_commands``) for ``address``; no grant."""

    door: str
    address: str
    command: str


@dataclass(frozen=True, slots=True)
class NatGranted:
    """An SPA NAT access grant (``fwknop -N``): ``granted`` (the gateway port the client
    connects to, for how long) is DNATed to ``host``:``port`` for that address only. It
    lives in the kernel sets alone: the engine's table never admits the gateway port."""

    granted: Granted
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class SpaRefused:
    """An SPA packet or an encrypted sequence from ``source`` that ``door`` refused at
    ``stage`` (its gatekeeper_spa_total label; for a packet no door's key made, the doors
    of its port, comma-separated): for the worker's rate-limited log line."""

    door: str
    source: bytes
    stage: str


@dataclass(frozen=True, slots=True)
class ReplaySeen:
    """A message new to door ``door``'s replay cache: to be kept until ``expires`` (wall
    clock) in the door's journal, so that a restart does not forget it."""

    door: str
    key: bytes
    expires: float


@dataclass(frozen=True, slots=True)
class ReplayQuery:
    """[cluster] A message new to this gateway's replay cache: did any gateway see it
    before? The worker asks the store (``ttl`` seconds to remember it) and hands the
    answer to :meth:`SpecialDoors.answer`; the rest is what that needs to finish."""

    door: Door
    key: bytes
    ttl: float
    index: int
    src: bytes
    result: fwknop.SpaResult | seqcodec.SequenceResult
    now: float


@dataclass(frozen=True, slots=True)
class GpgQuery:
    """A GnuPG SPA packet past size and HMAC, within budget: the worker runs ``gpg`` on it (the
    door's ``spa_gpg``) and hands the run and its time to :meth:`SpecialDoors.gpg_answer`."""

    door: Door
    index: int
    src: bytes
    sealed: gpgcodec.Sealed
    now: float
    wall: float


SpecialEvent = Event | SequenceUsed | CommandAsked | SpaRefused | NatGranted
SpecialDecision = tuple[Verdict, Reason, tuple[SpecialEvent, ...]]
