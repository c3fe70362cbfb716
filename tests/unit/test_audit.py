"""The fail-open audit: a ruleset with a way around the queue is refused."""

from __future__ import annotations

from gatekeeper.config.load import loads
from gatekeeper.model import Config
from gatekeeper.netfilter.audit import audit, audit_text
from gatekeeper.netfilter.render import render
from tests.fixtures.configs import EXAMPLE as EXAMPLE_PATH

EXAMPLE = EXAMPLE_PATH.read_text()


def cfg(workers: int = 2) -> Config:
    return loads(EXAMPLE.replace("queue = 0", f"queue = 0\nworkers = {workers}"))


def test_rendered_rulesets_pass() -> None:
    for workers in (1, 2, 4):
        assert audit(cfg(workers), render(cfg(workers))) == []


def test_queue_bypass_on_one_of_our_queues_is_refused() -> None:
    text = render(cfg(1)).ipv4.replace("--queue-num 0", "--queue-num 0 --queue-bypass")
    problems = audit_text(cfg(1), 4, text)
    assert problems and "when no worker listens" in problems[0]


def test_admin_queue_rule_with_bypass_to_our_queue_is_refused() -> None:
    saved = render(cfg(1)).ipv4.replace(
        "COMMIT", "-A INPUT -p tcp -j NFQUEUE --queue-num 0 --fail-open\nCOMMIT")
    assert any("--fail-open" in p for p in audit_text(cfg(1), 4, saved))


def test_bypass_on_someone_elses_queue_is_not_ours_to_refuse() -> None:
    saved = render(cfg(1)).ipv4.replace(
        "COMMIT", "-A INPUT -p tcp -j NFQUEUE --queue-num 7 --queue-bypass\nCOMMIT")
    assert audit_text(cfg(1), 4, saved) == []


def test_a_return_before_the_queue_that_covers_a_knock_port_is_refused() -> None:
    text = render(cfg(1)).ipv4.replace(
        "-A GATEKEEPER-IN -p tcp -m multiport --dports 80,443 -j RETURN",
        "-A GATEKEEPER-IN -p tcp -m multiport --dports 80,443,7000:9000 -j RETURN")
    problems = audit_text(cfg(1), 4, text)
    assert problems and "8000" in problems[0] and "past the queue" in problems[0]


def test_several_workers_need_a_final_drop() -> None:
    text = render(cfg(2)).ipv4.replace("-A GATEKEEPER-IN -j DROP\n", "")
    assert any("does not end in DROP" in p for p in audit_text(cfg(2), 4, text))


def test_rules_ahead_of_our_jump_are_refused() -> None:
    text = render(cfg(1)).ipv4.replace(
        "-I INPUT 1", "-A INPUT -p tcp --dport 22 -j ACCEPT\n-I INPUT 2")
    assert any("before the jump" in p for p in audit_text(cfg(1), 4, text))
