"""gatekeeper.queue._nfq, the worker's batched reader, against a real kernel queue.

A namespace of its own: loopback datagrams to port 5000 go to NFQUEUE 7, which the
reader serves. What the receiving socket gets shows which verdicts the kernel applied.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from gatekeeper.model import MAX_BATCH
from gatekeeper.queue._nfq import MAX_SIZE, Batch
from tests.fixtures.needs import need_root

_SCRIPT = r"""
import json, select, socket, subprocess, sys
from netfilterqueue import NetfilterQueue
from gatekeeper.queue._nfq import Batch

subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["iptables", "-A", "INPUT", "-i", "lo", "-p", "udp", "--dport", "5000",
                "-j", "NFQUEUE", "--queue-num", "7"], check=True)
nfq = NetfilterQueue()
nfq.bind(7, lambda pkt: pkt.drop())
batch = Batch(nfq.get_fd(), 7, int(sys.argv[1]))
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("127.0.0.1", 5000))
rx.settimeout(0.3)
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
out = {}

def send(numbers):
    for i in numbers:
        tx.sendto(str(i).encode(), ("127.0.0.1", 5000))

def read(expected):
    got = []
    for _ in range(200):
        if len(got) >= expected:
            break
        select.select([nfq.get_fd()], [], [], 0.05)
        payloads = batch.read()
        if payloads:
            return payloads
    return []

def received():
    got = []
    while True:
        try:
            got.append(int(rx.recv(100)))
        except socket.timeout:
            return got

def number(payload):
    return int(payload[28:])  # IPv4 without options, then UDP

# 1. 300 datagrams queued before the first read: every third accepted, in batches
send(range(300))
seen, sizes = [], []
while len(seen) < 300:
    payloads = read(1)
    if not payloads:
        break
    sizes.append(len(payloads))
    seen += [number(p) for p in payloads]
    batch.verdict(bytes(1 if number(p) % 3 == 0 else 0 for p in payloads))
out["seen"] = seen
out["sizes"] = sizes
out["accepted"] = received()

# 2. a read left without verdicts: the next read drops those packets first
send(range(1000, 1005))
first = read(1)
out["pending"] = batch.pending
send([2000])
second = []
while 2000 not in second:
    payloads = read(1)  # the first read drops what is still pending
    if not payloads:
        break
    second += [number(p) for p in payloads]
    batch.verdict(b"\x01" * len(payloads))
out["first"] = [number(p) for p in first]
out["second"] = second
out["after_unverdicted"] = received()

# 3. fewer verdicts than packets: the rest are dropped
send(range(3000, 3010))
got, firsts = [], []
while len(got) < 10:
    payloads = read(1)
    if not payloads:
        break
    got += [number(p) for p in payloads]
    firsts.append(number(payloads[0]))
    batch.verdict(b"\x01")  # only the first of each read
out["short"] = received()
out["short_reads"] = got
out["short_firsts"] = firsts

with open("/proc/net/netfilter/nfnetlink_queue") as f:
    out["waiting"] = sum(int(line.split()[2]) for line in f)
out["stats"] = batch.stats()
nfq.unbind()
print(json.dumps(out))
"""


def test_bad_arguments_are_refused() -> None:
    assert MAX_SIZE == MAX_BATCH, "[gatekeeper] batch accepts what the reader takes"
    for args in ((-1, 0), (3, 70000), (3, 0, 0), (3, 0, MAX_SIZE + 1)):
        with pytest.raises(ValueError):
            Batch(*args)


@pytest.mark.parametrize("size", [1, 64])
def test_batched_reads_and_verdicts_against_the_kernel(size: int) -> None:
    need_root()
    ns = f"gk-nfq-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        result = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _SCRIPT, str(size)],
                                capture_output=True, text=True, timeout=120, check=False)
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["seen"] == list(range(300)), "every packet read once, in queue order"
    assert out["accepted"] == list(range(0, 300, 3)), "exactly the accepted ones got through"
    assert max(out["sizes"]) <= size
    if size > 1:
        assert max(out["sizes"]) == size and len(out["sizes"]) <= 300 // size + 2, out["sizes"]
        assert out["stats"]["reads"] < 300 // 2, "one recvmmsg took many packets"
    assert out["first"] and out["pending"] == len(out["first"])
    assert out["first"] + out["second"] == [*range(1000, 1005), 2000], "each read once, in order"
    assert out["after_unverdicted"] == out["second"], \
        "the packets read without a verdict were dropped, the later ones accepted"
    assert out["short_reads"] == list(range(3000, 3010))
    assert out["short"] == out["short_firsts"], "only the packets given an accept got through"
    if size > 1:
        assert len(out["short"]) < 10
    assert out["waiting"] == 0, "no packet is left in the queue without a verdict"
    assert out["stats"]["errors"] == 0, "the kernel refused no verdict"
