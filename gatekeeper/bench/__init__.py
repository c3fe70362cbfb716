"""``gatekeeper bench``: how fast one worker verdicts, measured in a namespace lab.

:mod:`gatekeeper.bench.run` drives it; :mod:`~gatekeeper.bench.traffic` builds the
packets, :mod:`~gatekeeper.bench.sender` sends them from the client namespace,
:mod:`~gatekeeper.bench.bare` is the drop-only baseline, :mod:`~gatekeeper.bench.probe`
times knock-to-connected, :mod:`~gatekeeper.bench.memory` weighs the state table and
:mod:`~gatekeeper.bench.overhead` times the metrics' instrumentation in process.
"""
