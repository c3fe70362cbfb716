"""The pure knock engine (no I/O): see :mod:`gatekeeper.engine.engine`."""

from gatekeeper.engine.engine import Engine
from gatekeeper.engine.events import (
    Decision,
    Event,
    Granted,
    Guard,
    Knocked,
    Outcome,
    Reason,
    Revoked,
    Verdict,
)

__all__ = [
    "Decision", "Engine", "Event", "Granted", "Guard", "Knocked", "Outcome", "Reason", "Revoked", "Verdict",
]
