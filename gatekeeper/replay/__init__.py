"""``gatekeeper replay``: a packet capture through the real decoder and engine, offline.

:mod:`.capture` reads pcap/pcapng files (dpkt) into IP packets, :mod:`.run` judges them
as the gateway's rules would and decides the queued ones through the worker's own
decision step on the capture's clock, :mod:`.report` prints what happened.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from gatekeeper.errors import GatekeeperError


def parse_time(value: str, first: float | None = None) -> float:
    """``--since``/``--until``: Unix seconds, ISO 8601 (UTC when no zone is given), or
    ``+S``: seconds after the capture's first packet (``first``)."""
    text = value.strip()
    try:
        if text.startswith("+"):
            return float(text[1:]) + (first or 0.0)
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise GatekeeperError(f"replay: {value!r} is no time (Unix seconds, ISO 8601, or +SECONDS "
                              "after the first packet)") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def main(config_path: str, capture_path: str, gateway: list[str], sources: list[str], door: str,
         as_json: bool, since: str, until: str) -> int:
    import ipaddress

    import gatekeeper.config.load as config_mod
    from gatekeeper.replay import report
    from gatekeeper.replay.capture import first_time, open_capture
    from gatekeeper.replay.run import Replay

    config = config_mod.load(config_path)
    if door and door not in {d.name for d in config.doors}:
        raise GatekeeperError(f"replay: --door {door}: no such door in {config_path}")
    for flag, values in (("--gateway", gateway), ("--source", sources)):
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise GatekeeperError(f"replay: {flag} {value}: not an address") from None
    relative = since.startswith("+") or until.startswith("+")
    first = first_time(capture_path) if relative else None
    capture = open_capture(capture_path)
    try:
        replay = Replay(config, gateway, sources, door,
                        parse_time(since, first) if since else None,
                        parse_time(until, first) if until else None,
                        note=lambda line: print(f"gatekeeper replay: {line}", file=sys.stderr))
        result = replay.run(capture)
    finally:
        capture.close()
    lines = report.json_lines(result) if as_json else report.text(result, config)
    for line in lines:
        print(line)
    return 0
