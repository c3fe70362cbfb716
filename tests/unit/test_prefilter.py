"""The kernel prefilter's rules (gatekeeper.netfilter.prefilter) as rendered, audited and
counted, without a kernel; ``prefilter = false`` renders exactly the ruleset of before."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gatekeeper.config import ConfigError
from gatekeeper.config.load import loads
from gatekeeper.model import Config
from gatekeeper.netfilter import prefilter
from gatekeeper.netfilter.audit import audit, audit_text, tampering
from gatekeeper.netfilter.prefilter import CHAIN_PRE, SET_PROGRESS, SET_SCAN, DropCounter
from gatekeeper.netfilter.render import render, render_removal, render_swap
from tests.fixtures.configs import GOLDEN, config

_SEED = re.compile(r"--hmark-rnd 0x[0-9a-f]{8}")
ON = {"[gatekeeper]\n": "[gatekeeper]\nprefilter = true\n"}


def lab(workers: int = 2, extra: str = "", **replace: str) -> Config:
    text = config(**replace).replace("workers = 2", f"workers = {workers}") + extra
    return loads(text, "lab.toml")


def chain(cfg: Config, family: int = 4) -> list[str]:
    text = getattr(render(cfg), f"ipv{family}")
    return [ln for ln in text.splitlines() if ln.startswith(f"-A {CHAIN_PRE} ")]


def test_off_renders_exactly_the_ruleset_of_before() -> None:
    """The golden file is what the renderer printed before the prefilter existed (main at
    b2cfd70, the same configs)."""
    want = (GOLDEN / "rules-prefilter-off.txt").read_text()
    got = "".join(f"### workers = {w}\n" + render(lab(w)).text() for w in (1, 2))
    assert got == want
    off = {"[gatekeeper]\n": "[gatekeeper]\nprefilter = false\n"}
    explicit = "".join(f"### workers = {w}\n" + render(lab(w, **off)).text() for w in (1, 2))
    # the HMARK seed comes from the config's text, which the setting's line changes
    assert _SEED.sub("", explicit) == _SEED.sub("", want)


def test_the_setting_is_a_boolean() -> None:
    assert lab().settings.prefilter is False
    assert lab(**ON).settings.prefilter is True
    with pytest.raises(ConfigError, match=r"gatekeeper\.prefilter.*true or false"):
        lab(**{"[gatekeeper]\n": '[gatekeeper]\nprefilter = "yes"\n'})


@pytest.mark.parametrize("family", [4, 6])
def test_the_jumps_come_right_before_the_queue_rules(family: int) -> None:
    lines = getattr(render(lab(**ON)), f"ipv{family}").splitlines()
    jump = lines.index(f"-A GATEKEEPER-IN -j {CHAIN_PRE}")
    assert "--match-set gatekeeper-in" in lines[jump - 1]
    assert "-j HMARK" in lines[jump + 1]
    if family == 4:
        fwd = lines.index(f"-A GATEKEEPER-FWD -d 198.51.100.10/32 -j {CHAIN_PRE}")
        assert "-j HMARK" in lines[fwd + 1]
    assert f":{CHAIN_PRE} - [0:0]" in lines


def test_first_steps_enter_the_progress_set_and_the_rest_of_a_sequence_does_not() -> None:
    rules = chain(lab(**ON))
    add = f"-j SET --add-set {SET_PROGRESS[4]} src --exist --timeout 7"
    assert f"-A {CHAIN_PRE} -p tcp -m multiport --dports 4001,9000 {add}" in rules  # rdp, ssh close
    assert f"-A {CHAIN_PRE} -p udp -m multiport --dports 7000 {add}" in rules  # ssh
    assert f"-A {CHAIN_PRE} -p icmp -m icmp --icmp-type 8 {add}" in rules  # ping
    assert not any("8000" in r or "4003" in r for r in rules)  # later steps come via the set
    assert f"-A {CHAIN_PRE} -m set --match-set {SET_PROGRESS[4]} src -j RETURN" in rules
    assert rules[0] == f"-A {CHAIN_PRE} -m set --match-set {SET_SCAN[4]} src -j DROP"
    assert rules[-1] == f"-A {CHAIN_PRE} -j DROP"
    assert "--icmpv6-type 128" in "\n".join(chain(lab(**ON), 6))


def test_junk_is_counted_before_the_hashlimit_can_drop_it() -> None:
    """xt_hashlimit drops a packet itself when its table of sources is full, before any
    later rule counts it: the junk counter must come before it (a third of a random-source
    flood went uncounted when the chain's final DROP was the counter)."""
    for family in (4, 6):
        rules = chain(lab(**ON), family)
        counter = rules.index(prefilter.JUNK_COUNTER)
        limit = next(i for i, r in enumerate(rules) if "-m hashlimit" in r)
        assert rules[counter - 1].endswith("src -j RETURN") and counter < limit, rules
        assert " -j " not in prefilter.JUNK_COUNTER and " -g " not in prefilter.JUNK_COUNTER


def test_the_progress_set_outlives_the_engines_state() -> None:
    cfg = lab(**ON)  # sequence_timeout 3 and 5 (default): the engine keeps 6 s
    assert prefilter.progress_timeout(cfg) == 7
    hour = lab(**ON, **{"sequence_timeout = 3": "sequence_timeout = 3600"})
    assert prefilter.progress_timeout(hour) == 3602


def test_the_kernel_scan_limit_follows_the_engines() -> None:
    scan = [r for r in chain(lab(**ON)) if "hashlimit" in r]
    assert scan == [f"-A {CHAIN_PRE} -m hashlimit --hashlimit-above 72/min --hashlimit-burst 6 "
                    "--hashlimit-mode srcip --hashlimit-name gatekeeper4 --hashlimit-htable-max 65536 "
                    f"--hashlimit-htable-expire 5000 -j SET --add-set {SET_SCAN[4]} src --exist --timeout 60"]
    tuned = lab(**ON, **{"public = [": "scan_limit = 20\nscan_lockout = 120\npublic = ["})
    assert "--hashlimit-burst 20 " in "\n".join(chain(tuned))
    assert "--timeout 120" in "\n".join(chain(tuned))
    off = chain(lab(**ON, **{"public = [": "scan_lockout = 0\npublic = ["}))
    assert not any("hashlimit" in r or SET_SCAN[4] in r for r in off)  # no lockout, no kernel one


def test_cluster_mode_queues_every_knock_and_the_protected_ports() -> None:
    cluster = '\n[cluster]\nredis = "redis://198.51.100.100:6379/0"\n'
    rules = "\n".join(chain(lab(extra=cluster, **ON)))
    assert "--dports 4001,4003,7000,8000,9000 -j SET" in rules  # every tcp step, any order
    assert "--dports 4002,7000,8000,9000 -j SET" in rules.replace("--dports 7000,8000", "--dports 7000,8000")
    assert "-p tcp -m multiport --dports 22,3389,8080 -j RETURN" in rules


def test_special_doors_are_entries(tmp_path: Path) -> None:
    key = tmp_path / "seq.key"
    key.write_text("KEY_BASE64: " + "A" * 43 + "=\n")
    key.chmod(0o600)
    once = tmp_path / "once.txt"
    once.write_text("6001,6002:udp\n")
    extra = (f'\n[[door]]\nname = "sealed"\nencrypted_sequence = {{ key_file = "{key}", '
             f'ports = "745-1000" }}\nopens = ["8443:tcp"]\n'
             f'\n[[door]]\nname = "once"\none_time_sequences = "{once}"\nopens = ["3390:tcp"]\n')
    rules = "\n".join(chain(lab(extra=extra, **ON)))
    assert "-p tcp -m tcp --dport 745:1000 -j SET" in rules
    assert "-p udp -m udp --dport 745:1000 -j RETURN" in rules
    assert "-p tcp -m multiport --dports 4001,6001,9000 -j SET" in rules
    assert "-p udp -m multiport --dports 6002,7000 -j SET" in rules


@pytest.mark.parametrize("workers", [1, 2])
def test_the_audit_passes_the_rules_and_finds_them_changed_or_gone(workers: int) -> None:
    cfg = lab(workers, **ON)
    ruleset = render(cfg)
    assert audit(cfg, ruleset) == []
    for family in (4, 6):
        rendered = getattr(ruleset, f"ipv{family}")
        saved = rendered.replace("-I INPUT 1 ", "-A INPUT ").replace("-I FORWARD 1 ", "-A FORWARD ")
        saved = saved.replace("--icmpv6-type router-solicitation", "--icmpv6-type 133")
        saved = saved.replace("--icmpv6-type router-advertisement", "--icmpv6-type 134")
        saved = saved.replace("--icmpv6-type neighbour-solicitation", "--icmpv6-type 135")
        saved = saved.replace("--icmpv6-type neighbour-advertisement", "--icmpv6-type 136")
        saved = saved.replace("--icmpv6-type redirect", "--icmpv6-type 137")
        assert tampering(cfg, family, saved, rendered) == []
        flushed = "\n".join(ln for ln in saved.splitlines() if not ln.startswith(f"-A {CHAIN_PRE} "))
        found = tampering(cfg, family, flushed, rendered)
        assert [f.text for f in found] == [f"IPv{family}: chain {CHAIN_PRE} was changed: "
                                           f"0 rules where gatekeeper installed {len(chain(cfg, family))}"]
        assert all(f.repairable for f in found)
        gone = "\n".join(ln for ln in flushed.splitlines() if CHAIN_PRE not in ln)
        missing = [f.text for f in tampering(cfg, family, gone, rendered)]
        assert f"IPv{family}: chain {CHAIN_PRE} is missing" in missing


def test_an_accept_in_the_prefilter_chain_is_refused() -> None:
    cfg = lab(**ON)
    text = render(cfg).ipv4.replace(f"-A {CHAIN_PRE} -j DROP", f"-A {CHAIN_PRE} -j ACCEPT")
    assert audit_text(cfg, 4, text) == [
        f"IPv4: '-A {CHAIN_PRE} -j ACCEPT' accepts in {CHAIN_PRE}, before the queue"]
    goto = render(cfg).ipv4.replace(f"-A {CHAIN_PRE} -j DROP", f"-A {CHAIN_PRE} -g OTHER")
    assert audit_text(cfg, 4, goto) == [
        f"IPv4: '-A {CHAIN_PRE} -g OTHER' accepts in {CHAIN_PRE}, before the queue"]


def test_removal_and_swaps_take_the_chain_with_them() -> None:
    on, off = render(lab(**ON)).ipv4, render(lab()).ipv4
    saved = on.replace("-I INPUT 1 ", "-A INPUT ").replace("-I FORWARD 1 ", "-A FORWARD ")
    removal = render_removal(saved)
    assert removal is not None
    assert f"-F {CHAIN_PRE}" in removal and f"-X {CHAIN_PRE}" in removal
    swap = render_swap(saved, off).splitlines()
    assert swap.index(f"-X {CHAIN_PRE}") > swap.index("-F GATEKEEPER-IN")  # no jump left to it
    assert not any(ln.startswith(f"-A {CHAIN_PRE}") for ln in swap)


def test_sets_only_with_the_prefilter() -> None:
    assert "gatekeeper-prog" not in render(lab()).ipset
    ipset = render(lab(**ON)).ipset.splitlines()
    assert (f"create {SET_PROGRESS[4]} hash:ip family inet hashsize 131072 maxelem 262144 "
            "timeout 0 forceadd") in ipset
    assert f"create {SET_SCAN[6]} hash:ip family inet6 hashsize 32768 maxelem 65536 timeout 0" in ipset


def test_counters_are_read_from_the_rule_counters_and_kept_over_resets() -> None:
    saved = (f"[12:600] -A {CHAIN_PRE} -m set --match-set {SET_SCAN[4]} src -j DROP\n"
             f"[3:100] -A {CHAIN_PRE} -m set --match-set {SET_PROGRESS[4]} src -j RETURN\n"
             f"[345:9000] -A {CHAIN_PRE} -m comment --comment gatekeeper-junk\n"
             f"[200:5000] -A {CHAIN_PRE} -j DROP\n[9:9] -A GATEKEEPER-IN -j DROP\n")
    assert prefilter.parse_counters(4, saved) == {"junk": 345, "scanner": 12}
    assert prefilter.parse_counters(6, saved) == {"junk": 345, "scanner": 0}
    counter = DropCounter()
    counter.update(4, {"junk": 345, "scanner": 12})
    counter.update(4, {"junk": 5, "scanner": 0})  # a reload swapped the chain: counters at 0
    totals = counter.totals()
    assert totals[(4, "junk")] == 350 and totals[(4, "scanner")] == 12 and totals[(6, "junk")] == 0


def test_a_failed_counter_read_is_skipped_not_taken_for_a_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    """An iptables-save that fails (or hangs) must not read as counters back at 0: the
    drop counter would add what it had seen once more at the next good read."""
    import subprocess

    from gatekeeper.netfilter import install

    good = f"[345:9000] {prefilter.JUNK_COUNTER}\n"
    answers = iter([(0, good), (0, good), (1, ""), (0, "")])

    def run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        code, out = next(answers)
        return subprocess.CompletedProcess(argv, code, out, "iptables-save: cannot lock")

    monkeypatch.setattr(install, "_run", run)
    counts = install.Installer().prefilter_counters()
    assert counts[4]["junk"] == 345 and counts[6]["junk"] == 345
    assert install.Installer().prefilter_counters() == {6: {"junk": 0, "scanner": 0}}
