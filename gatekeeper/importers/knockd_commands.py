"""knockd's commands as ``import-knockd`` reads them: the iptables rules in each (grants the
door can take over) and knockd's open/close section pairs."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from gatekeeper.importers.firewall import (
    NotAGrant,
    Port,
    Rule,
    Script,
    needs_shell,
    parse_iptables,
    shell_comment,
    split_script,
    split_words,
)
from gatekeeper.importers.knockd_conf import Section, Value
from gatekeeper.importers.output import Notice


@dataclass
class Command:
    """One knockd command: its parts, the iptables rules recognised among them and the
    parts taken out because the door's grant does their work."""

    key: str  # knockd's directive, lower case
    value: Value | None
    script: Script | None = None
    rules: dict[int, Rule] = field(default_factory=dict)
    taken: set[int] = field(default_factory=set)

    def ports(self, delete: bool) -> list[Port]:
        return unique(p for r in self.rules.values() if r.delete == delete for p in r.ports)

    def rest(self) -> str:
        return self.script.without(self.taken) if self.script else ""

    @property
    def line(self) -> int | None:
        return self.value.line if self.value else None


def distinct(*commands: Command) -> list[Command]:
    """Each command once (an IPv6 command that falls back to the IPv4 one *is* it)."""
    out: list[Command] = []
    for cmd in commands:
        if all(cmd is not seen for seen in out):
            out.append(cmd)
    return out


def unique(ports: Iterable[Port]) -> list[Port]:
    return list(dict.fromkeys(ports))


def ports_text(ports: Iterable[Port]) -> str:
    return ", ".join(str(p) for p in ports) or "nothing"


@dataclass
class Plan:
    """A section with its commands read; the IPv6 ones fall back to IPv4's, as in knockd."""

    sec: Section
    start: Command
    start6: Command
    stop: Command
    stop6: Command

    @property
    def has_stop(self) -> bool:
        return any(c.value is not None and c.value.text for c in (self.stop, self.stop6))

    @property
    def one_time(self) -> bool:
        return "ONE_TIME_SEQUENCES" in self.sec.values

    def adds(self) -> list[Port]:
        return unique([*self.start.ports(False), *self.start6.ports(False)])

    def deletes(self) -> list[Port]:
        return unique([*self.start.ports(True), *self.start6.ports(True)])


def read_command(sec: Section, key: str, notices: list[Notice]) -> Command:
    """A section's command; what in it cannot become a grant is added to ``notices``."""
    value = sec.values.get(key)
    cmd = Command(key.lower(), value)
    if value is None or not value.text:
        return cmd
    code = value.text
    comment = shell_comment(code)
    if comment is not None:
        code = code[:comment].rstrip()
        notices.append(Notice(value.line, sec.name, f"{cmd.key}: {value.text[comment:]!r} is a comment "
                              "to the shell knockd ran the command with; left out"))
    cmd.script = split_script(code)
    for i, part in enumerate(cmd.script.parts):
        if needs_shell(part):
            continue
        rule = parse_iptables(split_words(part))
        if isinstance(rule, Rule):
            cmd.rules[i] = rule
        elif isinstance(rule, NotAGrant):
            message = f"{cmd.key}: {part!r} is not made a grant: {rule.reason}; kept as a command"
            if rule.appended:
                message += " (appended to INPUT below gatekeeper's jump, it never sees a new packet)"
            notices.append(Notice(value.line, sec.name, message))
    return cmd


def read_plan(sec: Section, notices: list[Notice]) -> Plan:
    """A section with its commands read; the IPv6 ones fall back to IPv4's, as in knockd."""
    start, stop = read_command(sec, "START_COMMAND", notices), read_command(sec, "STOP_COMMAND", notices)
    start6 = read_command(sec, "START_COMMAND_6", notices) if "START_COMMAND_6" in sec.values else start
    stop6 = read_command(sec, "STOP_COMMAND_6", notices) if "STOP_COMMAND_6" in sec.values else stop
    return Plan(sec, start, start6, stop, stop6)


def pair(plans: list[Plan]) -> dict[int, Plan]:
    """Opening section's index -> the section whose command deletes exactly the rules
    it adds (knockd's open/close pair), for sections with no stop command of their own."""
    closers: dict[int, Plan] = {}
    used: set[int] = set()
    for i, opener in enumerate(plans):
        adds = set(opener.adds())
        if not adds or opener.has_stop or opener.one_time:
            continue
        for j, closer in enumerate(plans):
            if (j == i or j in used or closer.adds() or closer.has_stop or closer.one_time
                    or closer.sec.sequence == opener.sec.sequence):
                continue
            if set(closer.deletes()) == adds:
                closers[i] = closer
                used.add(j)
                break
    return closers
