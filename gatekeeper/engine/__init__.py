"""The pure knock engine (no I/O): see :mod:`gatekeeper.engine.engine`; what it says,
verdicts, reasons and events, is :mod:`gatekeeper.engine.events`."""

from gatekeeper.engine import events
from gatekeeper.engine.engine import Engine
from gatekeeper.engine.events import *  # noqa: F403  (its __all__: Decision, Event, Granted, ...)

__all__ = ["Engine", *events.__all__]
