"""knockd's ``one_time_sequences`` as a gatekeeper one-time door, for ``import-knockd``.

The door reads knockd's file where it is: gatekeeper reads knockd's format (a sequence a
line, ports separated by commas or spaces, ``#`` comments, knockd's ``#`` over the first
character of a used line) and, like knockd, takes the first line not used and strikes
it out once it opened the door. What is left to say is said as notices: a relative path
(knockd read it from its working directory), a file the shipped unit cannot write, a
line knockd reads otherwise than gatekeeper (:func:`knockd_reads`), no line left.
"""

from __future__ import annotations

import os
from pathlib import Path

from gatekeeper.importers.knockd_conf import Section, knockd_reads
from gatekeeper.importers.output import Notice
from gatekeeper.model import OneTimeDoor, Settings

STATE_DIR = Settings().state_dir  # the shipped unit's StateDirectory: all it may write


def one_time_path(sec: Section, base_dir: Path | None, conf_name: str) -> tuple[str, list[Notice]]:
    """The absolute path of the section's one_time_sequences file, and what to say about
    it; a relative one is taken from ``base_dir`` (the knockd config's folder)."""
    value = sec.values["ONE_TIME_SEQUENCES"]
    notices: list[Notice] = []
    fixed = sec.values.get("SEQUENCE")
    if fixed is not None:
        notices.append(Notice(fixed.line, sec.name, f"sequence {','.join(map(str, sec.sequence))} is "
                              "not carried over: the door knocks the lines of one_time_sequences"))
    path = value.text
    if not os.path.isabs(path):
        path = os.path.abspath(base_dir / path if base_dir is not None else path)
        where = f"next to {conf_name}" if base_dir is not None else "in the current directory"
        notices.append(Notice(value.line, sec.name, f"one_time_sequences {value.text} is relative: "
                              f"knockd read it from its working directory; the door reads {path}, {where}"))
    if not path.startswith(STATE_DIR.rstrip("/") + "/"):
        notices.append(Notice(value.line, sec.name, f"one_time_sequences {path}: gatekeeper strikes out "
                              "a used line in the file itself ('#used# ' before it), and under the shipped "
                              f"systemd unit it may write only under {STATE_DIR}: move the file there "
                              f"(install -m 0600 -o gatekeeper {path} {STATE_DIR}/) and point "
                              "one_time_sequences at it"))
    return path, notices


def line_notices(sec: Section, loaded: OneTimeDoor) -> list[Notice]:
    """Once gatekeeper has read the file: each line knockd reads otherwise, and a file
    with no line left."""
    at = sec.values["ONE_TIME_SEQUENCES"].line
    path = loaded.path
    notices: list[Notice] = []
    if not loaded.lines:
        notices.append(Notice(at, sec.name, f"{path} has no unused sequence left: the door opens "
                              "nothing until lines are added (knockd refused to start with it)"))
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return notices  # gatekeeper has just read it: it changed since
    ours = {number: steps for number, steps in loaded.lines}
    for number, raw in enumerate(text.splitlines(), start=1):
        steps = ours.get(number)
        if steps is None:
            continue  # blank, a comment or used, for both
        gatekeeper = ",".join(map(str, steps))
        knocks = knockd_reads(raw)
        if knocks is None:
            what = f"knockd skips this line ({raw.strip()!r}); gatekeeper reads it as {gatekeeper}"
        elif (theirs := ",".join(map(str, knocks))) != gatekeeper:
            only = "only " if len(knocks) < len(steps) else ""
            what = f"knockd reads {only}{theirs} from {raw.strip()!r}; gatekeeper reads {gatekeeper}"
        else:
            continue
        notices.append(Notice(at, sec.name, f"{path}:{number}: {what}, and the door knocks that"))
    return notices
