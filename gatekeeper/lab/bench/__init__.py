"""``gatekeeper bench``: how fast one worker verdicts, measured in a namespace lab.

:mod:`gatekeeper.lab.bench.run` drives it; :mod:`~gatekeeper.lab.bench.traffic` builds the
packets, :mod:`~gatekeeper.lab.bench.sender` sends them from the client namespace,
:mod:`~gatekeeper.lab.bench.bare` is the drop-only baseline, :mod:`~gatekeeper.lab.bench.probe`
times knock-to-connected, :mod:`~gatekeeper.lab.bench.memory` weighs the state table and
:mod:`~gatekeeper.lab.bench.overhead` times the metrics' instrumentation in process.
"""
