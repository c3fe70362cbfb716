"""A replay's result as a person reads it (timelines, then a summary) or as JSON lines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from gatekeeper.model import Config
from gatekeeper.replay.run import Moment, Result, clock


def describe(m: Moment, config: Config) -> str:
    """What a moment means, in a few words."""
    f = m.fields
    ports = " ".join(f.get("ports", ()))
    whom = f" for {f['address']}" if f.get("address", m.source) != m.source else ""
    if m.what == "knock":
        outcome = f["outcome"]
        door = next((d for d in config.doors if d.name == m.door), None)
        if door is not None and door.special and outcome == "completed":
            return f"{door.kind} request on {f['port']}: accepted"
        text = {
            "advanced": f"knock {f['port']}: a step",
            "completed": f"knock {f['port']}: sequence completed",
            "reset": f"reset by {f['port']}: not the next step (progress lost, a failed sequence)",
            "timeout": f"timed out at {f['port']}: the sequence took longer than its timeout "
                       "(a failed sequence)",
            "duplicate": f"knock {f['port']} again: a retransmit, progress kept",
            "nothing-to-close": f"close sequence completed at {f['port']}: nothing to close",
            "locked": f"knock {f['port']}: completed while locked out "
                      f"({'as a scanner' if f.get('locked') == 'scanner' else 'failed sequences'}): "
                      "no grant",
        }.get(outcome, f"knock {f['port']}: {outcome}")
        return text
    if m.what == "grant":
        renewed = " (renewed)" if f["renewed"] else ""
        nat = f" DNATed to {f['nat']}" if "nat" in f else ""
        return f"GRANT {ports}{whom}{nat} for {f['seconds']:g} s{renewed}"
    if m.what == "revoke":
        return f"revoke {ports}{whom} ({f['cause']})"
    if m.what == "open":
        return f"still granted at the end of the capture: {ports}, until {clock(f['until'])}"
    if m.what == "lockout":
        s = config.settings
        why = {"scan": f"as a scanner (more distinct ports than {s.scan_limit or 'longest sequence + 3'})",
               "source": f"for failed sequences (more than {s.failure_limit})",
               "prefix": f"its /24 or /64, for failed sequences (more than {s.prefix_failure_limit})"}
        return f"LOCKOUT {why.get(f['cause'], f['cause'])} for {f['seconds']} s"
    if m.what == "refused":
        why = {"quota": "its /24 or /64 is at prefix_quota", "full": "the table is full"}
        return f"refused: not tracked, {why.get(f['cause'], f['cause'])}"
    if m.what == "spa":
        return f"spa: {f['stage']}"
    if m.what == "one-time":
        return (f"one-time line {f['line']} used ({f['sequence']}); the daemon marks it in "
                f"{f['path']}, the replay leaves the file alone")
    if m.what == "command":
        return f"COMMAND {f['command']!r} for {f['address']}: the daemon runs it, the replay does not"
    return f"{m.what} {f}"


def text(result: Result, config: Config) -> Iterator[str]:
    start = result.first
    for source, moments in result.timelines.items():
        yield source
        for m in moments:
            door = m.door or "-"
            yield f"  {clock(m.time)}  +{m.time - start:9.3f}s  {door:<10} {describe(m, config)}"
    if result.timelines:
        yield ""
    yield from _summary(result)


def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "none"


def _summary(r: Result) -> Iterator[str]:
    def row(name: str, value: str) -> str:
        return f"{name:<14}{value}"

    yield "summary"
    span = f" over {r.last - r.first:.3f} s, from {clock(r.first)} UTC" if r.frames else ""
    yield row("frames", f"{r.frames} read{span}" + (f", {r.not_ip} not IP" if r.not_ip else ""))
    queued = r.packets - sum(r.not_queued.values()) - r.malformed
    yield row("packets", f"{r.packets} IP: {queued} queued, {_pairs(r.not_queued)} never queued"
              + (f", {r.malformed} refused by the decoder" if r.malformed else "")
              + (f", {r.errors} errors" if r.errors else "")
              + (f" ({r.outside} outside --since/--until, not replayed)" if r.outside else ""))
    yield row("verdicts", _pairs(r.reasons))
    yield row("sources", f"{r.sources} sent queued packets; {len(r.timelines)} in the timelines above")
    yield row("grants", _pairs(r.grants) + (" (by door)" if r.grants else ""))
    yield row("lockouts", _pairs(r.lockouts))
    yield row("refused", _pairs(r.refused))
    if r.spa:
        yield row("spa stages", "; ".join(f"{door}: {_pairs(stages)}" for door, stages in r.spa.items()))
    how = "learnt from knocks" if r.learnt else "--gateway and door hosts"
    yield row("gateway", (" ".join(r.gateway) or "none") + f" ({how})")
    rate = r.packets / r.seconds if r.seconds > 0 else 0.0
    yield row("replay", f"{r.packets} packets in {r.seconds:.3f} s ({rate:,.0f} packets/s)")
    if r.truncated:
        yield row("truncated", r.truncated)


def json_lines(result: Result) -> Iterator[str]:
    for moments in result.timelines.values():
        for m in moments:
            yield json.dumps({"type": "moment", "time": m.time, "source": m.source, "door": m.door,
                              "what": m.what, **m.fields}, sort_keys=True)
    summary: dict[str, Any] = {
        "type": "summary", "first": result.first, "last": result.last, "frames": result.frames,
        "not_ip": result.not_ip, "packets": result.packets, "outside": result.outside,
        "not_queued": result.not_queued, "malformed": result.malformed, "errors": result.errors,
        "verdicts": result.reasons, "sources": result.sources, "grants": result.grants,
        "lockouts": result.lockouts, "refused": result.refused, "spa": result.spa,
        "gateway": result.gateway, "gateway_learnt": result.learnt,
        "truncated": result.truncated, "seconds": result.seconds,
    }
    yield json.dumps(summary, sort_keys=True)
