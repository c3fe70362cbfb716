"""Read the shell commands a knockd config runs: does a command need a shell, and is
it one of the usual ``iptables ... -s %IP% ... --dport N -j ACCEPT`` rules that
gatekeeper grants by itself?

knockd runs each command through ``/bin/sh -c`` (``system()``); gatekeeper runs an argv
list, no shell. A command of plain words becomes an argv list as it is; one that uses
shell syntax (pipes, ``;``, ``&&``, redirections, expansions) has to stay a shell
script. A script is cut at its top-level ``;`` and ``&&`` so that an ``iptables`` part
can be taken out and the rest kept.
"""

from __future__ import annotations

import getopt
import ipaddress
import itertools
import re
import shlex
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

MAX_PORTS = 32  # gatekeeper's limit on a door's `opens`

# A command starting with one of these words means something only to a shell.
SHELL_WORDS = frozenset({
    "!", "{", "}", ".", ":", "alias", "case", "cd", "do", "done", "elif", "else", "esac", "eval",
    "exec", "exit", "export", "fi", "for", "function", "if", "in", "local", "read", "return",
    "set", "shift", "source", "then", "trap", "ulimit", "umask", "unset", "until", "wait", "while",
})
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")

IPTABLES = frozenset({
    "iptables", "ip6tables", "iptables-legacy", "ip6tables-legacy", "iptables-nft", "ip6tables-nft",
})
# knockd's iptables helper (src/knock_helper_ipt.sh; Debian's knockd.conf calls it knock_add)
HELPERS = frozenset({"knock_helper_ipt.sh", "knock_helper_ipt", "knock_add"})
_MATCHES = frozenset({"tcp", "udp", "multiport", "state", "conntrack", "comment"})
# the options a recognised rule may have that take a value
_VALUED = frozenset({
    "-t", "--table", "-s", "--source", "--src", "-d", "--destination", "--dst", "-p", "--protocol",
    "--dport", "--destination-port", "--dports", "--destination-ports", "-m", "--match", "--state",
    "--ctstate", "--comment", "-j", "--jump", "-i", "--in-interface", "-W", "--wait-interval",
})
_PROTOCOLS = {"tcp": "tcp", "6": "tcp", "udp": "udp", "17": "udp"}
_SOURCES = frozenset({"%IP%", "%IP%/32", "%IP%/128"})


# --- shell ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Scan:
    cuts: tuple[tuple[int, int, str], ...]  # (start, end, ";" or "&&") at the top level
    shell: str | None  # the first shell feature met, phrased for a warning
    nested: bool  # (), backquotes, $( ) or a comment: cutting at ';' would be unsafe
    comment: int | None = None  # where a '#' comment starts


def _scan(text: str) -> _Scan:
    cuts: list[tuple[int, int, str]] = []
    features: list[str] = []
    nested = False
    comment: int | None = None
    quote = ""
    word_start = True
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if quote == "'":
            quote = "" if c == "'" else quote
            i += 1
            continue
        if quote == '"':
            if c == "\\" and i + 1 < n:
                if text[i + 1] in "$`":  # sh unescapes these inside "", shlex does not
                    features.append("an escaped '$' or '`'")
                i += 2
                continue
            if c == '"':
                quote = ""
            elif c in "$`":
                features.append("an expansion ('$' or '`')")
            i += 1
            continue
        step, start_word = 1, True
        if c == "\\":
            step, start_word = 2, False
        elif c in "'\"":
            quote, start_word = c, False
        elif c.isspace():
            pass
        elif c == ";":
            cuts.append((i, i + 1, ";"))
            features.append("';'")
        elif text.startswith("&&", i):
            cuts.append((i, i + 2, "&&"))
            features.append("'&&'")
            step = 2
        elif c == "&":
            features.append("'&'")
        elif text.startswith("||", i):
            features.append("'||'")
            step = 2
        elif c == "|":
            features.append("a pipe '|'")
        elif c in "<>":
            features.append("a redirection")
        elif c in "()`":
            features.append("a subshell or command substitution")
            nested = True
        elif c == "$":
            features.append("an expansion ('$')")
            nested = nested or text.startswith("$(", i)
            start_word = False
        elif c == "#" and word_start:
            features.append("a comment ('#')")
            nested, comment = True, i
            break
        else:
            if c in "*?[" or (c == "~" and word_start):
                features.append("a wildcard or '~'")
            start_word = False
        word_start = start_word
        i += step
    if quote:
        features.append("an unclosed quote")
        nested = True
    return _Scan(tuple(cuts), features[0] if features else None, nested, comment)


