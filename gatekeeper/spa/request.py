"""The client side of SPA: what a packet asks for (:class:`Request`), and the packet.

The stock ``fwknop`` client's encoded message (see :mod:`gatekeeper.spa.fwknop` for the
format), built from one :class:`Request` and sealed with the door's keys: what
``gatekeeper spa`` sends and what the tests play the client with.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from gatekeeper.spa import cipher
from gatekeeper.spa.cipher import DEFAULT_SUITE, Suite
from gatekeeper.spa.fwknop import FKO_VERSION, PROTOCOLS, Access, MessageType, SpaKeys, seal


@dataclass(frozen=True)
class Request:
    """An access request as ``fwknop -A ACCESS -a ADDRESS`` fills it in at ``now``.

    ``access`` is a list like ``[("tcp", 22)]``; a ``client_timeout`` makes it a type 3
    message (``fwknop --fw-timeout``); ``random`` (16 decimal digits) is drawn when not
    given; ``digest`` is ``-m``'s message digest. fwknopd 2.6 only takes an IPv4
    ``address``; an IPv6 one is a gatekeeper extension.
    """

    access: Sequence[Access]
    address: str
    now: float
    user: str = "gatekeeper"
    client_timeout: int = 0
    random: str | None = None
    version: str = FKO_VERSION
    digest: str = "sha256"
    command: str | None = None  # fwknop --server-cmd: a command message instead of access
    nat: str | None = None  # fwknop -N HOST:PORT, as the message carries it: "HOST,PORT"

    def message(self) -> bytes:
        """The plaintext (encoded message, ``:``, its digest) that :func:`seal` encrypts;
        a ``ValueError`` names the field that does not fit the format."""
        random = str(10**15 + secrets.randbelow(9 * 10**15)) if self.random is None else self.random
        if not re.fullmatch(r"[0-9]{16}", random):
            raise ValueError("random must be 16 decimal digits")
        if not self.user or not self.user.isprintable() or len(self.user.encode()) > 64:
            raise ValueError("user must be 1-64 bytes of printable text")
        if not 0 <= self.client_timeout <= 0xFFFFFFFF:
            raise ValueError("client_timeout must be 0-4294967295")
        if not re.fullmatch(r"[0-9A-Za-z._-]{1,8}", self.version):
            raise ValueError("version must be 1-8 characters like 3.0.0")
        if self.command is not None:
            kind = MessageType.COMMAND
        elif self.nat is not None:
            kind = (MessageType.CLIENT_TIMEOUT_NAT_ACCESS if self.client_timeout
                    else MessageType.NAT_ACCESS)
        else:
            kind = MessageType.CLIENT_TIMEOUT_ACCESS if self.client_timeout else MessageType.ACCESS
        fields = [
            random.encode(),
            cipher.b64encode(self.user.encode()),
            str(int(self.now)).encode(),
            self.version.encode(),
            str(int(kind)).encode(),
            cipher.b64encode(self._access_text().encode()),
        ]
        if self.nat is not None:
            fields.append(cipher.b64encode(self.nat.encode()))
        if self.client_timeout:
            fields.append(str(self.client_timeout).encode())
        encoded = b":".join(fields)
        return encoded + b":" + cipher.b64encode(hashlib.new(self.digest, encoded).digest())

    def _access_text(self) -> str:
        ip = ipaddress.ip_address(self.address)
        if self.command is not None:
            if not self.command or not self.command.isprintable():
                raise ValueError("command must be printable text")
            return f"{ip},{self.command}"
        if not self.access:
            raise ValueError("ask for at least one proto/port")
        specs = []
        for proto, port in self.access:
            if proto not in PROTOCOLS:
                raise ValueError(f"protocol {proto!r}: must be one of {', '.join(sorted(PROTOCOLS))}")
            if not 0 <= port <= 65535:
                raise ValueError(f"port {port}: must be 0-65535")
            specs.append(f"{proto}/{port}")
        return f"{ip},{','.join(specs)}"


def encode(keys: SpaKeys, request: Request, *, salt: bytes | None = None,
           suite: Suite = DEFAULT_SUITE) -> bytes:
    """The SPA packet (UDP payload) ``fwknop --use-hmac`` sends for ``request``; ``suite``
    as ``-M`` and ``--hmac-digest-type`` (or no ``--use-hmac``) choose. ``salt`` is drawn
    when not given."""
    return seal(keys, request.message(), salt, suite)
