"""Re-audit the running ruleset, so that other programs' rules cannot get ahead of gatekeeper.

Docker, fail2ban, ufw and others insert rules at the top of INPUT and FORWARD while
gatekeeper runs; one ``-I INPUT 1 ... -j ACCEPT`` ahead of our jump opens the protected
port to the world. So the supervisor's loop calls :meth:`RulesetWatch.poll`, which every
``audit_interval`` seconds (default 1) reads ``iptables-save`` and ``ip6tables-save``
(about 4 ms for both, measured) and compares them with what gatekeeper installed
(:func:`gatekeeper.netfilter.audit.tampering`).

Between audits, a change is noticed at once: a thread listens to the kernel's nf_tables
change notifications (the netlink group NFNLGRP_NFTABLES, which iptables-nft writes
through) and wakes the loop, which audits then; the periodic audit stays as the backstop
(a lost notification, an iptables-legacy kernel). Grants (ipset) notify nothing here.

A finding is logged once, as one line naming the rule (again at most once a minute while
it lasts), ``gatekeeper_ruleset_intact{family}`` reads 0 and ``gatekeeper status`` shows
it. With ``ruleset_repair = true`` (the default) the rendered ruleset is swapped back in
(``Installer.replace``: one ``iptables-restore`` transaction a family), which puts our
jumps first again and our chains as rendered, and leaves the other program's rule where
it is, behind ours; ``gatekeeper_ruleset_repairs_total{family}`` counts the repairs.
``ruleset_repair = false`` only reports. Another program's queue rule with a bypass flag
is reported, never removed: it is not ours to delete.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from gatekeeper.errors import GatekeeperError
from gatekeeper.model import Config
from gatekeeper.netfilter.audit import Finding, tampering
from gatekeeper.netfilter.install import Installer
from gatekeeper.netfilter.render import Ruleset, render

log = logging.getLogger(__name__)

FAMILIES = (4, 6)
REPEAT_SECONDS = 60.0  # a finding that lasts (or keeps coming back) is logged again this often
# A burst of changes (Docker writing its chains) audits at most this often.
BURST_SPACING = 0.05
_NETLINK_NETFILTER = 12
_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP = 270, 1
_NFNLGRP_NFTABLES = 7


def _subscribe() -> socket.socket | None:
    """A netlink socket that receives every nf_tables change of this network namespace."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             _NETLINK_NETFILTER)
        sock.bind((0, 0))
        sock.setsockopt(_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, _NFNLGRP_NFTABLES)
    except OSError as exc:
        log.info("ruleset: no nf_tables change notifications (%s); auditing every "
                 "audit_interval only", exc.strerror or exc)
        return None
    return sock