def shell_comment(text: str) -> int | None:
    """Where a ``#`` comment starts in ``text`` as /bin/sh reads it, or None."""
    return _scan(text).comment


def _first_word(text: str) -> str:
    try:
        words = shlex.split(text)
    except ValueError:
        return ""
    return words[0] if words else ""


def needs_shell(text: str) -> str | None:
    """Why ``text`` needs ``/bin/sh`` (phrased for a warning), or None for plain words."""
    scan = _scan(text)
    if scan.shell:
        return scan.shell
    word = _first_word(text)
    if word in SHELL_WORDS:
        return f"the shell word {word!r}"
    if _ASSIGNMENT.match(word):
        return "a variable assignment"
    return None


def split_words(text: str) -> list[str]:
    """``text`` as an argv list, for a command with no shell syntax (see needs_shell)."""
    return shlex.split(text)


@dataclass(frozen=True, slots=True)
class Script:
    """A knockd command cut at its top-level ``;`` and ``&&`` (uncut if that is unsafe)."""

    text: str
    parts: tuple[str, ...]
    separators: tuple[str, ...]  # between parts: ";" or "&&"

    def without(self, drop: set[int]) -> str:
        """The script with the parts at ``drop`` taken out ("" when nothing is left)."""
        if not drop:
            return self.text.strip()
        parts, seps = list(self.parts), list(self.separators)
        for i in sorted(drop, reverse=True):
            # the separator that joined the dropped part to what it led to goes with it
            if i < len(parts) - 1:
                del seps[i]
            elif i > 0:
                del seps[i - 1]
            del parts[i]
        if not parts:
            return ""
        out = parts[0]
        for sep, part in zip(seps, parts[1:], strict=True):
            out += f"; {part}" if sep == ";" else f" {sep} {part}"
        return out


def split_script(text: str) -> Script:
    whole = Script(text, (text.strip(),), ())
    scan = _scan(text)
    if scan.nested or not scan.cuts:
        return whole
    parts, seps, at = [], [], 0
    for start, end, sep in scan.cuts:
        parts.append(text[at:start].strip())
        seps.append(sep)
        at = end
    parts.append(text[at:].strip())
    if not parts[-1] and seps[-1] == ";":  # "cmd;" ends with an empty command
        parts.pop()
        seps.pop()
    if any(not p or _first_word(p) in SHELL_WORDS for p in parts):
        return whole
    return Script(text, tuple(parts), tuple(seps))


# --- iptables ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Port:
    """A port a rule admits the knocker to; ``host`` for a FORWARD rule to a server behind."""

    proto: str
    port: int
    host: str | None = None

    def __str__(self) -> str:
        return f"{self.port}:{self.proto}"


@dataclass(frozen=True, slots=True)
class Rule:
    """An iptables rule admitting the knocker (``-s %IP%``) to ports: added or deleted."""

    delete: bool
    ports: tuple[Port, ...]
    notes: tuple[str, ...] = ()  # what the grant leaves out, e.g. "-i eth1"


@dataclass(frozen=True, slots=True)
class NotAGrant:
    """An iptables command that is not such a rule; ``appended`` if it appends to INPUT,
    where it sits below gatekeeper's jump and never sees a new packet on a guarded
    interface."""

    reason: str
    appended: bool


