"""Hooks for the whole suite: the header naming the hot path, and no run of a stale mypyc build.

Lab fixtures (the namespace lab, the real daemon) are in tests/lab/conftest.py; helpers shared by
unit and lab tests are modules of tests/fixtures/.
"""

from __future__ import annotations

import pytest

from gatekeeper import native

# the fixtures of the special doors (files, cfg), for every test file that uses them
pytest_plugins = ["tests.fixtures.doors", "tests.fixtures.gnupg"]


def pytest_report_header() -> str:
    return f"gatekeeper hot path: {native.describe()}"


def pytest_sessionstart(session: pytest.Session) -> None:
    """The compiled modules win on import: tests of an edited source must not run the old build."""
    old = native.stale()
    if old:
        pytest.exit(f"{', '.join(old)}: the source changed after its mypyc build; rebuild with "
                    "`bash scripts/setup.sh` (or GATEKEEPER_PURE=1 bash scripts/setup.sh)", returncode=4)
