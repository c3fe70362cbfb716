"""The small programs the lab starts inside its namespaces, each run as
``python -m gatekeeper.lab.programs.NAME ARGS`` (:meth:`gatekeeper.lab.netns.Lab.program`).

* :mod:`~.serve_tcp`: a TCP echo service on every address; prints ``ready``.
* :mod:`~.connect_helper`: the demo's connection helper, one JSON line a command.
* :mod:`~.prime`: one datagram to each given address, so the sender knows its link address.
* :mod:`~.knock_from`: a knock from a given source address; prints when it began.
* :mod:`~.watch_set`: waits until an address is in the gateway's ``gatekeeper-in4`` set.
* :mod:`~.fetch`: prints what an HTTP URL (the gateway's own exporter) answers.
"""
