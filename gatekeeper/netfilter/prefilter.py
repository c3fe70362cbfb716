"""The kernel prefilter (``[gatekeeper] prefilter = true``): a packet that cannot change a
decision is dropped in the kernel and counted there, never queued.

``GATEKEEPER-IN`` (and ``GATEKEEPER-FWD``, before each door host's queue rules) jumps to
``GATEKEEPER-PRE`` right before its queue rules. That chain RETURNs, to be queued as
without the prefilter, what may matter to the engine, and drops the rest:

* a packet that may start something for a source with no state: a first step of a plain
  door's open or close sequence, every port of a one-time sequence, an SPA port, an
  encrypted-sequence range (with ``[cluster]``: every step of every sequence, since a
  source's progress lives in the store and its earlier knocks may have crossed another
  gateway). The rule also puts the source into the *progress* set (``hash:ip``, its entry
  living ``progress_timeout`` seconds: longer than the engine keeps a source's state);
* anything from a source in the progress set: wrong knocks reset it, retransmits,
  the rest of a sequence, its first SYN after the last knock;
* with ``[cluster]``, packets to protected ports (the store lookup of another gateway's
  grant).

What the engine's scanner lockout no longer sees (the ports a source probes before its first
queued packet) the kernel counts instead: a source with no sequence in progress that sends
more than ``scan_limit`` dropped packets in a burst, refilled at ``scan_limit`` a window (the
longest ``sequence_timeout``; a ``hashlimit``), enters the *scanner* set for ``scan_lockout``
seconds, and every packet of it is dropped there, first steps included: a port sweep
cannot walk a sequence of consecutive ports.

The kernel's counters (``iptables-save -c``) are the scanner set's DROP (the chain's first
rule) and, for ``junk``, a rule with no target right after the last RETURN: it counts every
packet the chain drops from there on, including those the ``hashlimit`` match drops itself
when its table of sources is full (``xt_hashlimit`` then drops the packet before any rule
has counted it: under a random-source flood, a third of the junk went uncounted).
"""

from __future__ import annotations

import math
import threading

from gatekeeper.model import ICMP, PROTO_NAMES, SPA_ANY_PORTS, SPA_MIN_PAYLOAD, TCP, UDP, Config, Port

CHAIN_PRE = "GATEKEEPER-PRE"
SET_PROGRESS = {4: "gatekeeper-prog4", 6: "gatekeeper-prog6"}
SET_SCAN = {4: "gatekeeper-scan4", 6: "gatekeeper-scan6"}
SETS = (*SET_PROGRESS.values(), *SET_SCAN.values())
# A full progress set evicts a random entry (forceadd) rather than refuse new sources: a
# flood of first steps then costs each tracked source a small chance of being forgotten,
# where a set that refused would shut out every new client until the flood stopped.
PROGRESS_MAXELEM = 1 << 18
SCAN_MAXELEM = 1 << 16
# The kernel grows a hash set only when userspace adds to it: an add by a rule (SET) into a
# full bucket (at most 12 entries) fails silently. So both sets start with the buckets
# their largest size needs (about two entries a bucket when full): a source's first knock
# is then always remembered, or its next knocks would be dropped here.
PROGRESS_HASHSIZE = PROGRESS_MAXELEM // 2
SCAN_HASHSIZE = SCAN_MAXELEM // 2
HASHLIMIT_NAME = {4: "gatekeeper4", 6: "gatekeeper6"}  # at most 15 characters
_BURST_MAX = 10_000  # the kernel's XT_HASHLIMIT_BURST_MAX
CAUSES = ("junk", "scanner")
JUNK_COUNTER = f"-A {CHAIN_PRE} -m comment --comment gatekeeper-junk"  # no target: counts
_ECHO = {4: "-p icmp -m icmp --icmp-type 8", 6: "-p ipv6-icmp -m icmp6 --icmpv6-type 128"}
_ECHO_REPLY = {4: "-p icmp -m icmp --icmp-type 0", 6: "-p ipv6-icmp -m icmp6 --icmpv6-type 129"}
# The IP and transport headers in front of an SPA payload: with SPA_MIN_PAYLOAD, the floor
# of the length match of the transports other than "udp" (the IP packet's length)
_IP_HEADER = {4: 20, 6: 40}
_HEADER = {TCP: 20, UDP: 8, ICMP: 8}


