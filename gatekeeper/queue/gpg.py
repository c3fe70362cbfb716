"""The worker's GnuPG adapter: one bounded ``gpg --decrypt`` run for a GnuPG SPA packet.

The pure side (:mod:`gatekeeper.spa.gpg`) checks size and HMAC and keeps each door's time
budget; this runs GnuPG on what passed, in the door's ``spa_gpg.home``, with its status
lines on a pipe of their own (never mixed with messages that could carry text from the
packet), no network (no key retrieval), at most :data:`MAX_PLAINTEXT` bytes of output
(more: killed) and ``spa_gpg.timeout`` seconds (then killed). Any failure is a
:class:`Decrypted` with an ``error``: the packet is refused, never accepted.
"""

from __future__ import annotations

import logging
import os
import selectors
import subprocess
import time

from gatekeeper.model import GPG_PROGRAM, SpaGpg
from gatekeeper.spa.gpg import MAX_PLAINTEXT, Decrypted

log = logging.getLogger(__name__)

GPG = GPG_PROGRAM
MAX_STATUS = 1 << 16  # a run's status lines are a few hundred bytes
_WARN_EVERY = 60.0
_last_warning: dict[str, float] = {}


def argv(settings: SpaGpg, status_fd: int) -> list[str]:
    """The ``gpg`` command line that decrypts a message on stdin for ``settings``."""
    args = [GPG, "--homedir", settings.home, "--batch", "--no-tty",  # not --quiet: it hides NO_SECKEY
            "--status-fd", str(status_fd), "--pinentry-mode", "loopback",
            "--trust-model", "always", "--no-auto-key-retrieve", "--disable-dirmngr",
            "--max-output", str(MAX_PLAINTEXT)]
    if settings.passphrase_file:
        args += ["--passphrase-file", settings.passphrase_file]
    return [*args, "--decrypt"]


def _warn(error: str) -> None:
    """Log a failure to run gpg (not a bad packet) at most once a minute per kind."""
    now = time.monotonic()
    if now - _last_warning.get(error, -_WARN_EVERY) >= _WARN_EVERY:
        _last_warning[error] = now
        log.warning("GnuPG SPA: %s (packets refused at stage decrypt)", error)


def decrypt(settings: SpaGpg, message: bytes) -> tuple[Decrypted, float]:
    """GnuPG's run on ``message`` and the seconds it took (for the door's budget)."""
    start = time.monotonic()
    try:
        run = _run(settings, message, start + settings.timeout)
    except OSError as exc:
        run = Decrypted(None, "", f"cannot run {GPG}: {exc.strerror or exc}")
    if run.error and not run.error.startswith("output"):
        _warn(run.error)
    return run, time.monotonic() - start


def _run(settings: SpaGpg, message: bytes, deadline: float) -> Decrypted:
    status_r, status_w = os.pipe()
    try:
        proc = subprocess.Popen(argv(settings, status_w), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                pass_fds=(status_w,), close_fds=True)
    except BaseException:
        os.close(status_r)
        os.close(status_w)
        raise
    os.close(status_w)
    try:
        return _collect(proc, status_r, message, deadline)
    finally:
        os.close(status_r)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def _collect(proc: subprocess.Popen[bytes], status_r: int, message: bytes,
             deadline: float) -> Decrypted:
    """Feed ``message``, read output and status until both end, the deadline or a cap."""
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(message)  # at most ~1.1 KB: fits the pipe
        proc.stdin.close()
    except BrokenPipeError:
        pass
    out, status = bytearray(), bytearray()
    caps = {proc.stdout.fileno(): (out, MAX_PLAINTEXT), status_r: (status, MAX_STATUS)}
    with selectors.DefaultSelector() as sel:
        for fd in caps:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return Decrypted(None, status.decode("ascii", "replace"), "timeout")
            for key, _ in sel.select(left):
                buf, cap = caps[key.fd]
                chunk = os.read(key.fd, 4096)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf += chunk
                if len(buf) > cap:
                    return Decrypted(None, "", "output over the cap")
    try:
        code = proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return Decrypted(None, status.decode("ascii", "replace"), "timeout")
    return Decrypted(bytes(out), status.decode("ascii", "replace"), code=code)
