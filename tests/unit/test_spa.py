"""The SPA codec without a client: key files, our encoder, each stage's failure, field parsing, the
replay cache, and never raising on hostile input. (The real fwknop client: test_spa_clients.py;
the encrypted port sequences: test_spa_sequence.py.)"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.spa.fwknop import (
    MAX_PACKET,
    MIN_PACKET,
    SALTED_PREFIX,
    KeyFileError,
    SpaKeys,
    Stage,
    format_key_file,
    generate_keys,
    parse_key_file,
    seal,
)
from gatekeeper.spa.replay import Admission, ReplayCache
from gatekeeper.spa.request import Request, encode
from tests.fixtures.doors import CLIENT, KEYS
from tests.fixtures.spa import FAST, OTHER, b64, b64s, check, with_hmac

# -- key files --------------------------------------------------------------------------


def test_key_file_forms() -> None:
    k, h = base64.b64encode(KEYS.encryption).decode(), base64.b64encode(KEYS.hmac).decode()
    for text in (f"KEY_BASE64: {k}\nHMAC_KEY_BASE64: {h}\n",
                 f"# fwknop keys\n\nHMAC_KEY_BASE64    {h}\r\nKEY_BASE64\t{k}",
                 f"  KEY_BASE64:{k}  \nHMAC_KEY_BASE64 : {h.rstrip('=')}\n"):
        keys = parse_key_file(text, "k")
        assert (keys.encryption, keys.hmac, keys.origin) == (KEYS.encryption, KEYS.hmac, "k")
    assert parse_key_file(format_key_file(KEYS), "x").hmac == KEYS.hmac
    assert k not in repr(parse_key_file(format_key_file(KEYS), "x"))
    fresh = generate_keys()
    assert (len(fresh.encryption), len(fresh.hmac)) == (32, 64)


@pytest.mark.parametrize(("text", "error"), [
    ("KEY_BASE64: {k}\nHMAC_KEY: {h}{h}{h}\n", r"^/etc/k:2: HMAC_KEY is 264 bytes, fwknop takes 1-128"),
    ("KEY: 123456789012345678901234567890123\nHMAC_KEY_BASE64: {h}\n",
     r"^/etc/k:1: KEY is 33 bytes, fwknop takes 1-32"),
    ("KEY_BASE64: {k}\nKEY: pass\nHMAC_KEY_BASE64: {h}\n", r"^/etc/k:2: KEY_BASE64 given twice"),
    ("KEY: same\nHMAC_KEY: same\n", r"^/etc/k: the encryption and HMAC keys must differ"),
    ("KEY_BASE64: {k}\nHMAC_PASS: {h}\n", r"^/etc/k:2: expected 'KEY_BASE64"),
    ("KEY_BASE64: {k}\n", r"^/etc/k: no HMAC_KEY_BASE64 line"),
    ("HMAC_KEY_BASE64: {h}\n", r"^/etc/k: no KEY_BASE64 line"),
    ("KEY_BASE64: {k}\nKEY_BASE64: {k}\nHMAC_KEY_BASE64: {h}\n", r"^/etc/k:2: KEY_BASE64 given twice"),
    ("KEY_BASE64: {k}!\nHMAC_KEY_BASE64: {h}\n", r"^/etc/k:1: KEY_BASE64 is not valid base64"),
    ("KEY_BASE64: {k}\nHMAC_KEY_BASE64: c2hvcnQ=\n", r"^/etc/k:2: HMAC_KEY_BASE64 decodes to 5 bytes"),
    ("KEY_BASE64: {h}\nHMAC_KEY_BASE64: {h}\n", r"^/etc/k:1: KEY_BASE64 decodes to 64 bytes, must be 16-32"),
    ("KEY_BASE64: {k}\nHMAC_KEY_BASE64: {k}\n", r"^/etc/k: the encryption and HMAC keys must differ"),
    ("KEY_BASE64: {k} extra\nHMAC_KEY_BASE64: {h}\n", r"^/etc/k:1: KEY_BASE64 is not valid base64"),
    ("", r"^/etc/k: no KEY_BASE64 line"),
])
def test_key_file_errors(text: str, error: str) -> None:
    k, h = base64.b64encode(KEYS.encryption).decode(), base64.b64encode(KEYS.hmac).decode()
    with pytest.raises(KeyFileError, match=error) as caught:
        parse_key_file(text.format(k=k, h=h), "/etc/k")
    assert k not in str(caught.value) and h not in str(caught.value)


# -- our encoder ------------------------------------------------------------------------


def test_a_mapped_address_is_granted_as_the_ipv4_host() -> None:
    mapped = f"::ffff:{CLIENT}"
    for asked, source in ((mapped, CLIENT), (CLIENT, mapped), (mapped, mapped),
                          (mapped, ipaddress.ip_address(mapped).packed)):
        result = check(encode(KEYS, Request([("tcp", 22)], asked, time.time())), source=source)
        assert result.ok and result.grant == CLIENT, (asked, source)
    v6 = "2001:db8::5"
    assert check(encode(KEYS, Request([("tcp", 22)], mapped, time.time())), source=v6).stage is Stage.SOURCE
    other = check(encode(KEYS, Request([("tcp", 22)], mapped, time.time())), source=v6, other_source=True)
    assert other.ok and other.grant == CLIENT
    anyone = check(encode(KEYS, Request([("tcp", 22)], "::ffff:0.0.0.0", time.time())), source=OTHER,
                   other_source=True)
    assert anyone.ok and anyone.grant == OTHER


def test_encode_round_trip() -> None:
    now = 1_800_000_000.0
    packet = encode(KEYS, Request([("tcp", 22)], CLIENT, now, user="bob"))
    assert not packet.startswith(SALTED_PREFIX) and packet.isascii() and b"=" not in packet
    assert base64.b64decode(SALTED_PREFIX + packet[:-43] + b"==")[:8] == b"Salted__"
    result = check(packet, now=now + 5)
    assert result.ok and result.message is not None
    msg = result.message
    assert (msg.user, msg.timestamp, msg.message_type) == ("bob", int(now), 1)
    timed = check(encode(KEYS, Request([("tcp", 22), ("udp", 53)], CLIENT, now, client_timeout=90)), now=now,
                  allowed={("tcp", 22), ("udp", 53)})
    assert timed.ok and timed.message is not None
    assert (timed.message.message_type, timed.message.client_timeout) == (3, 90)
    v6 = check(encode(KEYS, Request([("tcp", 22)], "2001:db8::10", now)), now=now, source="2001:db8::10")
    assert v6.ok and v6.grant == "2001:db8::10"


def test_encode_is_deterministic_given_salt_and_random() -> None:
    a = encode(KEYS, Request([("tcp", 22)], CLIENT, 1800000000, random="1234567890123456"), salt=b"12345678")
    b = encode(KEYS, Request([("tcp", 22)], CLIENT, 1800000000, random="1234567890123456"), salt=b"12345678")
    c = encode(KEYS, Request([("tcp", 22)], CLIENT, 1800000000))
    assert a == b != c
    encoded = b"1234567890123456:cm9vdA:1800000000:3.0.0:1:MjAzLjAuMTEzLjEwLHRjcC8yMg"
    plaintext = Request([("tcp", 22)], CLIENT, 1800000000, user="root", random="1234567890123456").message()
    assert plaintext == encoded + b":" + b64(hashlib.sha256(encoded).digest())


@pytest.mark.parametrize("bad", [
    {"access": []}, {"access": [("sctp", 1)]}, {"access": [("tcp", 70000)]}, {"address": "host"},
    {"user": ""}, {"user": "a\nb"}, {"client_timeout": -1}, {"salt": b"short"}, {"random": "12"},
])
def test_encode_rejects_bad_arguments(bad: dict[str, object]) -> None:
    args: dict[str, object] = {"access": [("tcp", 22)], "address": CLIENT, "now": 1e9}
    args.update(bad)
    salt = args.pop("salt", None)
    with pytest.raises(ValueError):
        encode(KEYS, Request(**args), salt=salt)  # type: ignore[arg-type]


def test_each_stage_has_its_own_failure() -> None:
    now = 1_800_000_000
    assert check(b"x" * (MIN_PACKET - 1)).stage is Stage.SIZE
    assert check(b"A" * (MAX_PACKET + 1)).stage is Stage.SIZE
    assert check(b"A" * 4000).stage is Stage.SIZE
    assert check(b"A" * MIN_PACKET).stage is Stage.HMAC
    # authenticated but not a whole number of cipher blocks, or not base64 at all
    assert check(with_hmac(KEYS, b"A" * 150)).stage is Stage.DECRYPT
    assert check(with_hmac(KEYS, b"!" * 150)).stage is Stage.DECRYPT
    assert check(seal(KEYS, b"not an spa message at all, but long enough" * 3)).stage is Stage.PARSE
    good = Request([("tcp", 22)], CLIENT, now, random="1234567890123456").message()
    bad_digest = good[:-43] + (b"B" if good[-43:-42] == b"A" else b"A") + good[-42:]
    assert check(seal(KEYS, bad_digest), now=now).stage is Stage.DIGEST
    assert check(seal(KEYS, good), now=now + 121).stage is Stage.STALE
    assert check(seal(KEYS, good), now=now - 121).stage is Stage.STALE
    assert check(seal(KEYS, good), now=now + 120).ok
    rm = b64(f"{CLIENT},rm -rf /".encode())
    encoded = b"1234567890123456:" + b64(b"root") + f":{now}:3.0.0:0:".encode() + rm
    command = encoded + b":" + b64(hashlib.sha256(encoded).digest())
    result = check(seal(KEYS, command), now=now)  # a door without spa_commands
    assert result.stage is Stage.COMMAND and result.message is not None
    assert result.message.command == "rm -rf /" and result.message.access == ()
    assert check(seal(KEYS, good), now=now, source=OTHER).stage is Stage.SOURCE
    assert check(seal(KEYS, good), now=now, source="not an address").stage is Stage.SOURCE


_VALID = ["1234567890123456", *b64s("root"), "1800000000", "3.0.0", "1", *b64s("203.0.113.10,tcp/22")]


def _with(**changes: str) -> list[str]:
    names = ["random", "user", "stamp", "version", "kind", "message"]
    return [changes.get(name, value) for name, value in zip(names, _VALID, strict=True)]


@pytest.mark.parametrize(("fields", "stage"), [
    (_VALID, Stage.OK),
    (_with(user=b64("é".encode()).decode()), Stage.OK),
    (_with(random="123"), Stage.PARSE),
    (_with(random="123456789012345x"), Stage.PARSE),
    (_with(user=""), Stage.PARSE),
    (_with(user=b64(b"\x00").decode()), Stage.PARSE),
    (_with(user=b64(b"\xff").decode()), Stage.PARSE),
    (_with(user=b64(b"a" * 65).decode()), Stage.PARSE),
    (_with(user="r!!t"), Stage.PARSE),
    (_with(stamp=""), Stage.PARSE),
    (_with(stamp="18e8"), Stage.PARSE),
    (_with(version=""), Stage.PARSE),
    (_with(version="123456789"), Stage.PARSE),
    (_with(kind="7"), Stage.PARSE),
    (_with(kind="a"), Stage.PARSE),
    *[(_with(message=m), Stage.PARSE) for m in b64s(
        "203.0.113.10,TCP/22", "203.0.113.10,tcp/65536", "1.2.3,tcp/22", "fe80::1%lo,tcp/22",
        "203.0.113.10,", "203.0.113.10,tcp/22,,udp/1", "203.0.113.10,sctp/1", "203.0.113.10,tcp/-1",
        "203.0.113.10", "203.0.113.10,tcp22")],
    (_with(kind="2"), Stage.PARSE),  # a NAT request without its NAT field
    ([*_with(kind="2"), *b64s("192.168.1.2,22")], Stage.ACCESS),
    (_with(kind="3"), Stage.PARSE),  # a client-timeout request without the timeout
    ([*_with(kind="3"), "45"], Stage.OK),
    ([*_with(kind="3"), "x"], Stage.PARSE),
    ([*_with(kind="3"), *b64s("auth"), "45"], Stage.OK),
    ([*_VALID, *b64s("auth")], Stage.OK),
    ([*_VALID, *b64s("auth", "more")], Stage.PARSE),
    ([*_VALID, "!"], Stage.PARSE),
    (_with(message=b64(b"203.0.113.10,tcp/22\t").decode()), Stage.PARSE),
])
def test_field_parsing(fields: list[str], stage: Stage) -> None:
    encoded = ":".join(fields).encode()
    result = check(seal(KEYS, encoded + b":" + b64(hashlib.sha256(encoded).digest())), now=1_800_000_000)
    assert result.stage is stage
    if stage is Stage.OK:
        assert result.message is not None
        assert result.message.server_auth == ("auth" if b64(b"auth").decode() in fields else None)


def test_parse_checks_the_whole_plaintext() -> None:
    encoded = ":".join(_VALID).encode()
    digest = b64(hashlib.sha256(encoded).digest())
    assert check(seal(KEYS, encoded + b":" + digest), now=1_800_000_000).ok
    assert check(seal(KEYS, encoded + b"\t:" + digest), now=1_800_000_000).stage is Stage.PARSE
    md5_sized = digest[:22]  # an md5 digest: a type the default door does not take
    assert check(seal(KEYS, encoded + b":" + md5_sized), now=1_800_000_000).stage is Stage.DIGEST_TYPE
    assert check(seal(KEYS, encoded + b":" + digest[:30]), now=1_800_000_000).stage is Stage.PARSE
    assert check(seal(KEYS, encoded + b":" + digest + b"\xff"), now=1_800_000_000).stage is Stage.PARSE


def test_spa_keys_are_checked() -> None:
    for enc, mac in ((b"", bytes(range(64))), (bytes(33), bytes(range(64))),
                     (bytes(32), bytes(129)), (bytes(32), bytes(32))):
        with pytest.raises(ValueError):
            SpaKeys(enc, mac)


def test_full_replay_cache_fails_closed() -> None:
    cache = ReplayCache(max_entries=2)
    now = 1_800_000_000.0
    for _ in range(2):
        assert check(encode(KEYS, Request([("tcp", 22)], CLIENT, now)), now=now, replay=cache).ok
    again = check(encode(KEYS, Request([("tcp", 22)], CLIENT, now)), now=now, replay=cache)
    assert again.stage is Stage.REPLAY
    assert cache.overflows == 1
    # entries live for twice the window, then make room
    assert check(encode(KEYS, Request([("tcp", 22)], CLIENT, now + 240)), now=now + 240, replay=cache).ok


def test_replay_cache_unit() -> None:
    cache = ReplayCache(max_entries=3)
    assert cache.admit(b"a", 0.0, 10.0) is Admission.NEW
    assert cache.admit(b"a", 9.9, 10.0) is Admission.REPLAY
    assert cache.admit(b"b", 5.0, 100.0) is Admission.NEW
    assert cache.admit(b"c", 5.0, 1.0) is Admission.NEW
    assert cache.admit(b"d", 5.5, 1.0) is Admission.FULL and cache.overflows == 1
    assert cache.admit(b"a", 10.0, 10.0) is Admission.NEW  # a expired at 10, c at 6
    assert len(cache) == 2 and b"c" not in cache and b"b" in cache
    assert cache.purge(1000.0) == 2 and len(cache) == 0
    with pytest.raises(ValueError):
        ReplayCache(0)


# -- never raising, never caching the unauthenticated -----------------------------------


@FAST
@given(st.binary(max_size=3200))
def test_random_bytes_never_raise_or_enter_the_cache(data: bytes) -> None:
    cache = ReplayCache()
    assert check(data, replay=cache).stage in (Stage.SIZE, Stage.HMAC)
    assert check(SALTED_PREFIX + data, replay=cache).stage in (Stage.SIZE, Stage.HMAC)
    assert len(cache) == 0


@FAST
@given(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
               min_size=MIN_PACKET, max_size=MAX_PACKET))
def test_random_base64_fails_the_hmac(text: str) -> None:
    cache = ReplayCache()
    assert check(text.encode(), replay=cache).stage is Stage.HMAC
    assert len(cache) == 0


@FAST
@given(st.integers(0, 400), st.integers(0, 400), st.binary(max_size=8))
def test_cut_and_patched_packets_never_pass(head: int, tail: int, junk: bytes) -> None:
    request = Request([("tcp", 22)], CLIENT, 1_800_000_000, random="1234567890123456")
    packet = encode(KEYS, request, salt=b"saltsalt")
    cache = ReplayCache()
    for piece in (packet[:head], packet[head:], packet[:head] + junk + packet[head + tail:]):
        if piece.strip() == packet:  # surrounding whitespace is ignored by design
            continue
        assert check(piece, now=1_800_000_000, replay=cache).stage in (Stage.SIZE, Stage.HMAC)
    assert len(cache) == 0


_FIELD = st.one_of(
    st.text(max_size=30),
    st.text("0123456789", max_size=20),
    st.binary(max_size=40).map(lambda b: b64(b).decode()),
    st.sampled_from(["1", "3", "0", "2", "7", "99", "3.0.0", "", "1234567890123456",
                     b64(b"203.0.113.10,tcp/22").decode(), b64(b"::1,udp/53,tcp/1").decode(),
                     b64(b"1.2.3.4,tcp/99999").decode(), b64(b"fe80::1%eth0,tcp/22").decode(),
                     b64(b"0.0.0.0,none/0").decode(), b64(b"1.2.3.4,cmd").decode(),
                     b64("é\x00".encode()).decode()]),
)


@FAST
@given(st.lists(_FIELD, max_size=11), st.sampled_from(["sha256", "sha384", "sha512", "md5", None]))
def test_authenticated_garbage_never_raises(fields: list[str], digest: str | None) -> None:
    """Sealed with the right keys, so the parser itself meets the garbage."""
    try:
        encoded = ":".join(fields).encode()
    except UnicodeEncodeError:
        return
    plaintext = encoded if digest is None else encoded + b":" + b64(hashlib.new(digest, encoded).digest())
    cache = ReplayCache()
    result = check(seal(KEYS, plaintext), replay=cache, now=1_800_000_000)
    if result.stage < Stage.REPLAY:
        assert len(cache) == 0


@FAST
@given(
    st.sampled_from(["1234567890123456", "123", "12345678901234567", "abcdefghijklmnop"]),
    st.sampled_from([*b64s("root", "a" * 65, "\x00", "é"), "", "!!", "QQ=", b64(b"\xff\xfe").decode()]),
    st.sampled_from(["1800000000", "1800000100", "", "-1", "1" * 13, "18e8"]),
    st.sampled_from(["3.0.0", "", "123456789", "2.6"]),
    st.sampled_from([*map(str, range(-1, 9)), "", "01", "a", "003"]),
    st.sampled_from([*b64s("203.0.113.10,tcp/22", "203.0.113.10,", ",tcp/22", "203.0.113.10,tcp/22,udp/53",
                            "203.0.113.10,TCP/22", "203.0.113.10,tcp/", "203.0.113.10,tcp/65536",
                            "1.2.3,tcp/22", "::1,tcp/22", "203.0.113.10,echo hi", "fe80::1%lo,tcp/22",
                            "0.0.0.0,icmp/0", "203.0.113.10,tcp/22,,udp/1"), "", "###"]),
    st.lists(st.sampled_from([*b64s("192.168.1.2,22", "auth"), "45", "", "x", "99999999999999"]),
             max_size=3),
)
def test_near_valid_messages_never_raise(random: str, user: str, stamp: str, version: str, kind: str,
                                         message: str, extra: list[str]) -> None:
    encoded = ":".join([random, user, stamp, version, kind, message, *extra]).encode()
    plaintext = encoded + b":" + b64(hashlib.sha256(encoded).digest())
    cache = ReplayCache()
    result = check(seal(KEYS, plaintext), replay=cache, now=1_800_000_000,
                   allowed={("tcp", 22), ("udp", 53), ("udp", 1), ("icmp", 0)})
    if Stage.OK < result.stage < Stage.REPLAY:  # (an OK message is remembered, rightly)
        assert len(cache) == 0
    if result.ok:
        assert result.message is not None and result.message.message_type in (1, 3)
        assert result.grant == CLIENT


@FAST
@given(st.binary(max_size=600))
def test_sealed_random_plaintext_never_raises(plaintext: bytes) -> None:
    cache = ReplayCache()
    result = check(seal(KEYS, plaintext), replay=cache)
    assert result.stage in (Stage.PARSE, Stage.SIZE)
    assert len(cache) == 0
