"""Fixtures for tests against the real kernel: a namespace lab and the real daemon.

Every test under tests/lab is marked ``lab``. ``GATEKEEPER_TEST_PREFILTER=1`` (or ``0``) runs
every daemon the fixture starts with ``prefilter = true`` (``false``) unless its config sets it,
so the behaviour tests can be run both ways. Lab tests need root. Locally without root they
are skipped with a reason; under CI (``CI`` set) a missing privilege is a failure, never a skip.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.lab.netns import Lab
from tests.fixtures.needs import need_root, need_tool
from tests.lab.support import ADMIN_RULES_V4, ADMIN_RULES_V6, Daemon

LAB = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if LAB in item.path.parents:
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    need_root()
    with Lab(f"gkt{os.getpid() % 10000}") as built:
        for rule in ADMIN_RULES_V4:
            built.run("gw", ["iptables", *rule])
        for rule in ADMIN_RULES_V6:
            built.run("gw", ["ip6tables", *rule])
        built.serve_tcp("gw", 22)
        built.serve_tcp("gw", 8080)
        built.serve_tcp("server", 3389)
        yield built


@pytest.fixture
def start_daemon(lab: Lab, tmp_path: Path) -> Iterator[Any]:
    started: list[Daemon] = []

    def start(config_text: str, wait: bool = True, env: dict[str, str] | None = None,
              argv: list[str] | None = None) -> Daemon:
        path = tmp_path / f"gatekeeper{len(started)}.toml"
        if "control =" not in config_text:  # never the system's /run/gatekeeper
            control = tmp_path / f"control{len(started)}.sock"
            config_text = config_text.replace("[gatekeeper]\n", f'[gatekeeper]\ncontrol = "{control}"\n', 1)
        if "state_dir =" not in config_text:  # nor its /var/lib/gatekeeper
            config_text = config_text.replace(
                "[gatekeeper]\n", f'[gatekeeper]\nstate_dir = "{tmp_path / "state"}"\n', 1)
        forced = os.environ.get("GATEKEEPER_TEST_PREFILTER", "")
        if forced in ("0", "1") and "prefilter =" not in config_text:
            config_text = config_text.replace(
                "[gatekeeper]\n", f"[gatekeeper]\nprefilter = {'true' if forced == '1' else 'false'}\n", 1)
        path.write_text(config_text)
        daemon = Daemon(lab, path, env, argv)
        started.append(daemon)
        if wait:
            daemon.wait_for("gatekeeper running")
        return daemon

    yield start
    for daemon in started:
        daemon.stop()
    # A test that failed half-way must not leave rules for the next one.
    lab.run("gw", [sys.executable, "-c",
                   "from gatekeeper.netfilter.install import Installer; Installer().remove()"],
            check=False)


@pytest.fixture
def fwknop_client() -> str:
    """The stock fwknop client (Debian's fwknop-client)."""
    return need_tool("fwknop", "Debian's fwknop-client")
