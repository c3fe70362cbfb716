"""Which refused SPA packets a worker reports for a log line: a bounded share of them.

Every refused SPA packet and encrypted sequence is counted (``gatekeeper_spa_total``);
a line in the log, with the source and the stage, is what fail2ban and an admin read.
A flood must not turn into a flood of lines, nor into a pipe write a packet: each source
gets ``PER_SOURCE_BURST`` lines, then one every ``PER_SOURCE_EVERY`` seconds; a worker
writes at most ``OVERALL_PER_SECOND`` lines a second in all. What is held back is
counted and named in the next line reported (``withheld``). The clock is given.
"""

from __future__ import annotations

PER_SOURCE_BURST = 5  # a fail2ban filter's usual maxretry fits in the first burst
PER_SOURCE_EVERY = 10.0  # seconds between lines of one source after its burst
OVERALL_PER_SECOND = 20  # lines a second a worker reports, every source together
MAX_SOURCES = 4096  # sources remembered; a full table starts over (the overall limit holds)


class RefusalLimit:
    """Token buckets: one a source (``PER_SOURCE_BURST``, refilled one a
    ``PER_SOURCE_EVERY``) and one for the worker (``OVERALL_PER_SECOND``)."""

    def __init__(self) -> None:
        self._sources: dict[bytes, tuple[float, float]] = {}  # source -> (tokens, at)
        self._second = -1
        self._in_second = 0
        self.withheld = 0  # refusals not reported since the last one that was

    def admit(self, source: bytes, now: float) -> int | None:
        """None: hold this one back; else report it, with this many held back before it."""
        second = int(now)
        if second != self._second:
            self._second, self._in_second = second, 0
        if self._in_second >= OVERALL_PER_SECOND:
            self.withheld += 1
            return None
        tokens, at = self._sources.get(source, (float(PER_SOURCE_BURST), now))
        tokens = min(float(PER_SOURCE_BURST), tokens + (now - at) / PER_SOURCE_EVERY)
        if tokens < 1.0:
            self._sources[source] = (tokens, now)
            self.withheld += 1
            return None
        if len(self._sources) >= MAX_SOURCES and source not in self._sources:
            self._sources.clear()
        self._sources[source] = (tokens - 1.0, now)
        self._in_second += 1
        withheld, self.withheld = self.withheld, 0
        return withheld