def progress_timeout(config: Config) -> int:
    """Seconds a source stays in the progress set after its last first step: more than the
    engine keeps a source (its longest ``sequence_timeout`` + 1 s), so the engine sees every
    packet of every source it tracks."""
    longest = max((d.sequence_timeout for d in config.doors), default=5.0)
    return math.ceil(longest) + 2


def window(config: Config) -> float:
    """The scanner lockout's window: the longest ``sequence_timeout`` (as the engine's)."""
    return max((d.sequence_timeout for d in config.doors), default=5.0)


def scan_limit(config: Config) -> int:
    """``scan_limit``, or (0) the longest sequence + 3, as the engine counts it."""
    longest = max((len(s) for d in config.doors for s in (d.sequence, d.close_sequence)), default=1)
    return config.settings.scan_limit or max(1, longest) + 3


def entry_ports(config: Config) -> tuple[list[Port], list[tuple[int, int, int]]]:
    """(single ports, ranges as (proto, first, last)) whose packets may start something for
    a source with no state."""
    steps: set[Port] = set()
    ranges: list[tuple[int, int, int]] = []
    for door in config.doors:
        for seq in (door.sequence, door.close_sequence):
            if seq:
                steps.update(seq if config.cluster is not None else seq[:1])
        if door.spa is not None and "udp" in door.spa.transports:
            steps.add(Port(UDP, door.spa.port))
        if door.encrypted is not None:
            ranges += [(proto, door.encrypted.first, door.encrypted.last) for proto in (TCP, UDP)]
        if door.one_time is not None:
            steps.update(s for _, line in door.one_time.lines for s in line)
            steps.update(door.one_time.used)
    return sorted(steps, key=lambda s: (s.proto, s.port)), sorted(set(ranges))


def _matches(ports: list[Port], ranges: list[tuple[int, int, int]], family: int) -> list[str]:
    """iptables matches (as iptables-save prints them) for these ports: multiport chunks of
    15, a rule a range, every echo request when an ICMP step is among them."""
    out = []
    for proto in (TCP, UDP):
        numbers = [str(p.port) for p in ports if p.proto == proto]
        name = PROTO_NAMES[proto]
        out += [f"-p {name} -m multiport --dports {','.join(numbers[i:i + 15])}"
                for i in range(0, len(numbers), 15)]
        out += [f"-p {name} -m {name} --dport {lo}:{hi}" for p, lo, hi in ranges if p == proto]
    if any(p.proto == ICMP for p in ports):
        out.append(_ECHO[family])
    return out


def spa_matches(config: Config, family: int) -> list[str]:
    """iptables matches for the SPA-sized packets of the doors' transports other than
    "udp" (spa/transports.py): a TCP segment to spa_port (tcpraw), UDP to any port of
    SPA_ANY_PORTS (udp-any), an echo request or reply (icmp), each no shorter than the
    shortest SPA packet; shorter ones (a SYN, a plain knock, a ping) are not SPA."""
    sized = {p: f"-m length --length {_IP_HEADER[family] + h + SPA_MIN_PAYLOAD}:65535"
             for p, h in _HEADER.items()}
    out: list[str] = []
    for spa in (d.spa for d in config.doors if d.spa is not None):
        if "tcpraw" in spa.transports:
            out.append(f"-p tcp -m tcp --dport {spa.port} {sized[TCP]}")
        if "udp-any" in spa.transports:
            out.append(f"-p udp -m udp --dport {SPA_ANY_PORTS[0]}:{SPA_ANY_PORTS[1]} {sized[UDP]}")
        if "icmp" in spa.transports:
            out += [f"{_ECHO[family]} {sized[ICMP]}", f"{_ECHO_REPLY[family]} {sized[ICMP]}"]
    return list(dict.fromkeys(out))


