"""``gatekeeper soak``: a soak scenario whose roles run unchanged in VMs and in the lab.

Three roles each write one JSON record per line (a ``start`` record, then one record per
attempt, loop or sample, then an ``end`` record), flushed as they go:

* ``client``: knocks, connects at once with a 0.9 s timeout (below the first SYN
  retransmit, so a success means the very first SYN was accepted), sends a line, reads a
  line back, closes. Paced (``--interval``) and bounded in count and time. With
  ``--sources`` it rotates over several local addresses, so most attempts need a fresh
  grant rather than renewing a running one.
* ``attacker``: bounded, paced junk against the one gateway address it is given:
  connects to the protected port without a valid knock (each success is an
  *unauthorised accept*, which must never happen), after a replay of a partial
  sequence or of one with a wrong last step, a small scan of random ports, and a
  paced flood of UDP junk to random ports. Random ports never include the door's
  knock ports or the protected port.
* ``gateway``: once a second, memory (RSS, PSS) and open fds of the supervisor and its
  workers, tracked sources and grants from the control socket, and from the metrics
  endpoint the p99 verdict latency of the last interval, packet counters, grants made
  and kernel queue drops.

``report`` merges every ``*.jsonl`` of a directory into ``summary.json``, a summary on
stdout and ``soak.png``, and exits 1 when a check fails: an unauthorised accept, a
client success rate below 99 %, RSS growth beyond the bound, a role that did not
finish. ``lab`` runs the whole scenario in the namespace lab (needs root).

Each role is a module of this package (:mod:`~.client`, :mod:`~.attacker`, :mod:`~.gateway`,
:mod:`~.report` with :mod:`~.plot`, :mod:`~.lab`); :mod:`~.common` holds what they share.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from gatekeeper.errors import GatekeeperError
from gatekeeper.lab.soak.common import SoakError


def main(args: argparse.Namespace) -> int:
    role = args.role
    try:
        if role == "client":
            from gatekeeper.lab.soak.client import run_client

            return run_client(args.gateway, args.duration, args.sequence, args.port, args.out,
                              args.interval, args.timeout, args.sources, args.max_attempts)
        if role == "attacker":
            from gatekeeper.lab.soak.attacker import run_attacker

            return run_attacker(args.gateway, args.duration, args.out, args.sequence, args.port,
                                args.rate, args.max_loops, args.seed)
        if role == "gateway":
            from gatekeeper.lab.soak.gateway import run_gateway

            return run_gateway(args.duration, args.out, args.socket, args.metrics, args.interval)
        if role == "report":
            from gatekeeper.lab.soak.report import run_report

            return run_report(args.in_dir, args.out, args.min_success, args.max_rss_growth_mb,
                              args.max_rss_growth_pct)
        if role == "lab":
            from gatekeeper.lab.netns import LabError, Terminated
            from gatekeeper.lab.soak.lab import run_lab

            try:
                return run_lab(args.duration, args.out, args.sources, args.min_success,
                               args.max_rss_growth_mb, args.max_rss_growth_pct)
            except (LabError, subprocess.TimeoutExpired) as exc:
                print(f"gatekeeper soak lab: FAILED: lab: {exc}", file=sys.stderr, flush=True)
                return 1
            except KeyboardInterrupt as exc:
                print("gatekeeper soak lab: interrupted; the lab was removed", file=sys.stderr,
                      flush=True)
                return 143 if isinstance(exc, Terminated) else 130
    except GatekeeperError:
        raise
    except OSError as exc:
        raise SoakError(f"soak {role}: {exc}") from None
    raise SoakError(f"soak: unknown role {role!r}")
