"""Rules across doors: names and sequences are unique, and no port has two jobs (a knock
port, a public port, a port a door protects, an SPA port or an encrypted range).

Each function takes ``fail(key, message)``, the loader's way of phrasing a
:class:`~gatekeeper.config.ConfigError` that names the config file and the key.
"""

from __future__ import annotations

from gatekeeper.config.keyfiles import Fail
from gatekeeper.model import ICMP, SPA_MIN_PAYLOAD, TCP, UDP, Door, Port, Settings, port_key


def cross_check(settings: Settings, doors: tuple[Door, ...], fail: Fail) -> None:
    names: set[str] = set()
    sequences: dict[tuple[Port, ...], str] = {}
    public = {s.key for s in settings.public}
    protected: dict[int, str] = {}
    for i, door in enumerate(doors):
        if door.name in names:
            raise fail(f"door[{i}].name", f"{door.name!r} is used by another door")
        names.add(door.name)
        for step in door.opens:
            if step.key in public:
                raise fail(f"door[{i}] ({door.name}).opens", f"{step} is also public")
            if door.host is None:
                protected[step.key] = door.name
    for i, door in enumerate(doors):
        where = f"door[{i}] ({door.name})"
        for kind, seq in (("sequence", door.sequence), ("close_sequence", door.close_sequence)):
            if not seq:
                continue
            other = sequences.get(seq)
            if other is not None:
                raise fail(f"{where}.{kind}", f"same sequence as {other}")
            sequences[seq] = f"{door.name}.{kind}"
            for j, step in enumerate(seq):
                if step.key in public:
                    raise fail(f"{where}.{kind}[{j}]", f"knock port {step} is also public")
                if step.key in protected:
                    raise fail(
                        f"{where}.{kind}[{j}]",
                        f"knock port {step} is also protected by door {protected[step.key]!r}",
                    )
    cross_check_special(public, protected, doors, fail)
    check_icmp_steps(doors, fail)


def cross_check_special(public: set[int], protected: dict[int, str], doors: tuple[Door, ...],
                        fail: Fail) -> None:
    """SPA ports and encrypted ranges must not be knock, public or protected ports,
    nor overlap each other; one-time sequences must not use another door's ports."""
    knocks: dict[int, str] = {}
    for door in doors:
        for step in (*door.sequence, *door.close_sequence):
            knocks[step.key] = door.name
    taken: dict[int, str] = {}  # special keys -> door name
    for i, door in enumerate(doors):
        where = f"door[{i}] ({door.name})"
        keys: list[tuple[int, str]] = []
        if door.spa is not None:  # the ports of its "udp" and "tcpraw" transports
            keys = [(port_key(proto, door.spa.port), f"{where}.spa_port")
                    for proto, name in ((UDP, "udp"), (TCP, "tcpraw")) if name in door.spa.transports]
        elif door.encrypted is not None:
            e = door.encrypted
            keys = [(port_key(p, port), f"{where}.encrypted_sequence.ports")
                    for p in (TCP, UDP) for port in range(e.first, e.last + 1)]
        elif door.one_time is not None:
            keys = [(s.key, f"{where}.one_time_sequences")
                    for _, steps in door.one_time.lines for s in steps]
        mine: set[int] = set()
        for k, key in keys:
            step = Port(k >> 16, k & 0xFFFF)
            for what, table in (("public", public), ("a knock port", knocks),
                                ("protected", protected), ("used by another door", taken)):
                if k in table and not (what == "used by another door" and k in mine):
                    owner = table[k] if isinstance(table, dict) else ""
                    text = f"{step} is {what}" + (f" ({owner!r})" if owner else "")
                    raise fail(key, text)
            mine.add(k)
        for k in mine:
            taken[k] = door.name


def check_icmp_steps(doors: tuple[Door, ...], fail: Fail) -> None:
    """With a door taking SPA over ICMP, an "N:icmp" knock step (an echo of N bytes) must
    be shorter than any SPA packet, or it would be taken for one."""
    spa = next((d.name for d in doors if d.spa is not None and "icmp" in d.spa.transports), None)
    if spa is None:
        return
    for i, door in enumerate(doors):
        lines = door.one_time.lines if door.one_time is not None else ()
        for kind, steps in (("sequence", door.sequence), ("close_sequence", door.close_sequence),
                            *(("one_time_sequences", s) for _, s in lines)):
            for step in steps:
                if step.proto == ICMP and step.port >= SPA_MIN_PAYLOAD:
                    raise fail(f"door[{i}] ({door.name}).{kind}",
                               f"knock step {step} is as long as an SPA packet, and door {spa!r} "
                               f"takes SPA over ICMP: use an echo payload below {SPA_MIN_PAYLOAD} bytes")
