"""``gatekeeper run``: one supervisor process over N forked NFQUEUE workers.

Start-up leaves nothing behind on failure: config validated, privileges and tools
checked, every worker bound to its queue (an error if another program holds one), and
only then are the sets and rules installed, in one transaction per family.

While running, the supervisor restarts a worker that dies (the kernel drops what was
queued to it meanwhile: no bypass, fail closed), keeps the grant book (log lines,
commands, expiry), reloads on SIGHUP and removes everything on SIGTERM/SIGINT.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import signal
import time
from types import FrameType
from typing import Any

import gatekeeper.config.load as config_mod
from gatekeeper import __version__
from gatekeeper import messages as msg
from gatekeeper.daemon import systemd
from gatekeeper.daemon.commands import CommandRunner
from gatekeeper.daemon.control import ControlServer
from gatekeeper.daemon.grantbook import GrantBook
from gatekeeper.daemon.workers import WorkerHandle, WorkerPool
from gatekeeper.errors import GatekeeperError
from gatekeeper.metrics import GatekeeperCollector, Stats
from gatekeeper.netfilter.audit import audit
from gatekeeper.netfilter.install import Installer
from gatekeeper.netfilter.interfaces import LinkWatcher, require_present
from gatekeeper.netfilter.nat import require_forwarding
from gatekeeper.netfilter.prefilter import DropCounter
from gatekeeper.netfilter.render import render
from gatekeeper.netfilter.watch import RulesetWatch

log = logging.getLogger("gatekeeper")

BURST_SECONDS = 10.0  # failed knocks are summed over this long ...
BURST_MIN = 20  # ... and one line is logged when at least this many failed
FAILED = ("reset", "timeout", "locked")
EXPIRE_SECONDS = 0.5


def refusal_line(refused: msg.Refused) -> str:
    """The log line of a refused SPA packet: one a fail2ban filter can match
    (``address=<HOST>``), naming what the worker held back before it."""
    more = f" ({refused.withheld} more refused, not logged)" if refused.withheld else ""
    return f"spa refused door={refused.door} address={refused.address} stage={refused.stage}{more}"


class Supervisor(WorkerPool):
    def __init__(self, path: str) -> None:
        self.path = path
        self.config = config_mod.load(path)
        self.installer = Installer()
        self.commands = CommandRunner()
        self.book = GrantBook(self.config, self.commands)
        self.workers: dict[int, WorkerHandle] = {}  # by queue number
        self.stats = Stats()
        self._report_r, self._report_w = os.pipe()
        os.set_blocking(self._report_r, False)
        self._buffer = b""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._signals: list[int] = []
        self._stopping = False
        self._running = False
        self._started = time.monotonic()
        self.control: ControlServer | None = None
        self._failed_seen: dict[tuple[str, str], int] = {}
        self._next_burst = time.monotonic() + BURST_SECONDS
        self.mirror: Any = None  # [cluster]: gatekeeper.cluster.mirror.Mirror (a thread)
        self._notes: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.links = LinkWatcher()  # the guarded interfaces, polled from the loop
        self.watch = RulesetWatch(self.installer, lambda: self.config, self._wake_w)  # others' rules
        self.prefilter = DropCounter()  # the kernel prefilter's drops, kept over ruleset swaps

    # -- reports from workers -----------------------------------------------------------

    def _on_report(self, sender: msg.Sender, message: msg.Message) -> None:
        handle = self.workers.get(sender.queue)
        if handle is not None and handle.pid != sender.pid:
            handle = None  # from a worker that has since been replaced
        now = time.monotonic()
        if isinstance(message, msg.Ready) and handle is not None:
            handle.ready = True
            handle.adopted = message.adopted
            if handle.down_since is not None:
                now_count = self.installer.queue_counters().get(handle.queue, 0)
                self.stats.dropped_while_down(handle.queue, now_count - handle.down_since)
                handle.down_since = None
            # at start-up, quiet: a failed start prints one line, the error
            log.log(logging.INFO if self._running else logging.DEBUG,
                    "worker %d started: pid %d, NFQUEUE %d%s", handle.index, sender.pid, sender.queue,
                    f", adopted {message.adopted} grant(s)" if message.adopted else "")
        elif isinstance(message, msg.Failed) and handle is not None:
            handle.error = message.message
        elif isinstance(message, msg.Stats):
            self.stats.worker_snapshot(sender.pid, message.wire())
        elif isinstance(message, msg.Granted):
            self.book.granted(message.address, message.door, message.seconds, now, message.error,
                              message.opens)
            self.stats.granted(message.door)
        elif isinstance(message, msg.Revoked):
            self.book.revoked(message.address, message.door, message.cause, message.error,
                              message.opens)
        elif isinstance(message, msg.Used):
            self._sequence_used(message)
        elif isinstance(message, msg.Command):
            self._server_command(message)
        elif isinstance(message, msg.Refused):
            log.warning("%s", refusal_line(message))
        elif isinstance(message, msg.Reloaded):
            log.debug("worker %d reloaded", sender.worker)

    # -- signals and the loop -----------------------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals.append(signum)

    def _wait(self, timeout: float) -> None:
        fds = [self._report_r, self._wake_r] + ([self.control.fileno()] if self.control else [])
        ready, _, _ = select.select(fds, [], [], timeout)
        if self.control is not None and self.control.fileno() in ready:
            self.control.handle()
        if self._wake_r in ready:
            try:
                os.read(self._wake_r, 512)
            except BlockingIOError:
                pass
        if self._report_r in ready:
            self._read_reports()

    def run(self) -> int:
        require_present(self.config)  # a rule for an absent interface would guard nothing
        require_forwarding(self.config)  # spa_nat: DNATed packets must be forwarded
        self.installer.preflight()
        if self.config.cluster is not None:
            from gatekeeper.cluster.store import require_client

            require_client()
        signal.set_wakeup_fd(self._wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)
        try:
            self._compact_replay_logs()
            self._start_workers(self.config, list(self.config.settings.queues))
            installed = False
            try:
                self._serve_metrics()  # before the rules: a busy port leaves nothing behind
                if self.config.settings.control:
                    self.control = ControlServer(self.config.settings.control, self.status)
                ruleset = render(self.config)
                problems = audit(self.config, ruleset)
                if problems:
                    raise GatekeeperError(f"refusing to run: {problems[0]}")
                self.installer.install(ruleset, self.config)
                installed = self._running = True
                self._adopt()
                self._start_mirror()
                log.info("gatekeeper running: queues=%s pids=%s interfaces=%s doors=%s metrics=%s",
                         ",".join(map(str, self.config.settings.queues)),
                         ",".join(str(self.workers[q].pid) for q in self.config.settings.queues),
                         ",".join(self.config.settings.interfaces) or "all but lo",
                         ",".join(d.name for d in self.config.doors),
                         f"http://{self.config.metrics.listen}/metrics" if self.config.metrics.listen
                         else "off")
                systemd.notify("READY=1", "STATUS=verdicting")
                self._loop()
            finally:
                self._stopping = True
                systemd.notify("STOPPING=1")
                if self.mirror is not None:
                    self.mirror.stop()
                self._stop_workers(list(self.workers.values()))
                if installed:
                    self.installer.remove()
                    log.info("rules, chains and sets removed")
                if self.control is not None:
                    self.control.close()
        finally:
            self.book.end_all("stopped")  # the sets are gone: stop_commands undo the starts
            self.commands.shutdown(wait=True)
            signal.set_wakeup_fd(-1)
        return 0

    def _compact_replay_logs(self) -> None:
        from gatekeeper.daemon import replaylog

        state_dir = self.config.settings.state_dir
        for door in self.config.doors:
            if state_dir and (door.spa is not None or door.encrypted is not None):
                try:
                    replaylog.compact(state_dir, door.name)
                except OSError as exc:
                    log.error("replay log of door %s: cannot compact (%s)", door.name, exc.strerror)

    def _adopt(self) -> None:
        from gatekeeper.netfilter.grantset import GrantSets

        sets = GrantSets()
        try:
            now = time.monotonic()
            adopted = sum(self.book.adopt(e.address, e.door, e.timeout, now,
                                          None if e.step is None else str(e.step))
                          for e in sets.list())
        finally:
            sets.close()
        if adopted:
            log.info("adopted %d running grant(s) from the kernel set", adopted)

    # -- [cluster] ------------------------------------------------------------------------

    def _start_mirror(self) -> None:
        """Mirror the grants of every gateway into this one's kernel sets (a thread with
        its own netlink sockets; what it mirrored reaches the book through _notes)."""
        if self.config.cluster is None:
            return
        from gatekeeper.cluster.gate import node_name
        from gatekeeper.cluster.mirror import Mirror
        from gatekeeper.netfilter.grantset import GrantSets

        def notify(note: tuple[Any, ...]) -> None:
            self._notes.put(note)
            try:
                os.write(self._wake_w, b"m")
            except OSError:
                pass

        self.mirror = Mirror(self.config, node_name(os.getpid()), GrantSets(), notify, stats=self.stats)
        self.mirror.start()

    def _mirrored(self) -> None:
        """Grants and revocations the mirror wrote into the kernel sets: into the book,
        and a revocation to every worker (whose engine may hold that grant too)."""
        now = time.monotonic()
        while True:
            try:
                note = self._notes.get_nowait()
            except queue.Empty:
                return
            if note[0] == "grant":
                _, address, door, seconds, opens = note
                entry = self.book.entries.get((address, door))
                if entry is not None and all(entry.ports.get(p, 0.0) >= now + seconds - 1.0
                                             for p in opens):
                    continue  # already known here (made by a worker of this gateway)
                self.book.granted(address, door, seconds, now, opens=opens, mirrored=True)
                self.stats.cluster_mirrored += 1
            elif note[0] == "revoke":
                _, address, door = note
                self.book.revoked(address, door, "closed")
                for handle in self.workers.values():
                    self.send(handle, msg.Forget(address, door))

    def _cluster_state(self) -> str:
        if self.mirror is None:
            return "off"
        return "up" if self.mirror.up else "down"

    def _serve_metrics(self) -> None:
        from gatekeeper import metrics

        listen = self.config.metrics.listen
        if not listen:
            return

        def active() -> dict[str, int]:
            counts: dict[str, int] = {}
            for _, door, _, _ in self.book.active(time.monotonic()):
                counts[door] = counts.get(door, 0) + 1
            return counts

        collector = GatekeeperCollector(
            self.stats, active, lambda: len(self.workers), lambda: [d.name for d in self.config.doors],
            self._spa_doors, self._cluster_state, self.links.rows,
            commands_dropped=self.commands.dropped, ruleset=self.watch.figures,
            prefilter=self.prefilter_dropped,
        )
        try:
            metrics.serve(collector, listen)
        except OSError as exc:
            raise GatekeeperError(f"metrics.listen {listen}: cannot listen ({exc.strerror}); "
                                  "choose another address or set listen = \"\"") from None

    def prefilter_dropped(self) -> dict[tuple[int, str], int]:
        """What the kernel prefilter dropped, by (family, cause), read now."""
        if self.config.settings.prefilter:
            for family, counts in self.installer.prefilter_counters().items():
                self.prefilter.update(family, counts)
        return self.prefilter.totals()

    def _spa_doors(self) -> dict[str, tuple[str, ...]]:
        from gatekeeper.engine.special import SEQUENCE_STAGES, SPA_STAGES

        return {d.name: SPA_STAGES if d.spa is not None else SEQUENCE_STAGES
                for d in self.config.doors if d.spa is not None or d.encrypted is not None}

    def _loop(self) -> None:
        while True:
            self.watch.poll()  # first thing: the ruleset as installed is audited at once
            self._wait(EXPIRE_SECONDS)
            self.links.poll(self.config.settings)
            self._mirrored()
            while self._signals:
                # a stop first: a SIGCHLD of an iptables-save ahead of it must not reap (and
                # restart) a worker that the same SIGTERM, sent to the whole group, stopped
                stops = [i for i, s in enumerate(self._signals) if s in (signal.SIGTERM, signal.SIGINT)]
                sig = self._signals.pop(stops[0] if stops else 0)
                if sig in (signal.SIGTERM, signal.SIGINT):
                    log.info("received %s: stopping", signal.Signals(sig).name)
                    return
                if sig == signal.SIGHUP:
                    self.reload()
                elif sig == signal.SIGCHLD:
                    self._reap()
            self.book.expire(time.monotonic())
            self.stats.sample_queues()
            if time.monotonic() >= self._next_burst:
                self._log_failed_bursts()

    def _log_failed_bursts(self) -> None:
        """One line per door whose failed knocks came in a burst (brute force, a scan,
        a client that gets its sequence wrong), never one line per packet."""
        self._next_burst = time.monotonic() + BURST_SECONDS
        knocks = self.stats.total().knocks
        for door in self.config.doors:
            delta = {}
            for outcome in FAILED:
                key = (door.name, outcome)
                delta[outcome] = knocks.get(key, 0) - self._failed_seen.get(key, 0)
                self._failed_seen[key] = knocks.get(key, 0)
            if sum(delta.values()) >= BURST_MIN:
                log.warning("failed knocks door=%s count=%d in %gs (%s)", door.name,
                            sum(delta.values()), BURST_SECONDS,
                            ", ".join(f"{k} {v}" for k, v in delta.items() if v))

    # -- status -------------------------------------------------------------------------

    def status(self, request: str) -> dict[str, Any]:
        """The answer to ``gatekeeper status``, from the daemon's own state."""
        if request != "status":
            return {"error": f"unknown request {request!r}"}
        from gatekeeper.engine import Guard
        from gatekeeper.metrics import REASON_LABELS, read_queues

        now = time.monotonic()
        queues = read_queues()
        total = self.stats.total()
        return {
            "version": __version__,
            "config": self.path,
            "uptime": now - self._started,
            "restarts": self.stats.restarts,
            "bad_reports": self.stats.bad_reports,
            "reloads": dict(self.stats.reloads),
            "workers": [
                {"index": h.index, "pid": h.pid, "queue": q,
                 "waiting": queues.get(q, {}).get("waiting", 0),
                 "tracked": self.stats.tracked(h.pid)}
                for q, h in sorted(self.workers.items())
            ],
            "doors": [
                {"name": d.name, "knocks": len(d.sequence), "opens": [str(s) for s in d.opens],
                 "host": str(d.host) if d.host else "", "open_for": d.open_for}
                for d in self.config.doors
            ],
            "grants": [{"address": a, "door": d, "opens": list(p), "remaining": round(r, 1)}
                       for a, d, p, r in self.book.active(now)],
            "packets": {reason: n for (_, reason), n in zip(REASON_LABELS, total.counts, strict=True)},
            "defences": {g.name.lower(): n for g, n in zip(Guard, total.guards, strict=True)},
            "spa": {door: {stage: n for (d, stage), n in sorted(total.spa.items()) if d == door}
                    for door in sorted({d for d, _ in total.spa})},
            "cluster": self._cluster_status(total),
            "interfaces": self.links.status(self.config.settings),
            "ruleset": self.watch.status(),
            "prefilter": {"on": self.config.settings.prefilter,
                          "dropped": {f"{cause}{family}": n
                                      for (family, cause), n in self.prefilter_dropped().items()}},
        }

    def _cluster_status(self, total: Any) -> dict[str, Any]:
        if self.mirror is None:
            return {"state": "off"}
        return {"state": self._cluster_state(), **self.mirror.status(),
                "errors": total.cluster_errors, "fallbacks": dict(total.cluster_fallbacks),
                "workers_up": total.cluster_workers_up}

    # -- one-time sequences -------------------------------------------------------------

    def _sequence_used(self, used: msg.Used) -> None:
        """A worker used a one-time sequence and marked its line in the file (before the
        grant: a restart never revives it); reload, so the file is read again."""
        if used.error:
            log.error("door %s: one-time sequence completed but line %s of %s could not be "
                      "marked used: %s; no grant made", used.door, used.line, used.path,
                      used.error)
            return
        log.info("one-time sequence used: door=%s file=%s line=%s", used.door, used.path,
                 used.line)
        self.reload()

    def _server_command(self, asked: msg.Command) -> None:
        """Run the argv the door maps an SPA server command to, as the config in force now
        says (a worker only names the command; one the config no longer has is not run)."""
        door = next((d for d in self.config.doors if d.name == asked.door), None)
        argv = door.spa.command(asked.command) if door is not None and door.spa else None
        if door is None or argv is None:
            log.error("spa command not run: door=%s address=%s command=%r is not in the door's "
                      "spa_commands now", asked.door, asked.address, asked.command)
            return
        log.info("spa command: door=%s address=%s command=%r", door.name, asked.address,
                 asked.command)
        self.commands.server(asked.address, door, argv)

    # -- reload -------------------------------------------------------------------------

    def reload(self) -> None:
        systemd.reloading()
        try:
            self._reload()
        except GatekeeperError as exc:
            self.stats.reloads["refused"] += 1
            log.error("reload refused, the running config stays in force: %s", exc)
        systemd.notify("READY=1", "STATUS=verdicting")

    def _reload(self) -> None:
        new = config_mod.load(self.path)
        require_present(new)
        require_forwarding(new)
        old_queues = set(self.workers)
        new_queues = list(new.settings.queues)
        added = [q for q in new_queues if q not in old_queues]
        removed = [self.workers[q] for q in sorted(old_queues - set(new_queues))]
        if added:
            self._start_workers(new, added)  # raises, having stopped them, if any fails
        try:
            ruleset = render(new)
            problems = audit(new, ruleset)
            if problems:
                raise GatekeeperError(f"refusing the new ruleset: {problems[0]}")
            self.prefilter_dropped()  # the swap starts the kernel's counters at 0
            self.installer.replace(ruleset)
        except GatekeeperError:
            self._stop_workers([self.workers[q] for q in added if q in self.workers])
            raise
        for q in new_queues:
            if q not in added and q in self.workers:
                self.send(self.workers[q], msg.Reload(new.text, new.path))
        self._stop_workers(removed)
        self.config = new
        self.book.set_config(new)
        if self.mirror is not None:
            self.mirror.set_config(new)
        self.stats.reloads["ok"] += 1
        log.info("reloaded %s: queues=%s doors=%s", self.path, ",".join(map(str, new_queues)),
                 ",".join(d.name for d in new.doors))


def run(path: str) -> int:
    return Supervisor(path).run()