def render_chain(config: Config, family: int) -> list[str]:
    """The rules of ``GATEKEEPER-PRE`` for one family (restore format, iptables-save's
    spelling, so the audit compares them as they come back)."""
    a = f"-A {CHAIN_PRE}"
    settings = config.settings
    lockout = settings.scan_lockout
    lines = [f"{a} -m set --match-set {SET_SCAN[family]} src -j DROP"] if lockout else []
    ports, ranges = entry_ports(config)
    entries = _matches(ports, ranges, family) + spa_matches(config, family)
    add = f"-j SET --add-set {SET_PROGRESS[family]} src --exist --timeout {progress_timeout(config)}"
    lines += [f"{a} {m} {add}" for m in entries]
    lines += [f"{a} {m} -j RETURN" for m in entries]
    if config.cluster is not None:
        opens = sorted({s for d in config.doors for s in d.opens}, key=lambda s: (s.proto, s.port))
        lines += [f"{a} {m} -j RETURN" for m in _matches(opens, [], family)]
    lines.append(f"{a} -m set --match-set {SET_PROGRESS[family]} src -j RETURN")
    lines.append(JUNK_COUNTER)
    if lockout:
        burst = min(scan_limit(config), _BURST_MAX)
        per_minute = max(1, math.ceil(burst * 60 / window(config)))
        expire = max(1000, math.ceil(window(config) * 1000))
        lines.append(
            f"{a} -m hashlimit --hashlimit-above {per_minute}/min --hashlimit-burst {burst} "
            f"--hashlimit-mode srcip --hashlimit-name {HASHLIMIT_NAME[family]} "
            f"--hashlimit-htable-max {SCAN_MAXELEM} --hashlimit-htable-expire {expire} "
            f"-j SET --add-set {SET_SCAN[family]} src --exist --timeout {lockout}")
    lines.append(f"{a} -j DROP")
    return lines


def render_sets() -> list[str]:
    """``ipset restore`` lines creating the progress and scanner sets."""
    lines = []
    for family, inet in ((4, "inet"), (6, "inet6")):
        lines.append(f"create {SET_PROGRESS[family]} hash:ip family {inet} hashsize {PROGRESS_HASHSIZE} "
                     f"maxelem {PROGRESS_MAXELEM} timeout 0 forceadd")
        lines.append(f"create {SET_SCAN[family]} hash:ip family {inet} hashsize {SCAN_HASHSIZE} "
                     f"maxelem {SCAN_MAXELEM} timeout 0")
    return lines


def parse_counters(family: int, saved: str) -> dict[str, int]:
    """Packets dropped by the prefilter, by cause, from ``iptables-save -c -t filter``."""
    rules = {JUNK_COUNTER: "junk",
             f"-A {CHAIN_PRE} -m set --match-set {SET_SCAN[family]} src -j DROP": "scanner"}
    out = dict.fromkeys(CAUSES, 0)
    for line in saved.splitlines():
        if line.startswith("[") and "] " in line:
            counts, _, rule = line.partition("] ")
            cause = rules.get(rule)
            if cause is not None:
                out[cause] += int(counts[1:].split(":", 1)[0])
    return out


class DropCounter:
    """The prefilter's drops as monotonic totals: a swap of the ruleset (a reload, a
    repair) starts the kernel's rule counters at 0 again, so a fall is taken for a reset
    and what was read before it is kept (packets between the last read and the reset are
    lost to the total)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # read by the metrics thread, updated before reloads
        self._last: dict[tuple[int, str], int] = {}
        self._base: dict[tuple[int, str], int] = {}

    def update(self, family: int, counts: dict[str, int]) -> None:
        with self._lock:
            for cause, n in counts.items():
                key = (family, cause)
                last = self._last.get(key, 0)
                if n < last:
                    self._base[key] = self._base.get(key, 0) + last
                self._last[key] = n

    def totals(self) -> dict[tuple[int, str], int]:
        with self._lock:
            return {(family, cause): self._base.get((family, cause), 0)
                    + self._last.get((family, cause), 0) for family in (4, 6) for cause in CAUSES}
