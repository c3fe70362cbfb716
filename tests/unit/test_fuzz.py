"""Fuzzing the decoder and the engine through the worker's real callback.

Seeds: tests/fixtures/corpus/*.bin (made by tests/fixtures/make_corpus.py: valid, truncated and malformed
IPv4/IPv6 packets, IP options, fragments, extension headers, ICMP errors quoting other
packets). Hypothesis mutates them (bit flips, truncation, splices, random bytes) and every
result must get exactly one verdict with no exception escaping, whatever its bytes.

CI runs a bounded pass; a longer run is one command:

    GATEKEEPER_FUZZ_EXAMPLES=200000 .venv/bin/pytest tests/unit/test_fuzz.py
"""

from __future__ import annotations

import itertools
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatekeeper.config.load import loads
from gatekeeper.engine import Reason
from gatekeeper.queue.worker import Worker
from tests.fixtures.configs import CORPUS as CORPUS_DIR
from tests.fixtures.fakes import FakeGrants

CORPUS = sorted(CORPUS_DIR.glob("*.bin"))
SEEDS = [p.read_bytes() for p in CORPUS]
EXAMPLES = int(os.environ.get("GATEKEEPER_FUZZ_EXAMPLES", "3000"))

CONFIG = """
[gatekeeper]
public = ["80:tcp"]
[metrics]
listen = ""

[[door]]
name = "ssh"
sequence = ["7000:udp", "8000:tcp", "9000:udp"]
opens = ["22:tcp"]
close_sequence = ["9000:tcp", "8000:udp", "7000:tcp"]

[[door]]
name = "ping"
sequence = ["64:icmp", "128:icmp"]
opens = ["8080:tcp"]

[[door]]
name = "rdp"
sequence = ["4001", "4002:udp"]
opens = ["3389:tcp"]
host = "2001:db8:2::10"
"""


WORKER = Worker(loads(CONFIG), FakeGrants(), lambda _msg: None)
CLOCK = itertools.count()


def verdict_once(data: bytes) -> None:
    """One packet as the worker's drain takes it: a batch, then a verdict for each."""
    verdicts = WORKER.decide_batch([data, data], next(CLOCK) * 0.001)
    assert len(verdicts) == 2 and set(verdicts) <= {0, 1}, verdicts


def test_corpus_is_there() -> None:
    assert len(SEEDS) >= 20


def test_every_seed_gets_exactly_one_verdict() -> None:
    before = WORKER.counts[Reason.ERROR]
    for seed in SEEDS:
        verdict_once(seed)
    assert WORKER.counts[Reason.ERROR] == before, "a seed made the worker fail"


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "cut", "splice", "insert"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            data = data[: draw(st.integers(0, len(data)))]
        elif op == "splice":
            other = draw(st.sampled_from(SEEDS))
            data = data[: draw(st.integers(0, len(data)))] + other[draw(st.integers(0, len(other))):]
        else:
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutated(), st.binary(max_size=128)))
def test_any_bytes_get_exactly_one_verdict_and_no_exception(data: bytes) -> None:
    before = WORKER.counts[Reason.ERROR]
    verdict_once(data)
    assert WORKER.counts[Reason.ERROR] == before, f"the worker failed on {data.hex()}"
