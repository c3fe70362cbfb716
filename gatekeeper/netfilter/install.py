"""Install and remove the rendered ruleset: atomically per table, completely on removal.

Rules go in with ``iptables-restore --noflush``, one transaction per family that
swaps our chains and jumps for the new ones: at start (over the leftovers of a killed
run) and on reload alike, a guarded packet meets either the old rules or the new,
never neither. A failed first start takes out what went in, so it leaves nothing
behind; a failed start over leftovers leaves them in force (they queue to no reader:
guarded traffic is dropped) and says so. Removal reads back what is installed and
deletes every jump to our chains, then the chains, then the sets.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

from gatekeeper.errors import GatekeeperError
from gatekeeper.model import Config
from gatekeeper.netfilter import nat, prefilter
from gatekeeper.netfilter.audit import audit_text
from gatekeeper.netfilter.render import CHAINS, SET_FWD, SET_IN, Ruleset, render_removal, render_swap

log = logging.getLogger(__name__)

_TOOLS = {
    4: ("iptables-save", "iptables-restore"),
    6: ("ip6tables-save", "ip6tables-restore"),
}
_CAP_NET_ADMIN = 12
_BUILTINS = {
    "filter": (":INPUT ACCEPT", ":FORWARD ACCEPT", ":OUTPUT ACCEPT"),
    "nat": (":PREROUTING ACCEPT", ":INPUT ACCEPT", ":OUTPUT ACCEPT", ":POSTROUTING ACCEPT"),
}


def has_net_admin() -> bool:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        raise GatekeeperError(f"{argv[0]}: not found; install the iptables and ipset packages") from None
    except subprocess.TimeoutExpired:
        raise GatekeeperError(f"{argv[0]}: did not answer within 30 s") from None


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if lines else "no message"


class Installer:
    """Owns gatekeeper's chains, jumps and sets in the current network namespace."""

    def __init__(self) -> None:
        self._created_table: dict[int, bool] = {4: False, 6: False}
        self._created_nat: dict[int, bool] = {4: False, 6: False}  # spa_nat's nat table

    def preflight(self) -> None:
        if not has_net_admin():
            raise GatekeeperError("need CAP_NET_ADMIN to manage netfilter: run as root")
        for tool in (*_TOOLS[4], *_TOOLS[6], "ipset"):
            if shutil.which(tool) is None:
                raise GatekeeperError(f"{tool}: not found; install the iptables and ipset packages")

    def saved(self, family: int, table: bool = True) -> str:
        """``iptables-save -t filter``; with ``table=False`` plain ``iptables-save``, which
        (unlike ``-t filter`` on nf_tables) prints no filter table that does not exist."""
        result = _run([_TOOLS[family][0], "-t", "filter"] if table else [_TOOLS[family][0]])
        if result.returncode != 0:
            raise GatekeeperError(f"{_TOOLS[family][0]}: {_first_line(result.stderr)}")
        return result.stdout

    def _restore(self, family: int, text: str) -> None:
        result = _run([_TOOLS[family][1], "--noflush"], text)
        if result.returncode != 0:
            raise GatekeeperError(
                f"{_TOOLS[family][1]} rejected the ruleset ({_first_line(result.stderr)}); "
                "check that the kernel has NFQUEUE, conntrack, multiport and set matches "
                "(see 'gatekeeper rules')"
            )

    def verify(self, config: Config) -> None:
        """Audit what the kernel now holds, the admin's rules included."""
        problems = [p for family in (4, 6) for p in audit_text(config, family, self.saved(family))]
        if problems:
            raise GatekeeperError(f"refusing to run: {problems[0]}")

    def install(self, ruleset: Ruleset, config: Config | None = None) -> None:
        """Install sets, then IPv4 and IPv6 rules, each family in one swap over whatever
        an earlier run left, then audit them (when ``config`` is given). On failure a
        first start removes what went in; over leftovers, the rules stay (fail closed)."""
        saved = {family: self.saved(family, table=False) for family in (4, 6)}
        leftovers = any(f":{c} " in text for text in saved.values() for c in (*CHAINS, nat.CHAIN_NAT))
        for family in (4, 6):
            tables = {line[1:].strip() for line in saved[family].splitlines() if line.startswith("*")}
            self._created_table[family] = "filter" not in tables
            self._created_nat[family] = "nat" not in tables
        try:
            self._create_sets(ruleset)
            self._swap(4, ruleset.ipv4)
            self._swap(6, ruleset.ipv6)
            if config is not None:
                self.verify(config)
        except GatekeeperError as exc:
            if not leftovers:
                self.remove()
                raise
            raise GatekeeperError(
                f"{exc}; gatekeeper's rules stay installed, the earlier run's where this one's "
                "did not go in (guarded traffic is dropped until gatekeeper runs again; "
                "stopping a gatekeeper run removes them)"
            ) from None
        if leftovers:
            log.warning("replaced the rules left by an earlier gatekeeper run that did not stop "
                        "cleanly, in one transaction per family")

    def _create_sets(self, ruleset: Ruleset) -> None:
        """Create the grant sets; existing ones keep their entries (running grants)."""
        result = _run(["ipset", "restore", "-exist"], ruleset.ipset)
        if result.returncode != 0:
            raise GatekeeperError(
                f"ipset: cannot create the grant sets ({_first_line(result.stderr)}); "
                "is the ip_set kernel module available?"
            )

    def queue_counters(self) -> dict[int, int]:
        """Packets each queue's NFQUEUE rules have sent (both families, all our chains).
        While no worker is bound to a queue, every one of them is dropped by the kernel."""
        out: dict[int, int] = {}
        for family in (4, 6):
            result = _run([_TOOLS[family][0], "-c", "-t", "filter"])
            for line in result.stdout.splitlines():
                if line.startswith("[") and "-j NFQUEUE --queue-num " in line:
                    packets = int(line[1:line.index(":")])
                    queue = int(line.rsplit("--queue-num ", 1)[1].split()[0])
                    out[queue] = out.get(queue, 0) + packets
        return out

    def prefilter_counters(self) -> dict[int, dict[str, int]]:
        """Packets the prefilter dropped, by family and cause (zeros when it is off). A
        family whose rules could not be read is left out, with a warning: read as zeros,
        it would look like a reset of the kernel's counters."""
        out = {}
        for family in (4, 6):
            tool = _TOOLS[family][0]
            try:
                result = _run([tool, "-c", "-t", "filter"])
            except GatekeeperError as exc:
                log.warning("prefilter counters: %s", exc)
                continue
            if result.returncode != 0:
                log.warning("prefilter counters: %s failed: %s", tool, _first_line(result.stderr))
                continue
            out[family] = prefilter.parse_counters(family, result.stdout)
        return out

    def replace(self, ruleset: Ruleset) -> None:
        """Swap in a new ruleset (a reload), one transaction per family: the old rules
        stay in force until the new ones are, and a rejected ruleset changes nothing.
        A reload that turns the prefilter off removes its sets after the swap."""
        self._create_sets(ruleset)
        self._swap(4, ruleset.ipv4)
        self._swap(6, ruleset.ipv6)
        if prefilter.SET_PROGRESS[4] not in ruleset.ipset:
            self._destroy_sets(prefilter.SETS)
        self._destroy_sets(tuple(n for n in self._nat_sets() if f"create {n} " not in ruleset.ipset))

    def _nat_sets(self) -> list[str]:
        """The per-target sets of spa_nat in the kernel, of this run or an earlier one."""
        result = _run(["ipset", "list", "-n"])
        return [n for n in result.stdout.split() if n.startswith(nat.SET_PREFIX)]

    def _destroy_sets(self, names: tuple[str, ...]) -> None:
        for name in names:
            result = _run(["ipset", "destroy", name])
            if result.returncode != 0 and "does not exist" not in result.stderr:
                log.error("ipset destroy %s: %s", name, _first_line(result.stderr))

    def _swap(self, family: int, text: str) -> None:
        """One transaction: delete our jumps, flush (or drop) our chains, add the new ones."""
        self._restore(family, render_swap(self.saved(family, table=False), text))

    def remove_rules(self) -> None:
        """Remove every jump to our chains and the chains."""
        for family in (4, 6):
            removal = render_removal(self.saved(family, table=False))
            if removal is not None:
                self._restore(family, removal)

    def remove(self) -> None:
        """Remove rules, then sets, then a filter table that only we brought into being."""
        self.remove_rules()
        self._destroy_sets((*SET_IN.values(), *SET_FWD.values(), *prefilter.SETS, *self._nat_sets()))
        for family in (4, 6):
            if self._created_nat[family]:
                self._drop_pristine_table(family, "nat")
            if self._created_table[family]:
                self._drop_pristine_table(family)

    def _drop_pristine_table(self, family: int, table: str = "filter") -> None:
        """iptables-nft creates the filter (and nat) table on first use; drop it again if
        it is still exactly as created, so iptables-save reads as it did before the start."""
        saved = [ln for ln in self.saved(family, table=False).splitlines()
                 if ln and not ln.startswith("#")]
        if table == "nat":  # its own part of the save only; its built-ins, policy ACCEPT
            at = saved.index("*nat") if "*nat" in saved else len(saved)
            end = saved.index("COMMIT", at) + 1 if at < len(saved) else at
            saved = saved[at:end]
        builtins = _BUILTINS[table]
        if not saved or not all(ln in (f"*{table}", "COMMIT") or ln.startswith(builtins)
                                for ln in saved):
            return  # gone, or no longer as created
        nft = shutil.which("nft")
        if nft is None or "nf_tables" not in _run([_TOOLS[family][1], "--version"]).stdout:
            return
        result = _run([nft, "delete", "table", "ip" if family == 4 else "ip6", table])
        if result.returncode != 0:
            log.warning("could not drop the empty %s table: %s", table, _first_line(result.stderr))
        (self._created_nat if table == "nat" else self._created_table)[family] = False
