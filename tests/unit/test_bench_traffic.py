"""``gatekeeper bench``'s traffic mix, without a kernel: what it says it is. (The quick bench end to
end: tests/lab/test_bench.py.)"""

from __future__ import annotations

from gatekeeper.lab.bench import traffic
from gatekeeper.queue.decode import decode


def test_traffic_mix_is_what_it_says() -> None:
    mix = traffic.build(2000, round_=1)
    assert len(mix.packets) == 2000 == sum(mix.kinds.values())
    assert 0.2 < mix.kinds["knock"] / 2000 < 0.4 and 0.05 < mix.kinds["malformed"] / 2000 < 0.15
    assert mix.completions == 2
    assert sum(decode(p) is None for p in mix.packets) == mix.kinds["malformed"]
    assert traffic.load(traffic.dump(mix.packets)) == mix.packets
    for pkt in mix.packets:  # never an address outside the lab's documentation ranges
        if pkt[0] >> 4 == 4:
            assert pkt[12:15] == bytes([203, 0, 113]) and pkt[16:20] == bytes([203, 0, 113, 1])
        else:
            assert pkt[8:16] == bytes.fromhex("20010db800010000") and pkt[24:40] == bytes.fromhex(
                "20010db8000100000000000000000001")
