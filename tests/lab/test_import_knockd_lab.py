"""The knockd importer against stock knockd in the lab's gateway: knockd takes the configs and
one-time files we write and read, and a converted one-time door works once a line. (The importer
without a kernel: tests/unit/test_import_knockd*.py.)"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from gatekeeper import cli
from gatekeeper.lab.netns import GW4, Lab
from tests.fixtures.knockd import (
    KNOCKD_READS,
    ONE_TIME_LINES,
    ONE_TIME_STEPS,
    one_time_files,
    one_time_lines,
    run_cli,
)
from tests.fixtures.needs import need_tool
from tests.lab.support import is_open, knock


def knockd_accepts(lab: Lab, conf: Path, iface: str = "eth0", timeout: float = 10) -> list[str]:
    """Start stock knockd on ``conf`` in the lab's gateway (debug, verbose, foreground) until it
    listens, then stop it; its output. Fails if knockd exits or does not listen in time."""
    need_tool("knockd", "Debian's knockd, to check a knockd config is one it takes")
    # stdbuf: knockd's debug lines come through stdio, which buffers them in a pipe
    proc = lab.popen("gw", ["stdbuf", "-oL", "knockd", "-D", "-v", "-c", str(conf), "-i", iface],
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out: list[str] = []
    listening = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:  # until knockd exits or is stopped
            out.append(line.rstrip("\n"))
            if line.startswith(f"listening on {iface}"):
                listening.set()
        listening.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        listening.wait(timeout)
        running = proc.poll() is None
    finally:
        lab.stop(proc)
        reader.join(5)
    if not (running and any(line.startswith(f"listening on {iface}") for line in out)):
        raise AssertionError("stock knockd did not start with this config:\n" + "\n".join(out))
    return out



def test_knockd_reads_one_time_lines_as_stock_knockd_does(lab: Lab, tmp_path: Path) -> None:
    """Each KNOCKD_READS line first in a one-time file, a line knockd surely takes after it:
    the sequence stock knockd starts with is the line's, or that one when it skips the line."""
    conf = one_time_files(tmp_path)
    for line, expected in KNOCKD_READS:
        (tmp_path / "once.txt").write_text(f"{line}\n 1,2,3\n")
        said = knockd_accepts(lab, conf)
        assert f"config: opencloseWeb: sequence: {expected or '1:tcp,2:tcp,3:tcp'}" in said, (line, said)



def test_real_knockd_one_time_file_imports_to_a_door_whose_lines_each_work_once(
        lab: Lab, start_daemon: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = one_time_files(tmp_path)
    seq = tmp_path / "once.txt"
    said = knockd_accepts(lab, conf)
    assert "config: opencloseWeb: sequence: 2001:tcp,2002:udp,2003:tcp" in said, said
    assert seq.read_text() == ONE_TIME_LINES
    out = tmp_path / "gatekeeper.toml"
    rc, _, err = run_cli([str(conf), "-o", str(out)], capsys)
    assert rc == 0, err
    assert cli.main(["check", "-c", str(out)]) == 0, capsys.readouterr()
    assert one_time_lines(out.read_text()) == ONE_TIME_STEPS
    lab.serve_tcp("gw", 8443)
    daemon = start_daemon(out.read_text())
    assert not is_open(lab, "client", GW4, 8443)
    first = ["2001", "2002:udp", "2003"]
    knock(lab, "client", GW4, *first)
    assert is_open(lab, "client", GW4, 8443)
    daemon.wait_for(r"one-time sequence used: door=opencloseWeb")
    daemon.wait_for(r"reloaded ")
    knock(lab, "other", GW4, *first)
    assert not is_open(lab, "other", GW4, 8443), "a used line replayed by a sniffer opened the door"
    knock(lab, "other", GW4, "3001", "3002", "3003")  # the space-separated line
    assert is_open(lab, "other", GW4, 8443), "the next line works"
    lines = seq.read_text().splitlines()
    assert lines[2].startswith("#used# ") and lines[3].startswith("#used# "), lines
    assert lines[4] == " 4001:udp, 4002 ,4003:UDP"