class RulesetWatch:
    def __init__(self, installer: Installer, config: Callable[[], Config], wake_fd: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._installer = installer
        self._config = config  # the config in force (a reload changes it)
        self._clock = clock
        self._wake_fd = wake_fd  # written to when the kernel reports a change (None: poll only)
        self._changed = threading.Event()
        self._listening = False
        self.notified = False  # the kernel's change notifications are heard
        self._rendered: tuple[Config, Ruleset] | None = None
        self._next = 0.0
        self._logged: dict[str, tuple[float, int]] = {}  # line -> (last logged, times since)
        self.findings: dict[int, list[Finding]] = {f: [] for f in FAMILIES}
        self.repairs: dict[int, int] = {f: 0 for f in FAMILIES}
        self.audited: float | None = None  # clock() of the last audit

    def _ruleset(self, config: Config) -> Ruleset:
        if self._rendered is None or self._rendered[0] is not config:
            self._rendered = (config, render(config))
        return self._rendered[1]

    def poll(self) -> None:
        """Audit if one is due or the kernel reported a change; the supervisor calls this
        from its loop (the first call starts listening for changes)."""
        if not self._listening and self._wake_fd is not None:
            self._listening = True
            sock = _subscribe()
            if sock is not None:
                self.notified = True
                threading.Thread(target=self._listen, args=(sock,), name="ruleset-watch",
                                 daemon=True).start()
        now = self._clock()
        spaced = self.audited is None or now - self.audited >= BURST_SPACING
        if now >= self._next or (self._changed.is_set() and spaced):
            self._changed.clear()  # before the audit: a change during it audits again
            self._next = now + self._config().settings.audit_interval
            self.audit()

    def _listen(self, sock: socket.socket) -> None:
        assert self._wake_fd is not None
        while True:
            try:
                sock.recv(1 << 16)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:  # ENOBUFS: notifications lost, so audit
                    log.warning("ruleset: change notifications stopped (%s); auditing every "
                                "audit_interval only", exc.strerror or exc)
                    self.notified = False
                    return
            self._changed.set()
            audited = self.audited
            if audited is not None:  # wake the loop when poll() will audit, not before
                time.sleep(max(0.0, min(BURST_SPACING, audited + BURST_SPACING - self._clock())))
            try:
                os.write(self._wake_fd, b"r")
            except OSError:
                pass  # the pipe is full: the loop is awake anyway

    def _read(self, config: Config, ruleset: Ruleset) -> dict[int, list[Finding]]:
        found: dict[int, list[Finding]] = {}
        for family, rendered in ((4, ruleset.ipv4), (6, ruleset.ipv6)):
            try:
                saved = self._saved(family)
            except GatekeeperError as exc:
                found[family] = [Finding(family, f"IPv{family}: cannot read the ruleset, so it "
                                         f"is not audited: {exc}", False)]
                continue
            found[family] = tampering(config, family, saved, rendered)
        return found

    def _saved(self, family: int) -> str:
        """iptables-save, tried twice: a stop signal sent to the whole process group (systemd
        does that) kills the one running then, and that is no finding."""
        try:
            return self._installer.saved(family)
        except GatekeeperError:
            return self._installer.saved(family)

    def audit(self) -> None:
        config = self._config()
        ruleset = self._ruleset(config)
        found = self._read(config, ruleset)
        self._report(found)
        broken = [f for f in FAMILIES if any(x.repairable for x in found[f])]
        if broken and config.settings.ruleset_repair:
            try:
                self._installer.replace(ruleset)
            except GatekeeperError as exc:
                self._once(logging.ERROR, f"ruleset repair failed, guarded traffic may still "
                           f"bypass gatekeeper: {exc}")
            else:
                for family in broken:
                    self.repairs[family] += 1
                self._once(logging.WARNING, "ruleset repaired ("
                           + ", ".join(f"IPv{f}" for f in broken) + "): gatekeeper's jumps are "
                           "first in INPUT/FORWARD and its chains as installed again; the other "
                           "rules stay, behind them")
                found = self._read(config, ruleset)
                self._report(found)
        self.findings = found
        self.audited = self._clock()

    def _report(self, found: dict[int, list[Finding]]) -> None:
        was_intact = self.intact()
        for finding in (x for f in FAMILIES for x in found[f]):
            self._once(logging.ERROR, f"ruleset: {finding.text}"
                       + ("" if finding.repairable else "; not gatekeeper's to repair"))
        if not was_intact and not any(found.values()):
            log.info("ruleset intact again: gatekeeper's jumps are first and its chains as installed")

    def _once(self, level: int, line: str) -> None:
        """Log ``line``, unless it was logged less than REPEAT_SECONDS ago: then count it, and
        say how often it came in the meantime when it is logged next."""
        now = self._clock()
        last, times = self._logged.get(line, (now - REPEAT_SECONDS, 0))
        if now - last < REPEAT_SECONDS:
            self._logged[line] = (last, times + 1)
            return
        self._logged = {k: v for k, v in self._logged.items() if now - v[0] < REPEAT_SECONDS}
        self._logged[line] = (now, 0)
        log.log(level, "%s%s", line, f" (and {times} more time(s) in the last {now - last:.0f} s)"
                if times else "")

    # -- what the supervisor reports ------------------------------------------------------

    def intact(self, family: int | None = None) -> bool:
        return not any(self.findings[f] for f in ((family,) if family else FAMILIES))

    def figures(self) -> dict[int, tuple[bool, int]]:
        """For the metrics: by family, (intact, repairs made)."""
        return {f: (self.intact(f), self.repairs[f]) for f in FAMILIES}

    def status(self) -> dict[str, Any]:
        settings = self._config().settings
        return {
            "intact": self.intact(),
            "repair": settings.ruleset_repair,
            "interval": settings.audit_interval,
            "on_change": self.notified,
            "audited": None if self.audited is None else round(self._clock() - self.audited, 1),
            "repairs": {str(f): n for f, n in self.repairs.items()},
            "problems": [x.text for f in FAMILIES for x in self.findings[f]],
        }
