"""The running-ruleset audit without a kernel: what counts as tampering, what the watch
does about it (report, repair, log once), and its two settings."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from gatekeeper.config import ConfigError
from gatekeeper.config.load import loads
from gatekeeper.errors import GatekeeperError
from gatekeeper.model import Config
from gatekeeper.netfilter.audit import tampering
from gatekeeper.netfilter.render import Ruleset, render
from gatekeeper.netfilter.watch import RulesetWatch
from tests.fixtures.configs import EXAMPLE as EXAMPLE_PATH

EXAMPLE = EXAMPLE_PATH.read_text()


def cfg(extra: str = "") -> Config:
    return loads(EXAMPLE.replace("queue = 0", f"queue = 0\nworkers = 2\n{extra}"))


def as_saved(rendered: str, before: dict[str, list[str]] | None = None,
             chains: dict[str, list[str]] | None = None) -> str:
    """What iptables-save prints once ``rendered`` is installed: jumps as -A, the admin's
    rules (``before``: by built-in chain, placed ahead of our jumps) and other chains."""
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    lines += [f":{c} - [0:0]" for c in chains or {}]
    body = []
    for line in rendered.splitlines():
        if line.startswith(":"):
            lines.append(line)
        elif line.startswith("-I "):
            _, chain, _, spec = line.split(" ", 3)
            body += [f"-A {chain} {r}" for r in (before or {}).pop(chain, [])]
            body.append(f"-A {chain} {spec}")
        elif line.startswith("-A "):
            body.append(line.replace("--icmpv6-type router-solicitation", "--icmpv6-type 133"))
    body += [f"-A {c} {r}" for c, rules in (chains or {}).items() for r in rules]
    return "\n".join(lines + body + ["COMMIT"]) + "\n"


def test_the_installed_ruleset_is_intact() -> None:
    for family in (4, 6):
        rendered = getattr(render(cfg()), f"ipv{family}")
        assert tampering(cfg(), family, as_saved(rendered), rendered) == []


@pytest.mark.parametrize(("rule", "through"), [
    ("-p tcp -m tcp --dport 22 -j ACCEPT", None),
    ("-s 203.0.113.20/32 -j ACCEPT", None),
    ("-j ufw-before-input", "-A ufw-before-input -i lo -j ACCEPT"),
    ("-p tcp -j NFQUEUE --queue-num 7", None),  # another program's queue verdicts it
    ("-g somewhere", None),  # a goto: its RETURN ends INPUT, whose policy accepts
    ("-j RETURN", None),  # INPUT's policy is ACCEPT
    ("-m conntrack ! --ctstate RELATED,ESTABLISHED -j ACCEPT", None),
    ("-m state --state NEW,ESTABLISHED -j ACCEPT", None),
    ("-m comment --comment \"-j DROP\" -j TPROXY --on-port 1", None),  # an unknown target
])
def test_a_rule_ahead_that_may_accept_is_found(rule: str, through: str | None) -> None:
    rendered = render(cfg()).ipv4
    chains = {"ufw-before-input": ["-i lo -j ACCEPT"], "somewhere": ["-j DROP"]}
    saved = as_saved(rendered, {"INPUT": [rule]}, chains)
    found = tampering(cfg(), 4, saved, rendered)
    assert len(found) == 1 and found[0].repairable, found
    assert f"'-A INPUT {rule}' ahead of gatekeeper's jump in INPUT may accept" in found[0].text
    if through:
        assert f"(through '{through}')" in found[0].text


@pytest.mark.parametrize("rule", [
    "-p tcp -m multiport --dports 22 -j f2b-sshd",  # REJECTs and a RETURN: cannot accept
    "-j DOCKER-USER",  # empty
    "-s 192.0.2.0/24 -j DROP",
    "-j LOG --log-prefix \"ACCEPT \"",
    "-p tcp",  # counts only
    "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",  # our chain returns these too
    "-m state --state ESTABLISHED -j ACCEPT",
])
def test_a_rule_ahead_that_cannot_accept_is_left_alone(rule: str) -> None:
    rendered = render(cfg()).ipv4
    chains = {"f2b-sshd": ["-s 192.0.2.7/32 -j REJECT --reject-with icmp-port-unreachable",
                           "-j RETURN"], "DOCKER-USER": []}
    assert tampering(cfg(), 4, as_saved(rendered, {"INPUT": [rule]}, chains), rendered) == []


def test_a_return_ahead_is_harmless_under_a_drop_policy() -> None:
    rendered = render(cfg()).ipv4
    saved = as_saved(rendered, {"INPUT": ["-j RETURN"]}).replace(":INPUT ACCEPT", ":INPUT DROP")
    assert tampering(cfg(), 4, saved, rendered) == []


def test_docker_forward_ahead_of_our_forward_jump_is_found() -> None:
    rendered = render(cfg()).ipv4
    chains = {"DOCKER-USER": [], "DOCKER-FORWARD": [
        "-o eth1 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", "-o eth1 -j DOCKER"],
              "DOCKER": ["-d 198.51.100.10/32 ! -i eth1 -o eth1 -p tcp -m tcp --dport 3389 -j ACCEPT",
                         "! -i eth1 -o eth1 -j DROP"]}
    saved = as_saved(rendered, {"FORWARD": ["-j DOCKER-USER", "-j DOCKER-FORWARD"]}, chains)
    found = tampering(cfg(), 4, saved, rendered)
    assert [f.text for f in found] == [
        "IPv4: '-A FORWARD -j DOCKER-FORWARD' ahead of gatekeeper's jump in FORWARD may accept "
        "guarded traffic (through '-A DOCKER -d 198.51.100.10/32 ! -i eth1 -o eth1 -p tcp -m tcp "
        "--dport 3389 -j ACCEPT')"]


def test_missing_jumps_and_changed_or_missing_chains_are_found() -> None:
    rendered = render(cfg()).ipv4
    saved = as_saved(rendered)
    jump = next(ln for ln in saved.splitlines() if ln.startswith("-A INPUT"))
    found = tampering(cfg(), 4, saved.replace(jump + "\n", ""), rendered)
    assert [f.text for f in found] == [f"IPv4: our jump '{jump}' is missing from INPUT"]
    flushed = "\n".join(ln for ln in saved.splitlines() if not ln.startswith("-A GATEKEEPER-IN"))
    found = tampering(cfg(), 4, flushed, rendered)
    assert found and "chain GATEKEEPER-IN was changed" in found[0].text
    added = saved.replace("-A GATEKEEPER-IN -m conntrack", "-A GATEKEEPER-IN -j ACCEPT\n"
                          "-A GATEKEEPER-IN -m conntrack", 1)
    found = tampering(cfg(), 4, added, rendered)
    assert found and "'-A GATEKEEPER-IN -j ACCEPT' where gatekeeper has" in found[0].text
    gone = "\n".join(ln for ln in saved.splitlines() if "GATEKEEPER-FWD" not in ln)
    assert "IPv4: chain GATEKEEPER-FWD is missing" in [f.text for f in tampering(cfg(), 4, gone, rendered)]


def test_a_bypass_flag_on_our_queue_is_reported_not_repaired() -> None:
    rendered = render(cfg()).ipv4
    saved = as_saved(rendered, chains={"custom": ["-j NFQUEUE --queue-num 1 --queue-bypass"]})
    found = tampering(cfg(), 4, saved, rendered)
    assert len(found) == 1 and not found[0].repairable and "--queue-bypass" in found[0].text


# -- the watch -------------------------------------------------------------------------------


class FakeInstaller:
    """Holds one saved text a family; replace() puts the rendered ruleset back."""

    def __init__(self, config: Config) -> None:
        self.ruleset = render(config)
        self.saved_text = {4: as_saved(self.ruleset.ipv4), 6: as_saved(self.ruleset.ipv6)}
        self.replaced = 0
        self.fail: str | None = None

    def saved(self, family: int, table: bool = True) -> str:
        return self.saved_text[family]

    def replace(self, ruleset: Ruleset) -> None:
        if self.fail:
            raise GatekeeperError(self.fail)
        self.replaced += 1
        self.saved_text[4] = as_saved(ruleset.ipv4)
        self.saved_text[6] = as_saved(ruleset.ipv6)


def tamper(fake: FakeInstaller, rule: str = "-p tcp -m tcp --dport 22 -j ACCEPT") -> None:
    fake.saved_text[4] = as_saved(fake.ruleset.ipv4, {"INPUT": [rule]})


def watch(config: Config, fake: FakeInstaller, clock: list[float]) -> RulesetWatch:
    return RulesetWatch(fake, lambda: config, clock=lambda: clock[0])  # type: ignore[arg-type]


def test_repair_puts_the_ruleset_back_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    config, clock = cfg(), [100.0]
    fake = FakeInstaller(config)
    w = watch(config, fake, clock)
    w.poll()
    assert w.intact() and fake.replaced == 0
    tamper(fake)
    clock[0] += 0.5
    w.poll()  # not due yet (audit_interval 1 s)
    assert fake.replaced == 0
    clock[0] += 0.6
    with caplog.at_level(logging.INFO):
        w.poll()
    assert fake.replaced == 1 and w.intact() and w.figures() == {4: (True, 1), 6: (True, 0)}
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("ruleset: IPv4: '-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT'")
    assert messages[1].startswith("ruleset repaired (IPv4)")
    assert w.status()["repairs"] == {"4": 1, "6": 0}


def test_report_only_logs_once_and_when_it_clears(caplog: pytest.LogCaptureFixture) -> None:
    config, clock = cfg("ruleset_repair = false"), [100.0]
    fake = FakeInstaller(config)
    w = watch(config, fake, clock)
    tamper(fake)
    with caplog.at_level(logging.INFO):
        for _ in range(5):
            w.poll()
            clock[0] += 1.0
        assert not w.intact(4) and w.intact(6) and fake.replaced == 0
        assert w.figures()[4] == (False, 0)
        fake.saved_text[4] = as_saved(fake.ruleset.ipv4)
        w.poll()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages  # once, not every poll
    assert messages[1].startswith("ruleset intact again")
    assert w.intact()


def test_a_rule_that_keeps_coming_back_is_logged_once_a_minute(
        caplog: pytest.LogCaptureFixture) -> None:
    """A program that fights over the first place is repaired every time, and the log
    says so once a minute with a count, not once a second."""
    config, clock = cfg(), [100.0]
    fake = FakeInstaller(config)
    w = watch(config, fake, clock)
    with caplog.at_level(logging.INFO):
        for _ in range(70):
            tamper(fake)
            w.poll()
            clock[0] += 1.0
    assert fake.replaced == 70 and w.repairs[4] == 70
    found = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ruleset: IPv4")]
    assert len(found) == 2 and found[1].endswith("(and 59 more time(s) in the last 60 s)"), found


def test_one_failed_read_is_tried_again() -> None:
    """A stop signal to the process group kills the iptables-save running then: no finding."""
    config, clock = cfg(), [100.0]
    fake = FakeInstaller(config)
    real, calls = fake.saved, []

    def flaky(family: int, table: bool = True) -> str:
        calls.append(family)
        if len(calls) == 1:
            raise GatekeeperError("iptables-save: no message")
        return real(family)

    fake.saved = flaky  # type: ignore[method-assign]
    w = watch(config, fake, clock)
    w.audit()
    assert w.intact() and calls == [4, 4, 6]


def test_a_failed_repair_or_read_is_not_intact(caplog: pytest.LogCaptureFixture) -> None:
    config, clock = cfg(), [100.0]
    fake = FakeInstaller(config)
    w = watch(config, fake, clock)
    tamper(fake)
    fake.fail = "iptables-restore rejected the ruleset"
    w.audit()
    assert not w.intact() and w.repairs == {4: 0, 6: 0}
    assert any("ruleset repair failed" in r.getMessage() for r in caplog.records)

    def broken(family: int, table: bool = True) -> str:
        raise GatekeeperError("ip6tables-save: not found")

    fake.saved = broken  # type: ignore[method-assign]
    w.audit()
    assert not w.intact(6) and "cannot read the ruleset" in w.status()["problems"][-1]


def test_the_watch_follows_a_reload() -> None:
    clock = [100.0]
    configs = [cfg()]
    fake = FakeInstaller(configs[0])
    w = RulesetWatch(fake, lambda: configs[0], clock=lambda: clock[0])  # type: ignore[arg-type]
    w.audit()
    assert w.intact()
    configs[0] = replace(configs[0], doors=configs[0].doors[:1])  # rdp gone: no FORWARD chain
    fake.saved_text = {4: as_saved(render(configs[0]).ipv4), 6: as_saved(render(configs[0]).ipv6)}
    w.audit()
    assert w.intact() and fake.replaced == 0


@pytest.mark.parametrize(("line", "problem"), [
    ("audit_interval = 0", "must be more than 0"),
    ("audit_interval = 0.05", "at least 0.1 s"),
    ("audit_interval = 61", "at most 60"),
    ("audit_interval = \"1s\"", "must be a number of seconds"),
    ("ruleset_repair = \"yes\"", "must be true or false"),
])
def test_bad_settings_name_the_key(line: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        cfg(line)
    assert "gatekeeper." + line.split(" ")[0] in str(err.value) and problem in str(err.value)


def test_defaults_audit_every_second_and_repair() -> None:
    settings = cfg().settings
    assert settings.audit_interval == 1.0 and settings.ruleset_repair is True
    assert cfg("audit_interval = 0.5\nruleset_repair = false").settings.ruleset_repair is False
