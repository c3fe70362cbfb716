"""Packet captures as IP packets: pcap and pcapng files read by dpkt, frames unwrapped.

:func:`open_capture` reads the file's header (dpkt's ``pcap.Reader``, then its
``pcapng.Reader``) and returns a :class:`Capture`, whose :meth:`Capture.packets` yields
``(timestamp, ip_packet, outgoing)`` for each frame that carries IPv4 or IPv6. Link
types: Ethernet (1), Linux cooked capture v1 (113) and v2 (276, what ``tcpdump -i any``
writes), raw IP (12, 14, 101, 228, 229) and BSD loopback (0), each with or without VLAN
tags (802.1Q, 802.1ad, QinQ). ``outgoing`` is True only where the frame says so: in a
cooked capture, sent by this host, or on loopback (``-i any`` sees lo too; never guarded).

What cannot be read is said, never guessed: a file that is not a capture, or whose link
type is not one of those, is a :class:`CaptureError` (nothing is replayed); a capture cut
short ends the packets with :attr:`Capture.truncated` set (what was read stands); frames
that carry something other than IP are counted in :attr:`Capture.not_ip`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, BinaryIO

import dpkt

from gatekeeper.errors import GatekeeperError

ETHERNET, LINUX_SLL, LINUX_SLL2, NULL = 1, 113, 276, 0
RAW = frozenset((12, 14, 101, 228, 229))
LINK_NAMES = {ETHERNET: "Ethernet", LINUX_SLL: "Linux cooked v1", LINUX_SLL2: "Linux cooked v2",
              NULL: "BSD loopback", **dict.fromkeys(RAW, "raw IP")}
_IPV4, _IPV6 = 0x0800, 0x86DD
_IP_TYPES = frozenset((b"\x08\x00", b"\x86\xdd"))
_VLAN = frozenset((0x8100, 0x88A8, 0x9100))
_MAX_TAGS = 3
_OUTGOING = 4  # the cooked captures' packet type of a frame this host sent
_LOOPBACK = 772  # ARPHRD_LOOPBACK: a frame of lo, which gatekeeper never guards
_NULL_IPV6 = frozenset((24, 28, 30))  # BSD loopback's AF_INET6 values (host order)


class CaptureError(GatekeeperError):
    """The file cannot be replayed at all: one line naming it and why."""


class Capture:
    """An open capture: its link type and its IP packets, read once."""

    def __init__(self, path: str, file: BinaryIO, reader: Any, kind: str) -> None:
        self.path = path
        self.kind = kind  # "pcap" or "pcapng"
        self.link = int(reader.datalink())
        self._file = file
        self._reader = reader
        self.frames = 0  # frames read
        self.not_ip = 0  # frames that carry neither IPv4 nor IPv6 (ARP, LLDP, ...)
        self.truncated = ""  # why the capture ended early, "" when it did not
        if self.link not in LINK_NAMES:
            known = ", ".join(f"{n} ({k})" for k, n in sorted(LINK_NAMES.items()))
            raise CaptureError(f"{path}: link type {self.link} is not one replay reads ({known})")

    def close(self) -> None:
        self._file.close()

    def packets(self) -> Iterator[tuple[float, bytes, bool]]:
        """``(timestamp, IP packet, outgoing)`` a frame that carries IP, in file order."""
        unwrap = _UNWRAP[self.link]
        # The common frame unwrapped here: untagged Ethernet, or raw IP (its version nibble).
        at = 12 if self.link == ETHERNET else -1
        raw = self.link in RAW
        frames = self.frames
        last = b""
        try:
            for ts, frame in self._reader:
                frames += 1
                last = frame
                if at >= 0 and frame[at:at + 2] in _IP_TYPES:
                    ip, outgoing = frame[at + 2:], False
                elif raw and frame and frame[0] >> 4 in (4, 6):
                    ip, outgoing = frame, False
                else:
                    ip, outgoing = unwrap(frame)
                    if not ip:
                        self.not_ip += 1
                        continue
                yield ts if ts.__class__ is float else float(ts), ip, outgoing
        except (dpkt.UnpackError, struct.error, ValueError) as exc:
            self.truncated = f"cut short after {frames} packets ({exc.__class__.__name__})"
        finally:
            self.frames = frames
        if not self.truncated and self.kind == "pcap" and frames:
            self._check_tail(len(last))

    def _check_tail(self, length: int) -> None:
        """dpkt's pcap reader gives a record cut short as it is: the last record's header
        must say the length read."""
        f = self._file
        end = f.tell()
        if end < length + 16:
            return
        f.seek(end - length - 16)
        header = f.read(16)
        little = self._reader._Reader__fh.__class__ is dpkt.pcap.LEFileHdr
        caplen = struct.unpack("<I" if little else ">I", header[8:12])[0]
        if caplen != length:
            self.truncated = (f"cut short in packet {self.frames} ({length} of its {caplen} bytes; "
                              "taken as read)")


def open_capture(path: str) -> Capture:
    """Open ``path`` as a pcap or pcapng file; :class:`CaptureError` if it is neither."""
    try:
        f = open(path, "rb")  # noqa: SIM115 (the Capture owns it)
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read: {exc.strerror or exc}") from None
    errors = []
    for kind, make in (("pcap", dpkt.pcap.Reader), ("pcapng", dpkt.pcapng.Reader)):
        try:
            f.seek(0)
            return Capture(path, f, make(f), kind)
        except CaptureError:
            f.close()
            raise
        except (dpkt.UnpackError, ValueError, struct.error, OSError) as exc:
            errors.append(f"{kind}: {exc or exc.__class__.__name__}")
    f.close()
    raise CaptureError(f"{path}: not a pcap or pcapng capture ({'; '.join(errors)})")


def first_time(path: str) -> float | None:
    """The timestamp of the capture's first frame (None: no frame)."""
    capture = open_capture(path)
    try:
        for ts, _, _ in capture.packets():
            return ts
        return None
    finally:
        capture.close()


