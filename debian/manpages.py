"""Render gatekeeper(8) from the CLI's argparse help and gatekeeper.toml(5) from the
README's "Configuration" section, as plain roff (run by debian/rules at build time).

    python debian/manpages.py README.md MANDIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gatekeeper import __version__
from gatekeeper.cli import build_parser


def _esc(line: str) -> str:
    line = line.replace("\\", "\\e")
    return "\\&" + line if line.startswith((".", "'")) else line


def _pre(text: str) -> list[str]:
    return [".nf", *(_esc(t) for t in text.rstrip("\n").splitlines()), ".fi"]


def _head(name: str, section: int, summary: str) -> list[str]:
    return [f'.TH {name.upper()} {section} "" "gatekeeper {__version__}" "gatekeeper"',
            ".SH NAME", f"{name} \\- {summary}"]


def gatekeeper_8() -> str:
    parser = build_parser()
    out = _head("gatekeeper", 8, "inline port-knocking gatekeeper for Linux gateways")
    out += [".SH SYNOPSIS", *_pre(parser.format_usage()), ".SH DESCRIPTION", *_pre(parser.format_help())]
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out.append(".SH COMMANDS")
    for name, sub in subs.choices.items():
        out += [f".SS {name}", *_pre(sub.format_help())]
    out += [".SH FILES", ".TP", "/etc/gatekeeper/gatekeeper.toml",
            "the configuration (see gatekeeper.toml(5))", ".TP", "/var/lib/gatekeeper",
            "state that outlives a restart (SPA replay caches, one-time lines)",
            ".SH SEE ALSO", "gatekeeper.toml(5), iptables(8), ipset(8), systemctl(1)"]
    return "\n".join(out) + "\n"


def section(readme: str, title: str) -> str:
    """The text of the README's ``## title`` section, its ### subsections included."""
    lines = readme.splitlines()
    start = lines.index(f"## {title}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start:end])


def gatekeeper_toml_5(readme: str) -> str:
    out = _head("gatekeeper.toml", 5, "gatekeeper configuration file")
    out += [".SH SYNOPSIS", "/etc/gatekeeper/gatekeeper.toml", ".SH DESCRIPTION"]
    code = False
    para: list[str] = []

    def flush() -> None:
        if para:
            out.extend([".PP", *(_esc(p) for p in para)])
            para.clear()

    for line in section(readme, "Configuration").splitlines():
        if line.startswith("```"):
            flush()
            out.append(".fi" if code else ".nf")
            code = not code
        elif code:
            out.append(_esc(line))
        elif line.startswith("#"):
            flush()
            out.append(".SH " + _esc(line.lstrip("#").strip().upper()))
        elif not line.strip():
            flush()
        else:
            para.append(line.strip())
    flush()
    out += [".SH SEE ALSO", "gatekeeper(8)"]
    return "\n".join(out) + "\n"


def main() -> int:
    readme, mandir = Path(sys.argv[1]).read_text(), Path(sys.argv[2])
    (mandir / "man8").mkdir(parents=True, exist_ok=True)
    (mandir / "man5").mkdir(parents=True, exist_ok=True)
    (mandir / "man8" / "gatekeeper.8").write_text(gatekeeper_8())
    (mandir / "man5" / "gatekeeper.toml.5").write_text(gatekeeper_toml_5(readme))
    return 0


if __name__ == "__main__":
    sys.exit(main())
