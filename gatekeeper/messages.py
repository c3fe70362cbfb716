"""The worker <-> supervisor vocabulary: every message that crosses their pipes, once.

Workers report to the supervisor over one shared pipe (a JSON line a message, each
under ``PIPE_BUF`` so that the writes of several workers never interleave); the
supervisor sends each worker orders over its own control pipe. A message is a frozen
dataclass whose ``KIND`` is the ``"t"`` key of its JSON object and whose fields are the
object's other keys. :func:`encode` writes one line; :func:`decode` reads one back and
raises :class:`MessageError` (a ``ValueError``) for anything that is not a message of
this vocabulary with fields of the right types: the reader logs and counts it, and
carries on. Reports carry their sender (:class:`Sender`) beside the message.
"""

from __future__ import annotations

import dataclasses
import json
import select
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Union


class MessageError(ValueError):
    """A line that is not a message of this vocabulary (named in the error)."""


@typing.dataclass_transform(frozen_default=True)
class Message:
    """A message; a subclass is a frozen dataclass (made so here, not by a decorator on
    each) that names its ``KIND`` in its class line (``kind="ready"``)."""

    KIND: ClassVar[str] = ""
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def __init_subclass__(cls, kind: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if kind:
            cls.KIND = kind
        dataclass(frozen=True)(cls)

    def wire(self) -> dict[str, Any]:
        """The message as its JSON object (``"t"`` first)."""
        return {"t": self.KIND, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}


# -- worker -> supervisor ---------------------------------------------------------------


class Ready(Message, kind="ready"):
    """Bound to the queue, grants of the kernel set adopted: verdicting."""

    adopted: int


class Failed(Message, kind="error"):
    """The worker could not start (the reason, one line)."""

    message: str


class Stats(Message, kind="stats"):
    """Everything counted since the worker started (``gatekeeper.metrics.Snapshot``)."""

    counts: list[int]
    hist: list[int]
    hist_sum_ns: int
    knocks: dict[str, list[int]]
    spa: dict[str, dict[str, int]]
    guards: list[int]
    tracked: int
    cluster: dict[str, Any] | None


class _GrantChange(Message):
    """A grant of ``door`` to ``address`` written into (or taken out of) the kernel set,
    of the ports ``opens``; ``error``: the set refused it."""

    door: str
    address: str
    opens: list[str]
    error: str | None


class Granted(_GrantChange, kind="grant"):
    """A grant made, for ``seconds`` (``renewed``: the address held one of the door)."""

    seconds: float
    renewed: bool


class Revoked(_GrantChange, kind="revoke"):
    """A grant closed (``cause``: a close sequence)."""

    cause: str


class Used(Message, kind="used"):
    """A one-time sequence used: its line marked in the file (``error``: it could not be)."""

    door: str
    path: str
    line: int
    steps: str
    error: str


class Command(Message, kind="command"):
    """An allowed SPA server command asked for by ``address``: the supervisor runs it."""

    door: str
    address: str
    command: str


class Refused(Message, kind="refused"):
    """An SPA packet (or encrypted sequence) from ``address`` that ``door`` refused at
    ``stage``; ``withheld``: refusals the worker did not report since its last one
    (``gatekeeper.queue.refusals``)."""

    door: str
    address: str
    stage: str
    withheld: int


class Reloaded(Message, kind="reloaded"):
    """The config of a :class:`Reload` read: the new engine decides from the next packet."""


class Counts(Message, kind="counts"):
    """The answer to :class:`CountsRequest`: packets by reason, sources tracked."""

    counts: list[int]
    tracked: int


# -- supervisor -> worker ---------------------------------------------------------------


class Reload(Message, kind="reload"):
    """Read this config text (of ``path``) and swap in a new engine."""

    text: str
    path: str


class Forget(Message, kind="revoke"):
    """A grant closed on another gateway (mirrored): stop admitting it from the queue."""

    address: str
    door: str


class CountsRequest(Message, kind="counts"):
    """Send :class:`Counts` now."""


@dataclass(frozen=True, slots=True)
class Sender:
    """Who wrote a report: the worker's index, its queue and its pid."""

    worker: int
    queue: int
    pid: int


REPORTS: dict[str, type[Message]] = {
    m.KIND: m for m in (Ready, Failed, Stats, Granted, Revoked, Used, Command, Refused, Reloaded,
                        Counts)
}
ORDERS: dict[str, type[Message]] = {m.KIND: m for m in (Reload, Forget, CountsRequest)}

_NONE = type(None)


def _accepts(hint: Any) -> tuple[type, ...]:
    """The run-time types a field of type ``hint`` takes from JSON."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return tuple(t for arg in typing.get_args(hint) for t in _accepts(arg))
    base = origin or hint
    if base is float:
        return (float, int)
    if base is int:
        return (int,)
    return (base,)


_FIELDS: dict[type[Message], tuple[tuple[str, tuple[type, ...]], ...]] = {}


def _fields(cls: type[Message]) -> tuple[tuple[str, tuple[type, ...]], ...]:
    known = _FIELDS.get(cls)
    if known is None:
        hints = typing.get_type_hints(cls)
        known = _FIELDS[cls] = tuple((f.name, _accepts(hints[f.name]))
                                     for f in dataclasses.fields(cls))
    return known


def _build(cls: type[Message], obj: dict[str, Any]) -> Message:
    values = {}
    for name, accepts in _fields(cls):
        if name not in obj:
            raise MessageError(f"{cls.KIND!r} message without {name!r}")
        value = obj[name]
        if not isinstance(value, accepts) or (isinstance(value, bool) and bool not in accepts):
            raise MessageError(f"{cls.KIND!r} message: {name} is {type(value).__name__}")
        values[name] = value
    return cls(**values)


def encode(message: Message, sender: Sender | None = None) -> bytes:
    """One JSON line; a report with its sender. A :class:`Stats` line longer than
    ``PIPE_BUF`` (which the shared pipe could not write atomically) goes without its
    knock counts, then without its SPA counts too."""
    head = {} if sender is None else dataclasses.asdict(sender)
    obj = {**head, **message.wire()}
    data = _line(obj)
    if len(data) > select.PIPE_BUF and isinstance(message, Stats):
        data = _line({**obj, "knocks": {}})
        if len(data) > select.PIPE_BUF:
            data = _line({**obj, "knocks": {}, "spa": {}})
    return data


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


def _object(line: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeError) as exc:
        raise MessageError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MessageError(f"not a JSON object: {type(obj).__name__}")
    return obj


def _message(obj: dict[str, Any], vocabulary: dict[str, type[Message]]) -> Message:
    kind = obj.get("t")
    cls = vocabulary.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise MessageError(f"unknown message kind {kind!r}")
    return _build(cls, obj)


def decode_report(line: bytes) -> tuple[Sender, Message]:
    """A worker's report line: its sender and the message."""
    obj = _object(line)
    ids = []
    for name in ("worker", "queue", "pid"):
        value = obj.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise MessageError(f"report without a sender's {name}")
        ids.append(value)
    return Sender(*ids), _message(obj, REPORTS)


def decode_order(line: bytes) -> Message:
    """A control line from the supervisor."""
    return _message(_object(line), ORDERS)


__all__ = [
    "ORDERS", "REPORTS", "Counts", "CountsRequest", "Failed", "Forget", "Granted", "Message",
    "MessageError", "Ready", "Refused", "Reload", "Reloaded", "Revoked", "Sender", "Stats", "Used",
    "decode_order", "decode_report", "encode",
]
