"""The encrypted port sequence codec: round trips, the port mapping, tampering and its failures,
and never raising on random port lists."""

from __future__ import annotations

import ipaddress
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.spa import sequence as seq
from gatekeeper.spa.replay import ReplayCache
from tests.fixtures.doors import CLIENT
from tests.fixtures.spa import FAST

# -- encrypted port sequences -----------------------------------------------------------

SEQ_KEY = bytes(range(32))
NOW = 1_800_000_000.0
_V4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
_V6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))


def decode(ports: list[int], key: bytes = SEQ_KEY, now: float = NOW, window: float = 120.0, *,
           replay: ReplayCache | None = None,
           port_range: tuple[int, int] = (745, 1000)) -> seq.SequenceResult:
    return seq.decode(ports, key, now, window, replay=ReplayCache() if replay is None else replay,
                      port_range=port_range)


@FAST
@given(st.one_of(_V4, _V6), st.integers(0, 65535), st.sampled_from([6, 17, 1]),
       st.integers(0, seq.MAX_OPEN_FOR), st.integers(0, 2**32 - 1))
def test_sequence_round_trip(address: str, port: int, proto: int, open_for: int, now: int) -> None:
    ports = seq.encode(address, port, proto, open_for, now, SEQ_KEY)
    assert len(ports) == seq.knocks_for(address)
    assert all(745 <= p <= 1000 for p in ports)
    assert all(a != b for a, b in pairwise(ports)), "no port twice in a row"
    result = decode(ports, now=now)
    assert result.ok
    assert result.grant == seq.SequenceGrant(address, proto, port, open_for, now)


def test_sequence_lengths() -> None:
    assert (seq.KNOCKS_V4, seq.KNOCKS_V6) == (43, 55)
    assert len(seq.encode(CLIENT, 22, 6, 30, NOW, SEQ_KEY)) == 43
    assert len(seq.encode("2001:db8::1", 22, 6, 30, NOW, SEQ_KEY)) == 55


@FAST
@given(st.sampled_from([seq.BLOB_V4, seq.BLOB_V6]).flatmap(lambda n: st.binary(min_size=n, max_size=n)))
def test_port_mapping_is_a_bijection(blob: bytes) -> None:
    offsets = seq._to_offsets(blob)
    assert all(0 <= o < 256 for o in offsets)
    assert seq._from_offsets(offsets, len(blob)) == blob


def test_port_mapping_extremes() -> None:
    for blob in (bytes(42), b"\xff" * 42, bytes(54), b"\xff" * 54):
        assert seq._from_offsets(seq._to_offsets(blob), len(blob)) == blob


def test_sequence_other_range() -> None:
    ports = seq.encode(CLIENT, 22, 6, 30, NOW, SEQ_KEY, (2000, 2255))
    assert all(2000 <= p <= 2255 for p in ports)
    assert decode(ports, port_range=(2000, 2255)).ok
    shifted = [p - 1255 for p in ports]  # the same offsets in the default range
    assert decode(shifted).stage is seq.SequenceStage.AUTH
    with pytest.raises(ValueError):
        seq.encode(CLIENT, 22, 6, 30, NOW, SEQ_KEY, (745, 999))
    with pytest.raises(ValueError):
        seq.encode(CLIENT, 22, 6, 30, NOW, SEQ_KEY, (65400, 65655))


@FAST
@given(st.data())
def test_sequence_tampering_is_refused(data: st.DataObject) -> None:
    ports = seq.encode(CLIENT, 22, 6, 30, NOW, SEQ_KEY)
    i = data.draw(st.integers(0, len(ports) - 1))
    new = data.draw(st.integers(745, 1000).filter(lambda p: p != ports[i]))
    tampered = [*ports[:i], new, *ports[i + 1:]]
    cache = ReplayCache()
    assert decode(tampered, replay=cache).stage in (seq.SequenceStage.AUTH, seq.SequenceStage.RANGE)
    assert len(cache) == 0


def test_sequence_failures() -> None:
    ports = seq.encode(CLIENT, 22, 6, 30, NOW, SEQ_KEY)
    stage = seq.SequenceStage
    assert decode(ports[:-1]).stage is stage.LENGTH
    assert decode([*ports, 800]).stage is stage.LENGTH
    assert decode([]).stage is stage.LENGTH
    assert decode([*ports[:-1], 1001]).stage is stage.RANGE
    assert decode([744, *ports[1:]]).stage is stage.RANGE
    assert decode([*ports[:-1], ports[-2]]).stage is stage.RANGE  # the same port twice in a row
    assert decode([1000] * 43).stage is stage.RANGE
    assert decode(ports[::-1]).stage in (stage.AUTH, stage.RANGE)
    assert decode(ports, key=bytes(32)).stage is stage.AUTH
    assert decode(ports, key=SEQ_KEY[:16]).stage is stage.AUTH
    late = decode(ports, now=NOW + 121)
    assert late.stage is stage.STALE and late.grant is not None and late.grant.port == 22
    assert decode(ports, now=NOW - 121).stage is stage.STALE
    assert decode(ports, now=NOW + 500, window=600).ok
    cache = ReplayCache()
    assert decode(ports, replay=cache).ok
    assert decode(ports, now=NOW + 100, replay=cache).stage is stage.REPLAY
    assert decode(seq.encode(CLIENT, 22, 6, 30, NOW, SEQ_KEY), replay=cache).ok  # a new nonce
    with pytest.raises(ValueError):
        decode(ports, key=b"short")


@pytest.mark.parametrize("bad", [
    {"address": "nowhere"}, {"port": 65536}, {"proto": 256}, {"open_for": seq.MAX_OPEN_FOR + 1},
    {"now": -1.0}, {"now": 2.0**32}, {"key": bytes(31)},
])
def test_sequence_encode_rejects_bad_arguments(bad: dict[str, object]) -> None:
    args: dict[str, object] = {"address": CLIENT, "port": 22, "proto": 6, "open_for": 30, "now": NOW,
                               "key": SEQ_KEY}
    args.update(bad)
    with pytest.raises(ValueError):
        seq.encode(**args)  # type: ignore[arg-type]


@FAST
@given(st.lists(st.integers(-70000, 70000), max_size=60))
def test_random_port_lists_never_raise(ports: list[int]) -> None:
    cache = ReplayCache()
    assert not decode(ports, replay=cache).ok
    assert len(cache) == 0
