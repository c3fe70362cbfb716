"""The bench's report: every figure of the phases, with the yardsticks beside them."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Sequence

from gatekeeper import native
from gatekeeper.client.knock import FIRST_SYN_TIMEOUT
from gatekeeper.lab.bench.drain import Drain
from gatekeeper.lab.bench.kernel import percentile
from gatekeeper.lab.bench.phases import KNOCK_PORT, KNOCK_STEPS, Options, Results, median
from gatekeeper.lab.netns import Lab


def _spread(values: Sequence[float], fmt: str) -> str:
    """Median, and [min - max] when there is more than one value."""
    if not values:
        return "n/a"
    text = format(median(values), fmt)
    if len(values) > 1:
        text += f"  [{format(min(values), fmt)} - {format(max(values), fmt)}]"
    return text


def _ratios(a: Sequence[Drain], b: Sequence[Drain]) -> list[float]:
    """Per round: a's rate over b's (the two ran back to back on the same packets)."""
    return [x.rate / y.rate for x, y in zip(a, b, strict=True)]


def report(opts: Options, res: Results, lab: Lab, out: Callable[[str], None]) -> None:
    load = os.getloadavg()[0]
    out("")
    out(f"gatekeeper bench: {os.cpu_count()} CPUs ({platform.machine()}), Linux {platform.release()}, "
        f"Python {platform.python_version()}; load average {res.load:.2f} at the start, "
        f"{load:.2f} at the end")
    out(f"hot path (decode, engine, worker): {native.describe()}; batch = {opts.batch} "
        "(packets a worker reads and verdicts at once)")
    if opts.quick:
        out("--quick: a smoke test; its drains last milliseconds, so its figures mean little")
    out(f"traffic a round: {res.mix[0].describe()}")
    decided = res.mix[0].decisions()
    n = sum(decided.values()) or 1
    out("  the engine decides: " + ", ".join(
        f"{reason} {100 * count / n:.1f}%" for reason, count in decided.most_common()))
    out("")
    _throughput(opts, res, out)
    _junk(res, out)
    _scaling(opts, res, out)
    _latency(res, out)
    _knocks(opts, res, out)
    _memory(opts, res, out)
    _queue_drops(opts, res, out)


def _throughput(opts: Options, res: Results, out: Callable[[str], None]) -> None:
    """Drained verdicts a second and CPU a verdict, each run against the bare loops."""
    w = opts.workers
    out(f"THROUGHPUT  drain method, {opts.rounds} round(s) of {opts.packets:,} packets; "
        "median [min - max]")
    out("  the readers are stopped (SIGSTOP), the queue filled from the client namespace, the "
        "readers resumed (SIGCONT) and timed until the queue is empty")
    rows: list[tuple[str, str, str]] = [
        ("bare drop-only NetfilterQueue loop, 1 queue", _spread([d.rate for d in res.bare], ",.0f"),
         _spread([d.cpu_per_packet_us() for d in res.bare], ".2f")),
        ("bare drop-only batch loop (_nfq), 1 queue", _spread([d.rate for d in res.bare_batch], ",.0f"),
         _spread([d.cpu_per_packet_us() for d in res.bare_batch], ".2f")),
        ("gatekeeper, 1 worker", _spread([d.rate for d in res.one], ",.0f"),
         _spread([d.cpu_per_packet_us() for d in res.one], ".2f")),
        ("gatekeeper, 1 worker, metrics off", _spread([d.rate for d in res.one_off], ",.0f"),
         _spread([d.cpu_per_packet_us() for d in res.one_off], ".2f")),
    ]
    if res.many:
        rows += [
            (f"bare drop-only loop, {w} queues (aggregate)",
             _spread([d.rate for d in res.bare_many], ",.0f"),
             _spread([d.cpu_per_packet_us() for d in res.bare_many], ".2f")),
            (f"gatekeeper, {w} workers (aggregate)", _spread([d.rate for d in res.many], ",.0f"),
             _spread([d.cpu_per_packet_us() for d in res.many], ".2f")),
            (f"gatekeeper, {w} workers, per worker",
             _spread([d.per_worker(q) for d in res.many for q in d.queued], ",.0f"), ""),
        ]
    out(f"  {'':<46} {'verdicts/s':<28} CPU us a verdict")
    for name, rate, cpu in rows:
        out(f"  {name:<46} {rate:<28} {cpu}")
    # user and system time come in clock ticks (10 ms): split the precise on-CPU time by
    # their shares, and only when a drain lasted long enough for them to mean something
    split = [(name, [d for d in drains if sum(c[1] + c[2] for c in d.cpu.values()) >= 0.2])
             for name, drains in (("bare loop", res.bare), ("1 worker", res.one))]
    if all(drains for _, drains in split):
        parts = []
        for name, drains in split:
            user = median([d.cpu_per_packet_us() * d.cpu_per_packet_us(1)
                            / max(1e-9, d.cpu_per_packet_us(1) + d.cpu_per_packet_us(2)) for d in drains])
            parts.append(f"{name} {user:.2f} + {median([d.cpu_per_packet_us() for d in drains]) - user:.2f}")
        out("  CPU us a verdict, user (Python) + system (kernel: recv, verdict, the packet's end): "
            + "; ".join(parts))
    out("")
    out(f"  {'gatekeeper 1 worker / bare loop':<46} {_spread(_ratios(res.one, res.bare), '.2f')}")
    out(f"  {'gatekeeper 1 worker / bare batch loop':<46} "
        f"{_spread(_ratios(res.one, res.bare_batch), '.2f')}")
    out("    (the first is the yardstick: NetfilterQueue's own loop, a packet at a time; the second "
        f"is the same reader the worker uses, batches of {opts.batch}, deciding nothing)")
    # metrics on against off, per round (they ran back to back on the same packets)
    cost = [100.0 * (1.0 - x) for x in _ratios(res.one, res.one_off)]
    extra_cpu = [a.cpu_per_packet_us() - b.cpu_per_packet_us()
                 for a, b in zip(res.one, res.one_off, strict=True)]
    rounds = f"  [{min(cost):.1f}% - {max(cost):.1f}%]" if len(cost) > 1 else ""
    out(f"  instrumentation cost: {median(cost):.1f}% of throughput (target < 15%){rounds}; "
        f"{median(extra_cpu):+.2f} us CPU a verdict")
    out("    (1 worker, metrics on - the default: every verdict timed into the latency histogram - "
        "against metrics off)")
    if res.in_process is not None:
        extra = res.in_process.extra_us
        off_cpu = median([d.cpu_per_packet_us() for d in res.one_off])
        out(f"    in process, without the kernel: decide_batch {res.in_process.plain_ns / 1000:.2f} us, "
            "timed "
            f"{res.in_process.metered_ns / 1000:.2f} us a verdict ({extra:+.2f} us): "
            f"{100 * extra / (off_cpu + extra):.1f}% of throughput when a verdict costs the drained "
            f"{off_cpu:.2f} us CPU without metrics")


def _junk(res: Results, out: Callable[[str], None]) -> None:
    """What an SPA door taking random UDP ports (fwknop --rand-port) costs junk there."""
    if res.junk is None:
        return
    out("  junk UDP to random ports 10000-65535, CPU a verdict in process, an SPA door with "
        "spa_transports udp-any off and on (on / off):")
    for line in res.junk.lines():
        out(f"    {line}")


def _scaling(opts: Options, res: Results, out: Callable[[str], None]) -> None:
    """k workers against one, and the machine's own scaling."""
    w = opts.workers
    if res.many:
        scale = _ratios(res.many, res.one)
        machine = _ratios(res.bare_many, res.bare)
        out(f"  {f'gatekeeper {w} workers / 1 worker':<46} {_spread(scale, '.2f')}")
        out(f"  {f'bare loop {w} queues / 1 queue (the machine)':<46} {_spread(machine, '.2f')}")
        share = median([max(d.queued.values()) / d.total for d in res.many])
        out("")
        out("  model: k workers drain k queues in parallel: aggregate = k x one worker's rate x e "
            "(the parallel efficiency), limited by the busiest queue.")
        out(f"    HMARK gave the busiest of {w} queues {100 * share:.1f}% of the packets: "
            f"at most {1 / share:.2f}x.")
        out(f"    the bare loop, with no Python work to speak of, reaches {median(machine):.2f}x on "
            f"this machine: that is what {w} cores give {w} NFQUEUE readers here;")
        out(f"    gatekeeper reaches {median(scale):.2f}x, {100 * median(scale) / median(machine):.0f}% "
            "of the machine's own scaling.")
        out(f"    this machine has {os.cpu_count()} cores in all. While a queue drains nothing arrives, "
            "so the readers have them to themselves (the kernel's verdict work runs in their own "
            "system time);")
        out("    under live traffic the same cores also carry the softirq work of receiving and "
            f"queueing every packet, so live capacity with {w} workers is lower than the drained one.")
    fill = median([d.fill_rate for d in res.one])
    out(f"  (one Python raw-socket sender filled the queue at {fill:,.0f} packets/s)")
    out("")


