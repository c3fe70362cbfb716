"""``gatekeeper import-knockd``: convert a knockd.conf into gatekeeper's TOML.

The knockd config is read by :mod:`gatekeeper.importers.knockd_conf`, as knockd 0.8
reads it. The converter makes one ``[[door]]`` a section:

* ``sequence`` / ``seq_timeout`` (default 25 s, knockd's) / ``tcpflags`` carry over;
* ``one_time_sequences`` becomes a one-time door on the same file, every line of it
  (:mod:`gatekeeper.importers.knockd_onetime`);
* ``iptables -A|-I INPUT -s %IP% [-p tcp|udp] --dport N -j ACCEPT`` in the start command
  becomes ``opens``: gatekeeper grants by itself, and the matching ``-D`` in the stop
  command is dropped; a FORWARD rule with ``-d HOST`` becomes the door's ``host``;
* ``open_for`` is ``cmd_timeout`` (default 10 s, knockd's) when a stop command closes
  the door, otherwise :data:`DEFAULT_OPEN_FOR`;
* a section whose command deletes exactly the rules another section adds becomes that
  door's ``close_sequence``;
* any other command stays a ``start_command``/``stop_command`` argv list, wrapped in
  ``/bin/sh -c`` when it needs a shell (knockd ran everything through one).

What does not carry over is reported as warnings, one line each naming the knockd file,
line and section. A door that would not load (nothing to open, a sequence gatekeeper
refuses) is written commented out, with a warning, so the output always loads; when no
door is left at all, the command fails instead.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import gatekeeper.config.load as config_mod
from gatekeeper.config import ConfigError
from gatekeeper.importers.firewall import Port, needs_shell, split_words
from gatekeeper.importers.knockd_commands import (
    Command,
    Plan,
    distinct,
    pair,
    ports_text,
    read_plan,
    unique,
)
from gatekeeper.importers.knockd_conf import (
    DEFAULT_CMD_TIMEOUT,
    DEFAULT_SEQ_TIMEOUT,
    Knock,
    KnockdConfig,
    KnockdError,
    Section,
    parse,
    parse_sequence,
    read,
)
from gatekeeper.importers.knockd_onetime import line_notices, one_time_path
from gatekeeper.importers.output import (
    CHECK_NAME,
    Notice,
    config_reason,
    interface_problem,
    printable,
    toml_list,
    toml_str,
)
from gatekeeper.model import MAX_OPEN_FOR, MAX_SEQUENCE_TIMEOUT

__all__ = [
    "DEFAULT_CMD_TIMEOUT", "DEFAULT_INTERFACE", "DEFAULT_OPEN_FOR", "DEFAULT_SEQ_TIMEOUT", "Conversion",
    "Knock", "KnockdConfig", "KnockdError", "convert", "convert_file", "main", "parse", "parse_sequence",
    "read",
]

DEFAULT_INTERFACE = "eth0"  # where knockd listens without Interface or -i
DEFAULT_OPEN_FOR = 30  # when knockd never closed the port itself: gatekeeper's own default


# --- converting -------------------------------------------------------------------------


@dataclass
class _Door:
    sec: Section
    name: str
    origin: str
    keys: list[tuple[str, str, str]] = field(default_factory=list)  # key, TOML value, comment
    extra: list[str] = field(default_factory=list)  # comment lines after the keys
    problem: str | None = None  # why the door is written commented out

    @property
    def one_time(self) -> bool:  # knockd's one_time_sequences: a one-time door
        return "ONE_TIME_SEQUENCES" in self.sec.values

    def add(self, key: str, value: str, comment: str = "") -> None:
        self.keys.append((key, value, comment))

    def lines(self) -> list[str]:
        out = ["[[door]]", f"# {self.origin}"]
        out += [f"{k} = {v}" + (f"  # {c}" if c else "") for k, v, c in self.keys]
        out += self.extra
        if self.problem is None:
            return out
        return [f"# NOT CONVERTED: {self.problem}"] + [f"# {ln}" for ln in out]


class _Converter:
    def __init__(self, cfg: KnockdConfig, base_dir: Path | None) -> None:
        self.cfg = cfg
        self.base_dir = base_dir
        self.notices: list[Notice] = list(cfg.notices)

    def warn(self, line: int | None, section: str | None, message: str) -> None:
        self.notices.append(Notice(line, section, message))

    # one door

    def door(self, plan: Plan, closer: Plan | None, names: set[str]) -> _Door:
        sec = plan.sec
        name = re.sub(r"[^A-Za-z0-9_-]+", "_", sec.name).strip("_")[:24] or "door"
        base, n = name, 2
        while name in names:
            suffix = f"-{n}"
            name, n = base[: 24 - len(suffix)] + suffix, n + 1
        names.add(name)
        if name != sec.name:
            self.warn(sec.line, sec.name, f"door name {name!r}: gatekeeper's are 1-24 letters, digits, "
                      "'-' or '_', and unique")
        origin = f"[{sec.name}], line {sec.line}"
        if closer is not None:
            origin += f"; close_sequence from [{closer.sec.name}], line {closer.sec.line}"
        door = _Door(sec, name, origin)
        door.add("name", toml_str(name))
        self.sequence(door)
        self.timeout(door)
        self.flags(door, closer)
        opens = self.opens(door, plan)
        self.open_for(door, plan, closer, opens)
        if closer is not None:
            door.add("close_sequence", toml_list(closer.sec.sequence))
        self.commands(door, plan, closer, opens)
        return door

    def sequence(self, door: _Door) -> None:
        """``sequence``, or for knockd's ``one_time_sequences`` a one-time door on the same
        file: gatekeeper reads knockd's format and, like knockd, takes the first line not
        used, strikes it out once it opened the door, and never takes it again."""
        sec = door.sec
        one_time = sec.values.get("ONE_TIME_SEQUENCES")
        if one_time is None:
            door.add("sequence", toml_list(sec.sequence))
            return
        path, notices = one_time_path(sec, self.base_dir, self.cfg.name)
        self.notices += notices
        door.add("one_time_sequences", toml_str(path), "knockd's file: each line opens the door once")

    def timeout(self, door: _Door) -> None:
        sec = door.sec
        if sec.seq_timeout is None:
            door.add("sequence_timeout", str(DEFAULT_SEQ_TIMEOUT), "knockd's default")
            return
        seconds = min(max(sec.seq_timeout, 1), MAX_SEQUENCE_TIMEOUT)
        if seconds != sec.seq_timeout:
            self.warn(sec.values["SEQ_TIMEOUT"].line, sec.name, f"seq_timeout {sec.seq_timeout} is "
                      f"outside gatekeeper's range; sequence_timeout = {seconds}")
        door.add("sequence_timeout", str(seconds))

    def flags(self, door: _Door, closer: Plan | None) -> None:
        sec = door.sec
        flags = sec.tcp_flags
        if flags is not None:
            door.add("tcp_flags", toml_str(flags))
        elif any(k.proto == "tcp" for k in sec.sequence):
            self.warn(sec.line, sec.name, "no tcpflags: knockd counted any tcp packet as a knock, "
                      "gatekeeper counts only those with tcp_flags (\"syn\", what knock clients send)")
            door.add("tcp_flags", toml_str("syn"), "knockd had none: any tcp packet")
        if closer is not None:
            other = closer.sec
            if other.tcp_flags != sec.tcp_flags or other.seq_timeout != sec.seq_timeout:
                self.warn(other.line, other.name, f"its tcpflags or seq_timeout differ from [{sec.name}]'s; "
                          f"door {door.name!r} uses [{sec.name}]'s for both sequences")

    def opens(self, door: _Door, plan: Plan) -> list[Port]:
        """Take the grants out of the start command(s) and write ``host``/``opens``."""
        sec = plan.sec
        opens: list[Port] = []
        for cmd in distinct(plan.start, plan.start6):
            for i, rule in sorted(cmd.rules.items()):
                if rule.delete:
                    if plan.adds():  # else the door's problem says it
                        self.warn(cmd.line, sec.name, f"{cmd.key} deletes the rule for "
                                  f"{ports_text(rule.ports)}; kept as a command")
                elif opens and rule.ports[0].host != opens[0].host:
                    self.warn(cmd.line, sec.name, f"a door opens ports on one host; the rule for "
                              f"{ports_text(rule.ports)} on {rule.ports[0].host or 'the gateway'} is kept "
                              "as a command")
                else:
                    cmd.taken.add(i)
                    opens = unique([*opens, *rule.ports])
                    for note in rule.notes:
                        self.warn(cmd.line, sec.name, note)
        host = opens[0].host if opens else None
        if host is not None:
            door.add("host", toml_str(host), "the FORWARD rule's -d")
        target = sec.values.get("TARGET")
        if target is not None and target.text != host:
            self.warn(target.line, sec.name, f"target {target.text} not carried over: gatekeeper takes "
                      "knocks to the gateway's own addresses (and to a door's host)")
        four = [p for p in plan.start.ports(False) if p in opens]
        six = [p for p in plan.start6.ports(False) if p in opens]
        if opens and set(four) != set(six):
            self.warn(plan.start6.line or sec.line, sec.name, f"knockd opened {ports_text(four)} for "
                      f"IPv4 knockers and {ports_text(six)} for IPv6 ones; the door opens "
                      f"{ports_text(opens)} for both")
        door.add("opens", toml_list(opens))
        if not opens and door.problem is None:
            if plan.deletes() and not plan.adds():
                door.problem = "it only deletes rules, and no section adds exactly those with no " \
                    "stop_command of its own, so it cannot become a door's close_sequence"
            else:
                door.problem = "it opens no port gatekeeper can grant (no iptables ... -s %IP% " \
                    "--dport N -j ACCEPT command), and a door needs opens"
            self.warn(sec.line, sec.name, f"{door.problem}: door left commented out")
        return opens

    def open_for(self, door: _Door, plan: Plan, closer: Plan | None, opens: list[Port]) -> None:
        sec = plan.sec
        if plan.has_stop:
            seconds = DEFAULT_CMD_TIMEOUT if sec.cmd_timeout is None else sec.cmd_timeout
            clamped = min(max(seconds, 1), MAX_OPEN_FOR)
            if clamped != seconds:
                self.warn(sec.values["CMD_TIMEOUT"].line, sec.name, f"cmd_timeout {seconds} is outside "
                          f"gatekeeper's range; open_for = {clamped}")
            comment = f"knockd's default cmd_timeout ({DEFAULT_CMD_TIMEOUT} s)" \
                if sec.cmd_timeout is None else "knockd's cmd_timeout"
            door.add("open_for", str(clamped), comment)
            return
        comment = f"until [{closer.sec.name}] in knockd" if closer else "knockd never closed it by itself"
        door.add("open_for", str(DEFAULT_OPEN_FOR), comment)
        if opens:
            until = f"until [{closer.sec.name}] was knocked" if closer else \
                "(no stop_command, no section deletes the rule)"
            self.warn(sec.line, sec.name, f"knockd kept {ports_text(opens)} open {until}; gatekeeper "
                      f"closes it after open_for = {DEFAULT_OPEN_FOR} s (established connections carry "
                      "on)" + (" or on the close_sequence" if closer else ""))

    def commands(self, door: _Door, plan: Plan, closer: Plan | None, opens: list[Port]) -> None:
        """start_command/stop_command: what is left once the grants are taken out."""
        sec = plan.sec
        start = self.kept(door, plan.start, plan.start6, "start_command", sec)
        if start:
            door.add("start_command", toml_list(start))
        deleted: set[Port] = set()
        for cmd in distinct(plan.stop, plan.stop6):
            for i, rule in sorted(cmd.rules.items()):
                if rule.delete and set(rule.ports) <= set(opens):
                    cmd.taken.add(i)
                    deleted.update(rule.ports)
                else:
                    what = "deletes a rule the start command does not add" if rule.delete else "adds a rule"
                    self.warn(cmd.line, sec.name, f"{cmd.key} {what} ({ports_text(rule.ports)}); kept as "
                              "a command")
        left = [p for p in opens if p not in deleted]
        if plan.has_stop and left:
            self.warn(plan.stop.line or plan.stop6.line, sec.name, f"the stop command does not delete "
                      f"the rule for {ports_text(left)}: knockd left it open, gatekeeper closes it after "
                      "open_for")
        if closer is None:
            stop = self.kept(door, plan.stop, plan.stop6, "stop_command", sec)
        else:
            for cmd in distinct(closer.start, closer.start6):
                cmd.taken.update(i for i, r in cmd.rules.items() if r.delete)
            stop = self.kept(door, closer.start, closer.start6, "stop_command", closer.sec)
            if stop:
                self.warn(closer.start.line or closer.start6.line, closer.sec.name, "the rest of its command "
                          f"becomes door {door.name!r}'s stop_command: it runs when the grant ends, by the "
                          "close_sequence or after open_for")
        if stop:
            door.add("stop_command", toml_list(stop))

    def kept(self, door: _Door, four: Command, six: Command, key: str, sec: Section) -> list[str]:
        """The argv for the rest of a command; gatekeeper runs one command for IPv4 and IPv6
        knockers, so an IPv6 variant that differs is written commented out, with a warning."""
        rest = four.rest()
        argv: list[str] = []
        if rest and four.value is not None:
            reason = needs_shell(rest)
            if reason is None:
                argv = split_words(rest)
            else:
                argv = ["/bin/sh", "-c", rest]
                self.warn(four.value.line, sec.name, f"{key} needs a shell ({reason}): kept as /bin/sh -c, "
                          "as knockd ran it (gatekeeper substitutes %IP% in it, too)")
        if six is not four and six.rest() != rest and six.value is not None:
            self.warn(six.value.line, sec.name, f"{six.key}: gatekeeper runs one {key} for IPv4 and IPv6 "
                      f"knockers; this IPv6 one ({six.rest() or 'nothing'!r}) is not carried over")
            door.extra.append(f"# {six.key} = {toml_str(six.rest())}  # IPv6 only, not carried over")
        return argv

    # the whole file

    def settings(self) -> list[str]:
        opts = self.cfg.options
        value = opts.values.get("INTERFACE")
        line = value.line if value else opts.line
        if value is None:
            iface, comment = DEFAULT_INTERFACE, "knockd's default interface"
            self.warn(line, "options", f"no Interface: knockd listens on {DEFAULT_INTERFACE} unless started "
                      "with -i (see KNOCKD_OPTS in /etc/default/knockd); interfaces = "
                      f"[\"{DEFAULT_INTERFACE}\"]: check it")
        else:
            iface, alias, _ = value.text.partition(":")
            comment = "knockd's Interface"
            if alias:
                self.warn(line, "options", f"interface {value.text} is an alias; gatekeeper guards the "
                          f"device, {iface}")
        out = ["[gatekeeper]"]
        reason = interface_problem(iface)
        if reason is not None:
            self.warn(line, "options", f"interface {iface!r} cannot be guarded ({reason}); interfaces "
                      "left out, which guards every interface but loopback: set it")
            out.append(f"# interfaces = [{toml_str(iface)}]  # {comment}: {reason}")
            guarded = "every interface but loopback"
        else:
            out.append(f"interfaces = [{toml_str(iface)}]  # {comment}")
            guarded = iface
        self.warn(line, "options", f"gatekeeper drops every new connection on {guarded} that no door "
                  "grants (knockd only added rules): list what must stay reachable in [gatekeeper] public")
        out.append("# public = [\"80:tcp\"]  # reachable without knocking; everything else on a guarded "
                   "interface is dropped")
        return out

    def header(self) -> list[str]:
        opts = self.cfg.options
        out = [f"# gatekeeper config converted from knockd's {self.cfg.name} by `gatekeeper import-knockd`.",
               "# Read the warnings printed with it before use."]
        spelled = {"LOGFILE": "LogFile", "PIDFILE": "PidFile"}
        ignored = [f"{spelled[k]} = {v.text}" for k, v in sorted(opts.values.items()) if k in spelled]
        if opts.usesyslog is not None:
            ignored.insert(0, "UseSyslog")
        if ignored:
            out.append(f"# Not needed: knockd's {', '.join(ignored)} (gatekeeper logs to stderr, the journal "
                       "under systemd, and runs in the foreground).")
        return out

    def convert(self) -> Conversion:
        plans = [read_plan(sec, self.notices) for sec in self.cfg.sections]
        closers = pair(plans)
        closing = {id(c) for c in closers.values()}
        names: set[str] = set()
        doors = [self.door(plan, closers.get(i), names) for i, plan in enumerate(plans)
                 if id(plan) not in closing]
        head = [*self.header(), "", *self.settings()]
        accepted: list[str] = []  # the doors so far that load, to check the next one against
        body: list[str] = []
        for door in doors:
            if door.problem is None:
                try:
                    loaded = config_mod.loads(printable("\n".join([*head, *accepted, *door.lines()])),
                                              CHECK_NAME)
                except ConfigError as exc:
                    door.problem = f"gatekeeper refuses it: {config_reason(exc)}"
                    if door.one_time and config_reason(exc).startswith("one_time_sequences ("):
                        door.problem += " (fix or delete that line, then import again)"
                    self.warn(door.sec.line, door.sec.name, f"{door.problem}: door left commented out")
                else:
                    accepted += door.lines()
                    one_time = loaded.doors[-1].one_time
                    if door.one_time and one_time is not None:
                        self.notices += line_notices(door.sec, one_time)
            body += ["", *door.lines()]
        notices = sorted(self.notices, key=lambda n: n.line or 0)
        return Conversion(
            toml=printable("\n".join([*head, *body])) + "\n",
            warnings=tuple(printable(n.render(self.cfg.name)) for n in notices),
            doors=sum(d.problem is None for d in doors),
        )


@dataclass(frozen=True, slots=True)
class Conversion:
    toml: str
    warnings: tuple[str, ...]  # one line each: FILE:LINE: warning: [section] message
    doors: int  # doors converted (not commented out); 0 leaves nothing to run


def convert(cfg: KnockdConfig, base_dir: Path | None = None) -> Conversion:
    """gatekeeper TOML for a parsed knockd config; relative one_time_sequences paths are
    read from ``base_dir``."""
    return _Converter(cfg, base_dir).convert()


def convert_file(path: str) -> Conversion:
    """Read, parse and convert the knockd config at ``path``."""
    return convert(read(path), Path(path).parent)


def main(path: str, output: str | None = None) -> int:
    """``gatekeeper import-knockd``: TOML to stdout (or ``output``), warnings to stderr.
    Raises :class:`KnockdError` (exit status 2) on bad input or when no door converts."""
    result = convert_file(path)
    for line in result.warnings:
        print(line, file=sys.stderr)
    if not result.doors:
        raise KnockdError(f"{path}: no section could be converted into a gatekeeper door (see the "
                          "warnings above)")
    if output is None:
        sys.stdout.write(result.toml)
        return 0
    try:
        Path(output).write_text(result.toml, encoding="utf-8")
    except OSError as exc:
        raise KnockdError(f"{output}: cannot write: {exc.strerror or exc}") from None
    return 0
