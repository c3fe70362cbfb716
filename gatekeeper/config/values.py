"""The values of a config: tables, numbers, strings, lists, ``PORT[:PROTO]`` ports, TCP
flags and commands, each checked and read into a model value."""

from __future__ import annotations

import ipaddress
import shlex
from typing import Any

from gatekeeper.config import ConfigError
from gatekeeper.model import (
    ICMP,
    MAX_ICMP_PAYLOAD,
    MAX_STEPS,
    PROTO_NAMES,
    PROTO_NUMBERS,
    TCP,
    TCP_FLAG_BITS,
    UDP,
    Port,
    TcpFlags,
)


class Reader:
    """One TOML value of the config file ``name`` into a model value, or a
    :class:`~gatekeeper.config.ConfigError` naming the file and the key."""

    def __init__(self, name: str) -> None:
        self.name = name

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.name}: {key}: {message}")

    def _table(self, value: Any, key: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table")
        for k in value:
            if k not in allowed:
                allowed_text = ", ".join(sorted(allowed))
                shown = k if k.isprintable() else repr(k)  # keep the message on one line
                raise self.fail(f"{key}.{shown}" if key else shown, f"unknown key (allowed: {allowed_text})")
        return value

    def _int(self, value: Any, key: str, lo: int, hi: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be a whole number, got {value!r}")
        if not lo <= value <= hi:
            raise self.fail(key, f"must be between {lo} and {hi}, got {value}")
        return value

    def _number(self, value: Any, key: str, lo: float, hi: float) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"must be a number of seconds, got {value!r}")
        if not lo < value <= hi:
            raise self.fail(key, f"must be more than {lo:g} and at most {hi:g}, got {value}")
        return float(value)

    def _str(self, value: Any, key: str) -> str:
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {value!r}")
        return value

    def _list(self, value: Any, key: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list, got {value!r}")
        return value

    def port(self, value: Any, key: str, allowed: tuple[int, ...] = (TCP, UDP, ICMP)) -> Port:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        text = self._str(value, key).strip().lower()
        port_text, colon, proto_text = text.partition(":")
        proto_text = proto_text if colon else "tcp"
        proto = PROTO_NUMBERS.get(proto_text)
        if proto is None:
            raise self.fail(key, f"{value!r}: protocol must be tcp, udp or icmp")
        if proto not in allowed:
            names = " or ".join(PROTO_NAMES[p] for p in allowed)
            raise self.fail(key, f"{value!r}: only {names} is allowed here")
        if not (port_text.isascii() and port_text.isdigit()):
            raise self.fail(key, f"{value!r}: expected PORT[:PROTO], e.g. 7000:udp")
        port = int(port_text)
        if proto == ICMP:
            if port > MAX_ICMP_PAYLOAD:
                raise self.fail(key, f"{value!r}: icmp payload size must be 0-{MAX_ICMP_PAYLOAD}")
        elif not 1 <= port <= 65535:
            raise self.fail(key, f"{value!r}: port must be 1-65535")
        return Port(proto, port)

    def ports(
        self, value: Any, key: str, allowed: tuple[int, ...] = (TCP, UDP, ICMP), *, sequence: bool
    ) -> tuple[Port, ...]:
        items = self._list(value, key)
        if not items:
            raise self.fail(key, "must not be empty")
        if len(items) > MAX_STEPS:
            raise self.fail(key, f"at most {MAX_STEPS} entries")
        out = tuple(self.port(v, f"{key}[{i}]", allowed) for i, v in enumerate(items))
        if sequence:
            for i in range(1, len(out)):
                if out[i] == out[i - 1]:
                    raise self.fail(
                        f"{key}[{i}]",
                        f"{out[i]} repeats the step before it; a repeat cannot be told apart "
                        "from a retransmitted knock",
                    )
        elif len(set(out)) != len(out):
            raise self.fail(key, "lists a port twice")
        return out

    def tcp_flags(self, value: Any, key: str) -> TcpFlags:
        text = self._str(value, key)
        required = forbidden = 0
        for raw in text.split(","):
            word = raw.strip().lower()
            negate = word.startswith("!")
            word = word[1:] if negate else word
            bit = TCP_FLAG_BITS.get(word)
            if bit is None:
                names = ", ".join(TCP_FLAG_BITS)
                raise self.fail(key, f"{raw.strip()!r}: flags are {names} (prefix ! to forbid)")
            if negate:
                forbidden |= bit
            else:
                required |= bit
        if required & forbidden:
            raise self.fail(key, f"{text!r} both requires and forbids a flag")
        return TcpFlags(required, forbidden)

    def command(self, value: Any, key: str) -> tuple[str, ...]:
        if isinstance(value, str):
            try:
                argv = shlex.split(value)
            except ValueError as exc:
                raise self.fail(key, f"cannot split into arguments: {exc}") from None
        else:
            argv = [self._str(v, f"{key}[{i}]") for i, v in enumerate(self._list(value, key))]
        if not argv or not argv[0]:
            raise self.fail(key, "must name a program")
        return tuple(argv)

    def nat_target(self, value: Any, key: str) -> tuple[str, int]:
        """``"HOST:PORT"`` (``"[V6]:PORT"``): an internal host's IP address and a port."""
        text = self._str(value, key)
        host, colon, port = text.rpartition(":")
        bracketed = host.startswith("[") and host.endswith("]")
        host = host[1:-1] if bracketed else host
        try:
            if (not colon or "%" in host or (":" in host) != bracketed or not port.isdigit()
                    or not 1 <= int(port) <= 65535):
                raise ValueError(text)
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise self.fail(key, f"{text!r}: use HOST:PORT, an IP address (IPv6 in brackets) "
                            "and a port 1-65535") from None
        if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
            raise self.fail(key, f"{text!r}: not an address a host behind the gateway has")
        return str(ip), int(port)

    def spa_nat(self, data: dict[str, Any], where: str) -> dict[str, Any]:
        """``spa_nat`` (the targets ``fwknop -N`` may ask for) and ``spa_force_nat``, as
        SpaDoor's keywords."""
        out: dict[str, Any] = {}
        if "spa_nat" in data:
            key = f"{where}.spa_nat"
            raw = self._list(data["spa_nat"], key)
            nat = tuple(self.nat_target(v, f"{key}[{i}]") for i, v in enumerate(raw))
            if len(set(nat)) != len(nat):
                raise self.fail(key, "lists a target twice")
            out["nat"] = nat
        if "spa_force_nat" in data:
            if "spa_nat" in data:
                raise self.fail(f"{where}.spa_force_nat", "not with spa_nat: the forced target is "
                                "the only one any request gets")
            out["force_nat"] = self.nat_target(data["spa_force_nat"], f"{where}.spa_force_nat")
        if out and "host" in data:
            raise self.fail(f"{where}.host", "not with spa_nat or spa_force_nat (the target names "
                            "the host behind the gateway)")
        return out