def _ports(spec: str, proto: str) -> list[int] | str:
    """``22``, ``1000:1003`` or multiport's ``22,80,1000:1003``; a str says what is wrong."""
    out: list[int] = []
    for item in spec.split(","):
        lo_text, colon, hi_text = item.partition(":")
        try:
            lo = int(lo_text) if lo_text.isdigit() else socket.getservbyname(lo_text, proto)
            hi = (int(hi_text) if hi_text.isdigit() else socket.getservbyname(hi_text, proto)) \
                if colon else lo
        except OSError:
            return f"port {item!r} is not a port number or service name"
        if not 1 <= lo <= hi <= 65535:
            return f"port range {item!r}"
        out.extend(range(lo, hi + 1))
        if len(out) > MAX_PORTS:
            return f"--dport {spec} spans more than {MAX_PORTS} ports"
    return out


def parse_iptables(argv: Sequence[str]) -> Rule | NotAGrant | None:
    """Recognise ``iptables -A|-I|-D INPUT -s %IP% [-p tcp|udp] --dport N -j ACCEPT`` (also
    with -m state/conntrack/multiport/comment, --syn, FORWARD with -d HOST). None when
    ``argv`` is not an iptables command at all."""
    program = argv[0].rsplit("/", 1)[-1] if argv else ""
    if program in HELPERS:
        return _parse_helper(argv)
    if program not in IPTABLES:
        return None
    args: list[str] = []
    for arg in argv[1:]:
        if arg.startswith("--") and "=" in arg:
            args.extend(arg.split("=", 1))
        else:
            args.append(arg)
    appended = any(a in ("-A", "--append") and b == "INPUT" for a, b in itertools.pairwise(args))
    read = _read_options(args)
    if isinstance(read, str):
        return NotAGrant(read, appended)
    rule = read.rule()
    return NotAGrant(rule, appended) if isinstance(rule, str) else rule


@dataclass
class _Options:
    """What one iptables call's options say, before they are judged as a grant."""

    action: str | None = None
    chain: str | None = None
    source: str | None = None
    dest: str | None = None
    proto: str | None = None
    target: str | None = None
    port_spec: str | None = None
    notes: list[str] = field(default_factory=list)

    def set(self, opt: str, value: str) -> str | None:
        """Take one valued option; the reason it makes no grant, or None."""
        if opt in ("-t", "--table"):
            if value != "filter":
                return f"it changes the {value} table"
        elif opt in ("-s", "--source", "--src"):
            self.source = value
        elif opt in ("-d", "--destination", "--dst"):
            self.dest = value
        elif opt in ("-p", "--protocol"):
            self.proto = value.lower()  # as iptables reads it
        elif opt in ("--dport", "--destination-port", "--dports", "--destination-ports"):
            self.port_spec = value
        elif opt in ("-m", "--match"):
            if value not in _MATCHES:
                return f"-m {value} has no counterpart in a grant"
        elif opt in ("--state", "--ctstate"):
            if "NEW" not in value.upper().split(","):
                return f"{opt} {value} admits no new connection"
        elif opt in ("-j", "--jump"):
            self.target = value
        elif opt in ("-i", "--in-interface"):
            self.notes.append(f"-i {value} left out: the grant holds on every guarded interface")
        # else --comment, -W/--wait-interval (how long to wait for the xtables lock)
        return None

    def rule(self) -> Rule | str:
        """The grant these options make, or the reason they make none."""
        if self.action is None or self.chain is None:
            return "it adds or deletes no rule (-A, -I, -D)"
        if self.target != "ACCEPT":
            return f"it jumps to {self.target}, not ACCEPT" if self.target else "it has no -j ACCEPT"
        if self.chain not in ("INPUT", "FORWARD"):
            return f"it changes chain {self.chain}, not INPUT or FORWARD"
        if self.source not in _SOURCES:
            return ("it has no -s %IP%: it admits every address" if self.source is None
                    else f"-s {self.source} is not the knocker's address alone")
        notes = list(self.notes)
        name = self.proto
        if name is None:
            name = "tcp"
            if self.port_spec is not None:
                notes.append("no -p: iptables refuses --dport without it; taken as tcp")
        if name not in _PROTOCOLS:
            return f"-p {name}: a grant opens tcp or udp ports"
        proto = _PROTOCOLS[name]
        if self.port_spec is None:
            return "it has no --dport: the rule admits every port"
        ports = _ports(self.port_spec, proto)
        if isinstance(ports, str):
            return ports
        host: str | None = None
        if self.chain == "FORWARD":
            try:
                net = ipaddress.ip_network(self.dest or "", strict=True)
            except ValueError:
                return "a FORWARD rule without one -d address"
            if net.num_addresses != 1:
                return f"-d {self.dest} is not one address"
            host = str(net.network_address)
        elif self.dest is not None:
            notes.append(f"-d {self.dest} left out: the grant holds on every address of the gateway")
        return Rule(delete=self.action in ("-D", "--delete"),
                    ports=tuple(Port(proto, p, host) for p in ports), notes=tuple(notes))


