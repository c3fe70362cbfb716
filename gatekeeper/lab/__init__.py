"""The lab: everything that exercises gatekeeper rather than being it.

:mod:`~gatekeeper.lab.netns` builds the namespace lab (gateway, client, other host, server),
:mod:`~gatekeeper.lab.cluster` the two-gateway lab with a Redis store, :mod:`~gatekeeper.lab.demo`
is ``gatekeeper demo``, :mod:`gatekeeper.lab.bench` is ``gatekeeper bench``,
:mod:`gatekeeper.lab.soak` is ``gatekeeper soak`` and :mod:`gatekeeper.lab.programs` holds the
small programs the lab starts inside its namespaces. Nothing outside this package imports it
but the command line's demo, bench and soak handlers, lazily (an import-linter contract in
pyproject.toml says so and CI checks it).
"""