def _latency(res: Results, out: Callable[[str], None]) -> None:
    lat = res.latency
    out("LATENCY  each packet's read-to-verdict time (perf_counter_ns from the recvmmsg that brought it "
        "to the send that carried its verdict), 1 worker, paced load")
    short = " - as fast as one Python sender goes here" if lat["offered"] < 0.95 * lat["target"] else ""
    out(f"  offered {lat['offered']:,.0f} packets/s (target {lat['target']:,.0f}/s: half the 1-worker "
        f"median{short}), {lat['timed']:,.0f} verdicts timed, queue backlog max {lat['backlog']:,.0f}")
    out(f"  p50 {lat['p50']:.1f} us   p99 {lat['p99']:.1f} us   p99.9 {lat['p999']:.1f} us   "
        f"max {lat['max']:.1f} us")
    out("")


def _knocks(opts: Options, res: Results, out: Callable[[str], None]) -> None:
    w = opts.workers
    ok = [k for k in res.knocks if k["ok"]]
    total = sorted(k["total_ms"] for k in ok)
    conn = sorted(k["ms"] for k in ok)
    out(f"KNOCK TO CONNECTED  {len(res.knocks)} sources ({res.knock_split}), {w} worker(s); knock "
        f"{KNOCK_STEPS.replace(',', ' ')}, then connect() to port {KNOCK_PORT}, "
        f"{FIRST_SYN_TIMEOUT} s timeout")
    out(f"  first SYN accepted {len(ok)}/{len(res.knocks)}; first knock sent -> connected: median "
        f"{percentile(total, 50):.2f} ms, p99 {percentile(total, 99):.2f} ms; connect() alone: median "
        f"{percentile(conn, 50):.2f} ms, p99 {percentile(conn, 99):.2f} ms")
    out("")


