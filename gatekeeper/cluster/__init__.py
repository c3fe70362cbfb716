"""Several gateways as one gatekeeper: knock progress and grants shared on Redis/Valkey.

Only with ``[cluster]`` in the config; a single gateway never imports this package (nor
the ``redis`` client library, the optional extra ``cluster``).

* :mod:`.store`: the connection (a URL or Sentinel), the keys, the Lua scripts.
* :mod:`.gate`: the worker's side: a knock runs the knock script (one round trip); a
  first packet to a protected port with no local grant asks whether another gateway
  granted it; a circuit breaker keeps a dead store off the hot path.
* :mod:`.mirror`: the supervisor's side: a subscriber that writes every grant made on
  another gateway into this one's kernel sets, and resyncs on each (re)connection.
"""
