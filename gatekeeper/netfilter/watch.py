"""Re-audit the running ruleset, so that other programs' rules cannot get ahead of gatekeeper.

Docker, fail2ban, ufw and others insert rules at the top of INPUT and FORWARD while
gatekeeper runs; one ``-I INPUT 1 ... -j ACCEPT`` ahead of our jump opens the protected
port to the world. So the supervisor's loop calls :meth:`RulesetWatch.poll`, which every
``audit_interval`` seconds (default 1) reads ``iptables-save`` and ``ip6tables-save``
(about 4 ms for both, measured) and compares them with what gatekeeper installed
(:func:`gatekeeper.netfilter.audit.tampering`).

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

import logging
import time
from collections.abc import Callable
from typing import Any

from gatekeeper.config import Config
from gatekeeper.errors import GatekeeperError
from gatekeeper.netfilter.audit import Finding, tampering
from gatekeeper.netfilter.install import Installer
from gatekeeper.netfilter.render import Ruleset, render

log = logging.getLogger(__name__)

FAMILIES = (4, 6)
REPEAT_SECONDS = 60.0  # a finding that lasts (or keeps coming back) is logged again this often


class RulesetWatch:
    def __init__(self, installer: Installer, config: Callable[[], Config],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._installer = installer
        self._config = config  # the config in force (a reload changes it)
        self._clock = clock
        self._rendered: tuple[Config, Ruleset] | None = None
        self._next = 0.0
        self._logged: dict[str, float] = {}  # finding or repair line -> when it was last logged
        self.findings: dict[int, list[Finding]] = {f: [] for f in FAMILIES}
        self.repairs: dict[int, int] = {f: 0 for f in FAMILIES}
        self.audited: float | None = None  # clock() of the last audit

    def _ruleset(self, config: Config) -> Ruleset:
        if self._rendered is None or self._rendered[0] is not config:
            self._rendered = (config, render(config))
        return self._rendered[1]

    def poll(self) -> None:
        """Audit if one is due; the supervisor calls this from its loop."""
        now = self._clock()
        if now >= self._next:
            self._next = now + self._config().settings.audit_interval
            self.audit()

    def _read(self, config: Config, ruleset: Ruleset) -> dict[int, list[Finding]]:
        found: dict[int, list[Finding]] = {}
        for family, rendered in ((4, ruleset.ipv4), (6, ruleset.ipv6)):
            try:
                saved = self._installer.saved(family)
            except GatekeeperError as exc:
                found[family] = [Finding(family, f"IPv{family}: cannot read the ruleset, so it "
                                         f"is not audited: {exc}", False)]
                continue
            found[family] = tampering(config, family, saved, rendered)
        return found

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
        now = self._clock()
        if now - self._logged.get(line, -REPEAT_SECONDS) >= REPEAT_SECONDS:
            self._logged = {k: t for k, t in self._logged.items() if now - t < REPEAT_SECONDS}
            self._logged[line] = now
            log.log(level, "%s", line)

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
            "audited": None if self.audited is None else round(self._clock() - self.audited, 1),
            "repairs": {str(f): n for f, n in self.repairs.items()},
            "problems": [x.text for f in FAMILIES for x in self.findings[f]],
        }
