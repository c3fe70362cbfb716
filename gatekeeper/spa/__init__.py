"""Pure codecs for authorised knocks: fwknop-compatible SPA and encrypted port sequences.

Nothing here touches a socket, a file or the clock: the worker passes bytes (or ports),
keys and ``now`` in and gets a result with a failure stage (a metrics label) out.
"""

from __future__ import annotations

from gatekeeper.spa.replay import Admission, ReplayCache

__all__ = ["Admission", "ReplayCache"]