# -- link layers: a frame's IP packet (b"" when it carries none) and whether it went out --


def _ethertype(frame: bytes, off: int) -> bytes:
    """The IP packet after the EtherType at ``off``, past any VLAN tags."""
    for _ in range(_MAX_TAGS + 1):
        if len(frame) < off + 2:
            return b""
        kind = frame[off] << 8 | frame[off + 1]
        if kind in (_IPV4, _IPV6):
            return frame[off + 2:]
        if kind not in _VLAN:
            return b""
        off += 4
    return b""


def _ethernet(frame: bytes) -> tuple[bytes, bool]:
    return _ethertype(frame, 12), False


def _sll(frame: bytes) -> tuple[bytes, bool]:
    if len(frame) < 16:
        return b"", False
    return _ethertype(frame, 14), ((frame[0] << 8 | frame[1]) == _OUTGOING
                                   or (frame[2] << 8 | frame[3]) == _LOOPBACK)


def _sll2(frame: bytes) -> tuple[bytes, bool]:
    if len(frame) < 20:
        return b"", False
    kind = frame[0] << 8 | frame[1]
    outgoing = frame[10] == _OUTGOING or (frame[8] << 8 | frame[9]) == _LOOPBACK
    if kind in (_IPV4, _IPV6):
        return frame[20:], outgoing
    return (_ethertype(frame, 22) if kind in _VLAN else b""), outgoing  # a tag after the header


def _raw(frame: bytes) -> tuple[bytes, bool]:
    return (frame if frame and frame[0] >> 4 in (4, 6) else b""), False


def _null(frame: bytes) -> tuple[bytes, bool]:
    if len(frame) < 4:
        return b"", False
    family = frame[0] | frame[3]  # AF_ in the writer's byte order, either one
    return (frame[4:] if family == 2 or family in _NULL_IPV6 else b""), False


_UNWRAP = {ETHERNET: _ethernet, LINUX_SLL: _sll, LINUX_SLL2: _sll2, NULL: _null,
           **dict.fromkeys(RAW, _raw)}
