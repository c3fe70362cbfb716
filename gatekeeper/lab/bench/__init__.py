"""``gatekeeper bench``: how fast one worker verdicts, measured in a namespace lab.

:mod:`gatekeeper.lab.bench.run` drives it through the phases of
:mod:`~gatekeeper.lab.bench.phases` and prints :mod:`~gatekeeper.lab.bench.report`;
:mod:`~gatekeeper.lab.bench.targets` starts what is drained (``gatekeeper run``, its workers
found from the supervisor's status, or the bare loop), :mod:`~gatekeeper.lab.bench.drain`
times the drain from what :mod:`~gatekeeper.lab.bench.kernel` reads off /proc.
:mod:`~gatekeeper.lab.bench.traffic` builds the packets, :mod:`~gatekeeper.lab.bench.sender`
sends them from the client namespace, :mod:`~gatekeeper.lab.bench.bare` is the drop-only
baseline, :mod:`~gatekeeper.lab.bench.probe` times knock-to-connected,
:mod:`~gatekeeper.lab.bench.memory` weighs the state table and
:mod:`~gatekeeper.lab.bench.overhead` times the metrics' instrumentation in process;
:mod:`~gatekeeper.lab.bench.cluster` is ``gatekeeper bench --cluster``.
"""