def _memory(opts: Options, res: Results, out: Callable[[str], None]) -> None:
    out(f"MEMORY  per tracked source, {opts.memory_sources:,} sources part-way through a sequence "
        "(address bytes included; 3 doors, 4 tracks)")
    for family in (4, 6):
        got = {m.method: m for m in res.mem if m.family == family}
        t, r = got["tracemalloc"], got["rss"]
        out(f"  IPv{family}: {t.per_source:.0f} bytes/source allocated (tracemalloc), {r.per_source:.0f} "
            f"bytes/source resident (RSS growth); {t.tracked:,} tracked")
    cap, fed, kept = res.bounded
    out(f"  bounded: {fed:,} sources fed to a table of max_sources = {cap:,}: {kept:,} tracked")
    worst = max((m.per_source for m in res.mem), default=0.0)
    out(f"  so the default max_sources (65,536) holds at most about {65536 * worst / 1e6:.0f} MB a worker")
    out("")


def _queue_drops(opts: Options, res: Results, out: Callable[[str], None]) -> None:
    w = opts.workers
    lat = res.latency
    out("QUEUE DROPS  /proc/net/netfilter/nfnetlink_queue: queue_dropped (queue full), "
        "queue_user_dropped (socket full)")
    runs = [("bare loop, 1 queue", res.bare), ("bare batch loop, 1 queue", res.bare_batch),
            ("gatekeeper, 1 worker", res.one),
            ("gatekeeper, 1 worker, metrics off", res.one_off),
            (f"bare loop, {w} queues", res.bare_many), (f"gatekeeper, {w} workers", res.many)]
    width = max(len(name) for name, _ in runs)
    for name, drains in runs:
        if drains:
            sent = sum(d.sent for d in drains)
            queued = sum(d.total for d in drains)
            refused = sum(d.refused for d in drains)
            out(f"  {name:<{width}} sent {sent:>9,}  queued {queued:>9,}  queue_dropped "
                f"{sum(d.queue_dropped for d in drains):>6,}  queue_user_dropped "
                f"{sum(d.user_dropped for d in drains):>6,}"
                + (f"  (and {refused:,} refused by the sender's own stack)" if refused else ""))
    out(f"  {'latency run':<{width}} sent {lat['sent']:>9,.0f}  queue_dropped {lat['queue_dropped']:,.0f}  "
        f"queue_user_dropped {lat['user_dropped']:,.0f}"
        + (f"  (and {lat['refused']:,.0f} refused by the sender's own stack)" if lat["refused"] else ""))
    out("  (sent but not queued: TCP headers under 4 bytes and ICMPv6 under 8, which the ruleset's "
        "own multiport and icmp6 matches drop before the queue)")