def _read_options(args: list[str]) -> _Options | str:
    """Walk an iptables call's arguments; the reason it makes no grant when one says so."""
    options = _Options()
    i = 0
    while i < len(args):
        opt = args[i]
        value = args[i + 1] if i + 1 < len(args) else None
        i += 2
        if opt in ("-A", "--append", "-I", "--insert", "-D", "--delete"):
            if options.action is not None:
                return "more than one command in one iptables call"
            options.action, options.chain = opt, value
            if value is not None and i < len(args) and args[i].isdigit():
                if opt in ("-D", "--delete"):
                    return "it deletes a rule by its number"
                i += 1  # -I CHAIN RULENUM
            continue
        if opt in ("--syn", "-v", "--verbose"):
            i -= 1
            continue
        if opt in ("-w", "--wait"):  # an optional number of seconds follows
            if value is None or not value.isdigit():
                i -= 1
            continue
        if opt == "!":
            return "it negates a match ('!')"
        if opt not in _VALUED:
            return (f"option {opt} has no counterpart in a grant" if opt.startswith("-")
                    else f"unexpected word {opt!r}")
        if value is None:
            return f"{opt} without a value"
        reason = options.set(opt, value)
        if reason is not None:
            return reason
    return options


def _parse_helper(argv: Sequence[str]) -> Rule | NotAGrant:
    """knockd's helper: ``knock_helper_ipt.sh -a|-i|-x -f IP -d PORT [-p PROTO] [-c CHAIN]``
    runs ``iptables -A|-I|-D CHAIN -s IP -p PROTO --dport PORT -j ACCEPT``."""
    # -m/--comment takes an optional value, attached: leave it out before getopt
    args = [a for a in argv[1:] if not a.startswith(("-m", "--comment"))]
    try:
        opts, rest = getopt.gnu_getopt(
            args, "aixf:d:p:c:thv",
            ["append", "insert", "delete", "srcaddr=", "dstport=", "proto=", "chain=", "test", "help",
             "verbose"],
        )
    except getopt.GetoptError as exc:
        return NotAGrant(f"knockd's iptables helper: {exc}", False)
    method, chain, proto, source, port = "", "INPUT", "tcp", "", ""
    for opt, value in opts:
        if opt in ("-a", "--append", "-i", "--insert", "-x", "--delete"):
            method = {"-a": "-A", "--append": "-A", "-i": "-I", "--insert": "-I"}.get(opt, "-D")
        elif opt in ("-f", "--srcaddr"):
            source = value
        elif opt in ("-d", "--dstport"):
            port = value
        elif opt in ("-p", "--proto"):
            proto = value
        elif opt in ("-c", "--chain"):
            chain = value
        elif opt in ("-t", "--test", "-h", "--help"):
            return NotAGrant(f"knockd's iptables helper with {opt} changes nothing", False)
    if rest:
        return NotAGrant(f"knockd's iptables helper: unexpected {rest[0]!r}", False)
    if not method or not port or not source:
        return NotAGrant("knockd's iptables helper needs -a, -i or -x, -f and -d", False)
    rule = parse_iptables(
        ["iptables", method, chain, "-s", source, "-p", proto, "--dport", port, "-j", "ACCEPT"]
    )
    if isinstance(rule, NotAGrant):
        return NotAGrant(f"knockd's iptables helper: {rule.reason}", method == "-A")
    assert rule is not None
    return rule
