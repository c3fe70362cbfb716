"""What ships for a real gateway: the systemd unit, rendered for this installation."""

from __future__ import annotations

import os
import shutil
import sys
from importlib import resources


def gatekeeper_path() -> str:
    """The absolute path of this installation's ``gatekeeper`` script."""
    here = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "gatekeeper")
    if os.access(here, os.X_OK):
        return here
    return shutil.which("gatekeeper") or "/usr/local/bin/gatekeeper"


def unit_text(executable: str | None = None) -> str:
    template = resources.files("gatekeeper").joinpath("data/gatekeeper.service").read_text()
    return template.replace("@GATEKEEPER@", executable or gatekeeper_path())
