"""Run a door's start/stop commands off the hot path: argv lists, no shell, a timeout."""

from __future__ import annotations

import logging
import subprocess
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)


def substitute(argv: tuple[str, ...], address: str) -> list[str]:
    """knockd's ``%IP%`` placeholder, replaced in every argument."""
    return [arg.replace("%IP%", address) for arg in argv]


class CommandRunner:
    def __init__(self, workers: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gk-command")

    def submit(self, what: str, argv: tuple[str, ...], address: str, timeout: float) -> None:
        if argv:
            self._pool.submit(self._run, what, substitute(argv, address), timeout)

    @staticmethod
    def _run(what: str, argv: list[str], timeout: float) -> None:
        try:
            result = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            log.error("%s %s: killed after %g s", what, argv[0], timeout)
        except OSError as exc:
            log.error("%s %s: cannot run: %s", what, argv[0], exc)
        else:
            if result.returncode != 0:
                detail = (result.stderr or result.stdout).strip().splitlines()
                log.error("%s %s: exit status %d%s", what, argv[0], result.returncode,
                          f": {detail[-1]}" if detail else "")

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=False)
