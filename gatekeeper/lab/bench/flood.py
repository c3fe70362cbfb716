"""``gatekeeper bench --flood``: a spoofed-source flood with the kernel prefilter off and on.

Issue #18's proof, in the namespace lab (:class:`gatekeeper.lab.netns.Lab`), both modes in
one run with the same config otherwise (the bench's three doors, 2 workers, the product's
quotas: ``prefix_quota`` 64, ``prefix_failure_limit`` 100). The flood comes from the lab's
``other`` host: a C program (``gatekeeper/lab/programs/flood.c``, compiled with gcc into the
bench's temporary directory) that sends with ``sendmmsg`` on raw sockets, paced to a rate,
bounded by a count and seconds. Its sources are random addresses in 198.18.0.0/15 and in
2001:db8:1:ffff::/64, spoofed, every packet addressed to the gateway; a TCP SYN or an
empty UDP datagram to a random port, or (phase 3) every packet to the ssh door's first
step, 7000/udp. Each measure starts a fresh daemon and flushes the gateway's conntrack
table, so no measure inherits another's state.

1. **Share reaching the queue**: a flood at a fixed rate, no client. The gateway's raw
   table counts the flood's packets as they reach netfilter (a counting rule of the lab's,
   no target); the queues' packet ids (``/proc/net/netfilter/nfnetlink_queue``) count
   what was queued. The share is queued / sent.
2. **Highest rate a legitimate client still gets in at**: at each rate (doubling) the flood
   runs while the client knocks the ssh door from fresh addresses and connects with a 0.9 s
   timeout (:mod:`gatekeeper.lab.bench.probe`: a success is a first SYN accepted). A rate
   passes with at least 99 of 100 (the tries stop at the second failure). The stepping stops
   at the first rate that fails, or when the senders fall short of their rate by more than
   10 %: the lab's own limit (the senders and the gateway's receive path, which runs in the
   senders' system calls, share the 2 cores), and the report says which.
3. **The flood aimed at 7000/udp** (every packet a first knock: the prefilter must queue
   them all) at the highest rate that passed with the prefilter on, with the quotas on and
   off; the report gives the client's success and the daemon's defence counters.
4. **CPU per dropped junk packet**: over phase 1's flood, the CPU time of the processes
   involved (the senders' own, from their rusage; the daemon's supervisor and workers, from
   /proc/PID) plus the machine's interrupt time (``/proc/stat``'s irq and softirq, less
   their idle rate measured for a second before: the receive path runs there or in the
   senders' system calls), divided by the flood packets that reached the gateway (all
   dropped: in the kernel, by a worker, or by a full queue). Other work on the machine is
   left out that way, except its own interrupts. The same flood into a raw-table DROP with
   no daemon gives the floor (sending, the veth pairs, the bridge); beyond it is what the
   gateway spends a dropped packet (conntrack included: every mode pays that).

Every loop is bounded in count and time; nothing leaves the lab, which is removed on exit
(Ctrl-C and SIGTERM included).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

from gatekeeper.lab.bench.phases import KNOCK_PORT
from gatekeeper.lab.bench.run import guarded
from gatekeeper.lab.bench.spoofed import DOOR_PORT, FLOOD4, FLOOD6, FloodBench, Plan, Sample
from gatekeeper.lab.netns import Lab, sigterm_unwinds

MODES = ("off", "on")
PASS = 0.99  # legitimate first tries that must succeed
CEILING = 10_000_000.0  # asked of the senders for the lab's ceiling: as fast as they go


def plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        return Plan(20_000, 1.5, 20_000, 40_000, 10, 0.5, 1.0, 3, True)
    return Plan(50_000, 5.0, 25_000, 1_600_000, 100, 1.0, 3.0, 10, False)

@dataclass
class Results:
    share: dict[str, Sample] = field(default_factory=dict)
    floor: Sample | None = None
    ceiling: Sample | None = None  # the senders unpaced into a raw-table DROP
    steps: dict[str, list[Sample]] = field(default_factory=lambda: {m: [] for m in MODES})
    door: list[tuple[str, Sample]] = field(default_factory=list)  # (quotas, sample)
    door_rate: float = 0.0
    load: list[float] = field(default_factory=list)

def _say(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)

def passed(sample: Sample, tries: int) -> bool:
    return len(sample.trials) == tries and sample.ok >= math.ceil(PASS * tries)

# -- the phases -------------------------------------------------------------------------------


def run_share(b: FloodBench, res: Results) -> None:
    p = b.plan
    for mode in MODES:
        _say(f"share and CPU: prefilter {mode}, {p.share_rate:,.0f}/s for {p.share_seconds:g} s")
        res.share[mode] = b.measure(mode, p.share_rate, seconds=p.share_seconds)
    _say("floor: the same flood into a raw-table DROP, no daemon")
    res.floor = b.measure("floor", p.share_rate, seconds=p.share_seconds)
    _say("ceiling: two senders unpaced into the raw-table DROP")
    res.ceiling = b.measure("floor", CEILING, seconds=min(2.0, p.share_seconds))


def run_steps(b: FloodBench, res: Results) -> None:
    p = b.plan
    for mode in MODES:
        rate = p.first_rate
        while rate <= p.max_rate:
            _say(f"legitimate client: prefilter {mode}, flood at {rate:,.0f}/s, {p.tries} tries")
            s = b.measure(mode, rate, tries=p.tries)
            res.steps[mode].append(s)
            if not passed(s, p.tries) or s.short:
                break
            rate *= 2


def highest(steps: list[Sample], tries: int) -> tuple[Sample | None, str]:
    """The last step the client passed, and why the stepping stopped."""
    ok = [s for s in steps if passed(s, tries)]
    best = ok[-1] if ok else None
    if not steps:
        return best, "not measured"
    last = steps[-1]
    if not passed(last, tries):
        why = (f"the client fell below {math.ceil(PASS * tries)}/{tries} at {last.target:,.0f}/s "
               f"({last.ok} of {len(last.trials)} tried)")
        return best, why + (f"; the senders also fell short there ({last.rate:,.0f}/s)" if last.short else "")
    if last.short:
        return best, (f"the lab's limit: asked {last.target:,.0f}/s, the senders reached "
                      f"{last.rate:,.0f}/s")
    return best, "the bench's highest step"


def run_door(b: FloodBench, res: Results) -> None:
    p = b.plan
    best, _ = highest(res.steps["on"], p.tries)
    res.door_rate = best.target if best else p.first_rate
    for quotas in (True,) if p.quick else (True, False):
        for mode in MODES:
            _say(f"flood at {DOOR_PORT}/udp: prefilter {mode}, quotas {'on' if quotas else 'off'}, "
                 f"{res.door_rate:,.0f}/s")
            s = b.measure(mode, res.door_rate, tries=p.tries, max_failures=p.door_failures,
                          door=True, quotas=quotas)
            res.door.append(("default quotas" if quotas else "quotas off", s))


# -- the report ------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.3f} %" if not math.isnan(x) else "-"


def _ratio(a: float, b: float, digits: int = 2) -> str:
    return f"{a / b:.{digits}f}" if b and not math.isnan(a) and not math.isnan(b) else "-"


def _defences(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in d.items() if v) or "none"


def report(p: Plan, res: Results, say: Callable[[str], None]) -> None:
    say(f"\nFLOOD  spoofed sources ({FLOOD4}, {FLOOD6}), 2 workers, the bench's doors, "
        "the product's quotas; prefilter off and on, the same config otherwise")
    say(f"  load average (1, 5, 15 min) at the start {res.load[0]:.2f} {res.load[1]:.2f} "
        f"{res.load[2]:.2f}, at the end {res.load[3]:.2f} {res.load[4]:.2f} {res.load[5]:.2f} "
        f"({os.cpu_count()} cores)")
    say(f"  1. random ports (TCP SYN, UDP), {p.share_rate:,.0f}/s asked for {p.share_seconds:g} s, "
        "no client:")
    for mode in MODES:
        s = res.share[mode]
        say(f"    prefilter {mode:<3}  sent {s.sent:,}  reached netfilter {s.reached:,}  queued "
            f"{s.queued:,}  queue_dropped {s.queue_dropped:,}  dropped by the prefilter "
            f"{sum(s.pre_dropped.values()):,} ({_defences(s.pre_dropped)})  dropped uncounted "
            f"{s.uncounted:,}")
    off, on = res.share["off"], res.share["on"]
    say(f"    share reaching the queue: off {_pct(off.share)}, on {_pct(on.share)} (goal: on <= 1 %); "
        f"on/off {_ratio(on.share, off.share, 5)}")
    say(f"  2. legitimate client (knock, connect() with a {0.9:g} s timeout) during a random-port "
        f"flood, the rate doubled from {p.first_rate:,.0f}/s until it fails or the senders fall short:")
    if res.ceiling:
        say(f"    the lab's ceiling: two senders unpaced into a raw-table DROP, no daemon: "
            f"{res.ceiling.rate:,.0f}/s")
    best_rates = {}
    for mode in MODES:
        for s in res.steps[mode]:
            say(f"    prefilter {mode:<3}  asked {s.target:>9,.0f}/s  sent {s.rate:>9,.0f}/s  "
                f"first SYN accepted {s.ok}/{len(s.trials)}  queue_dropped {s.queue_dropped:,}")
    for mode in MODES:
        best, why = highest(res.steps[mode], p.tries)
        best_rates[mode] = best.rate if best else math.nan
        shown = f"{best.rate:,.0f}/s (asked {best.target:,.0f}/s)" if best else "none passed"
        say(f"    highest rate with >= {math.ceil(PASS * p.tries)}/{p.tries}, prefilter {mode}: "
            f"{shown}; stopped by {why}")
    say(f"    highest rate on/off: {_ratio(best_rates['on'], best_rates['off'])}")
    say(f"  3. every flood packet a first knock ({DOOR_PORT}/udp, the ssh door), asked "
        f"{res.door_rate:,.0f}/s (the highest that passed with the prefilter on):")
    for quotas, s in res.door:
        cut = " (stopped at the failure limit)" if len(s.trials) < p.tries else ""
        say(f"    prefilter {s.mode:<3}  {quotas:<14}  first SYN accepted {s.ok}/{len(s.trials)}{cut}  "
            f"sent {s.rate:,.0f}/s  queued {s.queued:,}  queue_dropped {s.queue_dropped:,}  "
            f"tracked {s.tracked:,}  progress set {s.progress:,}  defences: {_defences(s.defences)}")
    say("  4. CPU per dropped junk packet (phase 1; the senders, the daemon and the machine's "
        "interrupts, over the flood packets that reached the gateway):")
    fl = res.floor
    floor_us = fl.per_packet_us(fl.cpu) if fl else math.nan
    if fl:
        say(f"    floor (raw-table DROP, no daemon)  {floor_us:.2f} us a packet (senders "
            f"{fl.per_packet_us(fl.senders_cpu):.2f}, interrupts {fl.per_packet_us(fl.irq):.2f})")
    gateway = {}
    for mode in MODES:
        s = res.share[mode]
        total = s.per_packet_us(s.cpu)
        gateway[mode] = total - floor_us
        say(f"    prefilter {mode:<3}  {total:.2f} us a packet (senders "
            f"{s.per_packet_us(s.senders_cpu):.2f}, daemon {s.per_packet_us(s.daemon_cpu):.2f}, "
            f"interrupts {s.per_packet_us(s.irq):.2f}); "
            f"the gateway beyond the floor: {gateway[mode]:.2f} us")
    say(f"    gateway CPU per dropped packet off/on: {_ratio(gateway['off'], gateway['on'])}")


def main(args: argparse.Namespace) -> int:
    p = plan(args)
    print(f"gatekeeper bench --flood{' --quick' if p.quick else ''}: a spoofed-source flood "
          f"({FLOOD4}, {FLOOD6}) from a C sendmmsg sender, prefilter off and on; nothing leaves "
          "the lab", flush=True)
    res = Results(load=list(os.getloadavg()))

    def body() -> None:
        with sigterm_unwinds(), tempfile.TemporaryDirectory(prefix="gatekeeper-bench-") as tmp, \
                Lab(f"gkf{os.getpid() % 10000}") as lab:
            lab.serve_tcp("gw", KNOCK_PORT)
            b = FloodBench(lab, tmp, p)
            b.prepare()
            run_share(b, res)
            run_steps(b, res)
            run_door(b, res)
            res.load += list(os.getloadavg())
            report(p, res, print)

    return guarded(body)
