"""Command line: ``gatekeeper run|check|rules|replay|knock|demo|bench``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import gatekeeper.config.load as config_mod
from gatekeeper import __version__
from gatekeeper.client.knock import FIRST_SYN_TIMEOUT
from gatekeeper.errors import GatekeeperError
from gatekeeper.model import DEFAULT_CONTROL_SOCKET, DEFAULT_SPA_PORT, SPA_ANY_PORTS, Door


def _setup_logging(verbose: bool) -> None:
    journald = bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))
    fmt = "%(levelname)s %(message)s" if journald else "%(asctime)s %(levelname)s %(message)s"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt,
                        stream=sys.stderr)
    logging.getLogger("pyroute2").setLevel(logging.WARNING)  # its debug is per netlink message


def _cmd_run(args: argparse.Namespace) -> int:
    from gatekeeper.daemon import supervisor

    _setup_logging(args.verbose)
    return supervisor.run(args.config)


def _cmd_check(args: argparse.Namespace) -> int:
    from gatekeeper.netfilter.interfaces import require_present
    from gatekeeper.netfilter.nat import require_forwarding

    cfg = config_mod.load(args.config)
    require_present(cfg)  # as run does: in the network namespace it runs in
    require_forwarding(cfg)
    def how(d: Door) -> str:
        if d.spa is not None:  # its spa_transports
            where = {"udp": f"{d.spa.port}:udp", "tcpraw": f"{d.spa.port}:tcpraw",
                     "icmp": "icmp echo", "udp-any": "{}-{}:udp".format(*SPA_ANY_PORTS)}
            return "spa on " + ", ".join(where[t] for t in d.spa.transports)
        if d.encrypted is not None:
            return f"encrypted sequence on {d.encrypted.first}-{d.encrypted.last}"
        if d.one_time is not None:
            return f"{len(d.one_time.lines)} one-time sequence(s)"
        return f"{len(d.sequence)} knocks"

    def nat(d: Door) -> str:
        targets = " ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}"
                           for h, p in (d.spa.nat_targets if d.spa is not None else ()))
        return f", DNATed to {targets}" if targets else ""

    doors = ", ".join(f"{d.name} ({how(d)} -> {' '.join(map(str, d.opens))}{nat(d)})" for d in cfg.doors)
    print(f"{args.config}: OK: {len(cfg.doors)} door(s): {doors}")
    return 0


def _cmd_rules(args: argparse.Namespace) -> int:
    from gatekeeper.netfilter.render import render

    ruleset = render(config_mod.load(args.config))
    part = {"all": ruleset.text(), "ipset": ruleset.ipset, "4": ruleset.ipv4, "6": ruleset.ipv6}
    sys.stdout.write(part[args.family])
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from gatekeeper import replay

    return replay.main(args.config, args.capture, args.gateway, args.source, args.door, args.json,
                       args.since, args.until)


def _cmd_knock(args: argparse.Namespace) -> int:
    import socket

    from gatekeeper.client.knock import knock, parse_step, resolve
    from gatekeeper.model import TCP, UDP

    family = socket.AF_INET if args.ipv4 else socket.AF_INET6 if args.ipv6 else 0
    default = UDP if args.udp else TCP
    if args.encrypted:
        from gatekeeper.client.spa import encrypted_steps

        if args.ports:
            raise GatekeeperError("knock --encrypted takes no ports: --range gives them")
        if not args.key_file:
            raise GatekeeperError("knock --encrypted needs --key-file")
        target = resolve(args.host, family)
        steps = encrypted_steps(target, args.key_file, args.range, args.access, args.allow,
                                default)
    else:
        if not args.ports:
            raise GatekeeperError("knock: name at least one PORT[:PROTO] (or use --encrypted)")
        if args.key_file or args.range or args.access or args.allow:
            raise GatekeeperError("knock: --key-file, --range, -A and -a go with --encrypted")
        steps = [parse_step(p, default) for p in args.ports]
        target = resolve(args.host, family)
    knock(target, steps, args.delay / 1000.0, args.verbose)
    return 0


def _cmd_spa(args: argparse.Namespace) -> int:
    from gatekeeper.client import spa

    if args.key_gen:
        sys.stdout.write(spa.key_gen(sequence=args.sequence))
        return 0
    if not args.host or not args.key_file or not args.access:
        raise GatekeeperError("spa: needs --key-file, -A PROTO/PORT and HOST (or --key-gen)")
    packet = spa.send(args.host, args.key_file, args.access, args.allow, args.source_any,
                      args.port, verbose=args.verbose, nat=args.nat_access)
    if args.save_packet:
        try:
            with open(args.save_packet, "wb") as f:
                f.write(packet)
        except OSError as exc:
            raise GatekeeperError(f"{args.save_packet}: cannot write: {exc.strerror}") from None
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    """The daemon on ``--socket``, or on the control socket ``--config`` names (then it must
    be running that config); exit 3 when none is running there."""
    import json

    from gatekeeper.daemon.control import NotRunning, format_status, request

    path = args.socket or DEFAULT_CONTROL_SOCKET
    if args.config is not None:
        control = config_mod.load(args.config).settings.control
        if not control:
            raise GatekeeperError(f'{args.config}: [gatekeeper] control = "": its daemon has no '
                                  "control socket to ask")
        path = args.socket or control
    try:
        status = request(path)
    except NotRunning as exc:
        print(f"gatekeeper status: {exc}", file=sys.stderr)
        return 3
    if args.config is not None and not _same_file(status.get("config", ""), args.config):
        raise GatekeeperError(f"{path}: the daemon there runs {status.get('config')}, "
                              f"not {args.config}")
    print(json.dumps({"socket": path, **status}, indent=2) if args.json else format_status(status, path))
    return 0


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _cmd_unit(args: argparse.Namespace) -> int:
    from gatekeeper.deploy import unit_text

    sys.stdout.write(unit_text())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from gatekeeper.lab import demo

    return demo.main(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.cluster and args.flood:
        print("gatekeeper bench: --cluster and --flood are separate benches", file=sys.stderr)
        return 2
    if args.cluster:
        from gatekeeper.lab.bench import cluster

        return cluster.main(args)
    if args.flood:
        from gatekeeper.lab.bench import flood

        return flood.main(args)
    from gatekeeper.lab.bench import run

    return run.main(args)


def _cmd_soak(args: argparse.Namespace) -> int:
    from gatekeeper.lab import soak

    return soak.main(args)


def _cmd_import_knockd(args: argparse.Namespace) -> int:
    from gatekeeper.importers import knockd

    return knockd.main(args.file, args.output)


def _cmd_import_fwknop(args: argparse.Namespace) -> int:
    from gatekeeper.importers import fwknop_command

    return fwknop_command.main(args.file, args.server_conf, args.output, args.key_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatekeeper", description="Inline port-knocking gatekeeper for Linux gateways."
    )
    parser.add_argument("--version", action="version", version=f"gatekeeper {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_daemon_commands, _replay_command, _client_commands, _operator_commands, _lab_commands,
                _soak_command, _import_commands):
        add(sub)  # in this order: the order of --help
    return parser


Subcommands = argparse._SubParsersAction  # the type of build_parser's subparsers


def _daemon_commands(sub: Subcommands[argparse.ArgumentParser]) -> None:
    """run, check, rules: the daemon and its config."""
    p = sub.add_parser("run", help="install the rules and verdict packets in the foreground")
    p.add_argument("-c", "--config", required=True, help="TOML config file")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("check", help="validate a config file")
    p.add_argument("-c", "--config", required=True)
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("rules", help="print the exact ruleset 'run' would install")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--family", choices=["all", "ipset", "4", "6"], default="all",
                   help="print one part only, ready for its restore tool")
    p.set_defaults(func=_cmd_rules)


def _replay_command(sub: Subcommands[argparse.ArgumentParser]) -> None:
    """replay: a capture through the engine, offline."""
    p = sub.add_parser("replay", help="replay a packet capture (pcap, pcapng) through the decoder "
                       "and engine offline: timelines of knocks, grants, lockouts, then a summary")
    p.add_argument("-c", "--config", required=True, help="TOML config file")
    p.add_argument("capture", metavar="CAPTURE", help="pcap or pcapng file (tcpdump -w, -i any too)")
    p.add_argument("--source", action="append", default=[], metavar="ADDR",
                   help="show only this source's timeline (an address or a network; repeatable)")
    p.add_argument("--door", default="", metavar="NAME", help="show only this door's moments")
    p.add_argument("--gateway", action="append", default=[], metavar="ADDR",
                   help="an address of the gateway: its packets are outbound, never queued "
                   "(repeatable; default: the addresses knocks were sent to)")
    p.add_argument("--json", action="store_true", help="JSON lines: a moment a line, then the summary")
    p.add_argument("--since", default="", metavar="T",
                   help="replay packets from T on: Unix seconds, ISO 8601 (UTC unless a zone is "
                   "given) or +S after the first packet")
    p.add_argument("--until", default="", metavar="T", help="replay packets up to T (as --since)")
    p.set_defaults(func=_cmd_replay)


def _client_commands(sub: Subcommands[argparse.ArgumentParser]) -> None:
    """knock, spa: the clients."""
    p = sub.add_parser("knock", help="knock a sequence (knockd's knock syntax)")
    p.add_argument("host")
    p.add_argument("ports", nargs="*", metavar="PORT[:PROTO]")
    p.add_argument("-u", "--udp", action="store_true", help="udp for ports with no protocol")
    p.add_argument("-d", "--delay", type=int, default=0, metavar="MS",
                   help="wait MS milliseconds between knocks")
    fam = p.add_mutually_exclusive_group()
    fam.add_argument("-4", "--ipv4", action="store_true", help="IPv4 only")
    fam.add_argument("-6", "--ipv6", action="store_true", help="IPv6 only")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--encrypted", action="store_true",
                   help="knock an encrypted sequence (a door's encrypted_sequence) instead of PORTs")
    p.add_argument("--key-file", metavar="FILE", help="--encrypted: the door's key file")
    p.add_argument("--range", default="", metavar="FIRST-LAST",
                   help="--encrypted: the door's knock range (default 745-1000)")
    p.add_argument("-A", "--access", default="", metavar="PROTO/PORT",
                   help="--encrypted: what to open (default tcp/22)")
    p.add_argument("-a", "--allow", default="", metavar="ADDR",
                   help="--encrypted: the address to open for (default: this host's source "
                   "address towards HOST)")
    p.set_defaults(func=_cmd_knock)

    p = sub.add_parser("spa", help="send an SPA packet (fwknop 2.6 wire format), or make keys")
    p.add_argument("host", nargs="?", help="the gateway")
    p.add_argument("--key-file", metavar="FILE",
                   help="KEY_BASE64 and HMAC_KEY_BASE64 lines, as fwknop --key-gen prints them")
    p.add_argument("-A", "--access", metavar="PROTO/PORT[,PROTO/PORT...]", help="e.g. tcp/22")
    p.add_argument("-a", "--allow", default="", metavar="ADDR",
                   help="the address to open for (default: this host's source address towards HOST)")
    p.add_argument("-s", "--source-any", action="store_true",
                   help="send 0.0.0.0: the gateway opens for the packet's source (fwknop -s)")
    p.add_argument("--port", type=int, default=DEFAULT_SPA_PORT,
                   help=f"the SPA UDP port (default {DEFAULT_SPA_PORT})")
    p.add_argument("-N", "--nat-access", default="", metavar="ADDR:PORT",
                   help="NAT access (fwknop -N): the gateway forwards the -A port to this internal "
                   "address and port")
    p.add_argument("--save-packet", metavar="FILE",
                   help="also write the packet sent to FILE (to test a replay)")
    p.add_argument("--key-gen", action="store_true", help="print new keys for a key file")
    p.add_argument("--sequence", action="store_true",
                   help="with --key-gen: a key for an encrypted_sequence door instead")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_cmd_spa)


def _operator_commands(sub: Subcommands[argparse.ArgumentParser]) -> None:
    """status, unit: the running daemon and its installation."""
    p = sub.add_parser("status", help="doors, active grants and counters of the running daemon")
    p.add_argument("-s", "--socket", default=None,
                   help=f"the daemon's control socket (default: the one --config names, else "
                        f"{DEFAULT_CONTROL_SOCKET})")
    p.add_argument("-c", "--config", default=None,
                   help="ask the daemon running this config: its [gatekeeper] control socket, "
                        "and an error if the daemon there runs another config")
    p.add_argument("--json", action="store_true", help="the raw answer, as JSON")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("unit", help="print the systemd unit for this installation")
    p.set_defaults(func=_cmd_unit)


def _lab_commands(sub: Subcommands[argparse.ArgumentParser]) -> None:
    """demo, bench: the namespace lab."""
    p = sub.add_parser("demo", help="show the daemon at work in a namespace lab (needs root)")
    p.add_argument("--open-for", type=int, default=6, metavar="SECONDS",
                   help="how long the demo's grant admits new connections (default: 6)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("bench", help="measure throughput, latency and memory in a namespace lab "
                       "(needs root)")
    p.add_argument("--packets", type=int, default=0, metavar="N",
                   help="packets a drain round (default 60000: a kernel queue holds at most 65536; "
                   "--quick 3000)")
    p.add_argument("--rounds", type=int, default=0, metavar="N", help="drain rounds (default 7)")
    p.add_argument("--workers", type=int, default=2, metavar="N",
                   help="workers for the scaling run (default 2; 1 skips it)")
    p.add_argument("--batch", type=int, default=0, metavar="N",
                   help="[gatekeeper] batch for every run: packets a worker reads and verdicts at "
                   "once (default: the config default, 4)")
    p.add_argument("--knocks", type=int, default=0, metavar="N",
                   help="knock-to-connected trials (default 100)")
    p.add_argument("--seconds", type=float, default=0.0, metavar="S",
                   help="length of the paced latency run (default 4)")
    p.add_argument("--sources", type=int, default=0, metavar="N",
                   help="tracked sources for the memory figure (default 100000)")
    p.add_argument("--quick", action="store_true",
                   help="small counts: a smoke test that runs in well under a minute")
    p.add_argument("--profile", metavar="FILE",
                   help="also sample one draining worker with py-spy into FILE (.svg flamegraph, "
                   ".json speedscope, else py-spy's raw collapsed stacks)")
    p.add_argument("--cluster", action="store_true",
                   help="instead: the [cluster] backend (a redis-server in a two-gateway lab) beside "
                   "the local engine: 1-worker throughput, knock-to-connected, store round trip, "
                   "mirror delay (default 3 rounds of 20000 packets, 50 knocks)")
    p.add_argument("--flood", action="store_true",
                   help="instead: a spoofed-source flood from a C sendmmsg sender, the kernel "
                   "prefilter off and on: the share reaching the queue, the highest flood rate a "
                   "legitimate client still gets in at (99/100 first tries), a flood of first "
                   "knocks, CPU per dropped packet (needs gcc)")
    p.set_defaults(func=_cmd_bench)


def _soak_command(sub: Subcommands[argparse.ArgumentParser]) -> None:
    """soak and its roles."""
    p = sub.add_parser("soak", help="soak scenario: client, attacker and gateway roles, a report; "
                       "'soak lab' runs it in a namespace lab (needs root)")
    roles = p.add_subparsers(dest="role", required=True, metavar="ROLE")
    seq_help = "the door's knock sequence (default: %(default)s)"
    r = roles.add_parser("client", help=f"knock, connect at once ({FIRST_SYN_TIMEOUT} s), "
                         "exchange a line; repeat")
    r.add_argument("--gateway", required=True, metavar="ADDR")
    r.add_argument("--duration", type=float, required=True, metavar="S")
    r.add_argument("--sequence", default="7000:udp,8000:tcp,9000:udp", metavar="P:PROTO,...",
                   help=seq_help)
    r.add_argument("--port", type=int, default=22, help="the protected tcp port (default 22)")
    r.add_argument("--out", required=True, metavar="FILE.jsonl")
    r.add_argument("--interval", type=float, default=0.2, metavar="S",
                   help="seconds between attempt starts (default 0.2)")
    r.add_argument("--timeout", type=float, default=FIRST_SYN_TIMEOUT, metavar="S",
                   help=f"connect timeout (default {FIRST_SYN_TIMEOUT}: below the first SYN retransmit)")
    r.add_argument("--sources", default="", metavar="ADDR,...",
                   help="local addresses to rotate over (a.b.c.X-Y ranges allowed)")
    r.add_argument("--max-attempts", type=int, default=0, metavar="N", help="stop after N attempts")
    r = roles.add_parser("attacker", help="bounded junk against the gateway: unknocked connects, "
                         "partial/wrong replays, scans, udp flood")
    r.add_argument("--gateway", required=True, metavar="ADDR")
    r.add_argument("--duration", type=float, required=True, metavar="S")
    r.add_argument("--out", required=True, metavar="FILE.jsonl")
    r.add_argument("--sequence", default="7000:udp,8000:tcp,9000:udp", metavar="P:PROTO,...",
                   help=seq_help)
    r.add_argument("--port", type=int, default=22, help="the protected tcp port (default 22)")
    r.add_argument("--rate", type=float, default=200.0, metavar="PPS",
                   help="udp junk packets a second (default 200)")
    r.add_argument("--max-loops", type=int, default=0, metavar="N", help="stop after N loops")
    r.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    r = roles.add_parser("gateway", help="sample the daemon's memory, fds, status and metrics")
    r.add_argument("--duration", type=float, required=True, metavar="S")
    r.add_argument("--out", required=True, metavar="FILE.jsonl")
    r.add_argument("-s", "--socket", default=DEFAULT_CONTROL_SOCKET,
                   help="the daemon's control socket")
    r.add_argument("--metrics", default="http://127.0.0.1:9464/metrics", metavar="URL")
    r.add_argument("--interval", type=float, default=1.0, metavar="S")
    thresholds = argparse.ArgumentParser(add_help=False)
    thresholds.add_argument("--min-success", type=float, default=0.99, metavar="RATE")
    thresholds.add_argument("--max-rss-growth-mb", type=float, default=20.0, metavar="MB")
    thresholds.add_argument("--max-rss-growth-pct", type=float, default=25.0, metavar="PCT")
    r = roles.add_parser("report", parents=[thresholds],
                         help="merge the .jsonl files into summary.json and soak.png")
    r.add_argument("--in", dest="in_dir", required=True, metavar="DIR")
    r.add_argument("--out", required=True, metavar="DIR")
    r = roles.add_parser("lab", parents=[thresholds],
                         help="the whole scenario in a namespace lab, then the report (needs root)")
    r.add_argument("--duration", type=float, default=60.0, metavar="S")
    r.add_argument("--out", required=True, metavar="DIR")
    r.add_argument("--sources", type=int, default=30, metavar="N",
                   help="extra client addresses, so most attempts need a fresh grant (default 30)")
    p.set_defaults(func=_cmd_soak)


def _import_commands(sub: Subcommands[argparse.ArgumentParser]) -> None:
    """import-knockd, import-fwknop."""
    p = sub.add_parser("import-knockd", help="convert a knockd.conf into a gatekeeper config")
    p.add_argument("file", metavar="FILE", help="knockd config, e.g. /etc/knockd.conf")
    p.add_argument("-o", "--output", metavar="OUT", help="write the TOML here (default: stdout)")
    p.set_defaults(func=_cmd_import_knockd)

    p = sub.add_parser("import-fwknop", help="convert fwknopd's access.conf (and fwknopd.conf) into a "
                       "gatekeeper config and key files")
    p.add_argument("file", metavar="ACCESS_CONF", help="fwknopd's access.conf, e.g. /etc/fwknop/access.conf "
                   "(its %%include, %%include_folder and %%include_keys lines are followed, as fwknopd does)")
    p.add_argument("--server-conf", metavar="FILE",
                   help="fwknopd.conf, for the SPA port, packet age and interface (default: fwknopd's "
                   "defaults); its ACCESS_FOLDER is read instead of ACCESS_CONF, as fwknopd does")
    p.add_argument("-o", "--output", metavar="OUT", help="write the TOML here (default: stdout)")
    p.add_argument("--key-dir", metavar="DIR",
                   help="write each door's key file (mode 0600) here (default: OUT's directory, "
                   "else /etc/gatekeeper)")
    p.set_defaults(func=_cmd_import_fwknop)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except GatekeeperError as exc:
        print(f"gatekeeper: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
