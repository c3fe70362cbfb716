"""Compile the hot path (gatekeeper/native.py: COMPILED) with mypyc at install time.

Everything else about the package is in pyproject.toml. ``GATEKEEPER_PURE=1`` builds
pure Python: nothing is compiled, and the extension modules an earlier editable build
left next to the sources are removed (they would win on import). A failed compile fails
the install: the modules must stay compilable (see CONTRIBUTING in README.md).

The batched NFQUEUE reader (gatekeeper/queue/_nfq.c) is plain C and always built, like
NetfilterQueue itself: the worker needs it in either build.
"""

from __future__ import annotations

import json
import os
import runpy
from pathlib import Path

from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent
native = runpy.run_path(str(ROOT / "gatekeeper" / "native.py"))  # stdlib only, not yet installed
COMPILED: tuple[str, ...] = native["COMPILED"]
MANIFEST: Path = native["MANIFEST"]


def _leftovers() -> list[Path]:
    """Extension modules of an earlier in-place (editable) build."""
    found = list(ROOT.glob("gatekeeper__mypyc.*.so"))
    for path in COMPILED:
        found += (ROOT / path).parent.glob(Path(path).stem + ".*.so")
    return found


NFQ = Extension("gatekeeper.queue._nfq", ["gatekeeper/queue/_nfq.c"],
                extra_compile_args=["-O2", "-Wall"])


def ext_modules() -> list[object]:
    if os.environ.get(native["PURE_ENV"], "") not in ("", "0"):
        for path in [*_leftovers(), MANIFEST]:
            path.unlink(missing_ok=True)
        return [NFQ]
    from mypyc.build import mypycify

    # Type-checked with the repository's [tool.mypy] (strict); the modules they import
    # are read for their types but not reported on (follow-imports=silent), and a
    # dependency missing from the isolated build environment is Any to the compiler.
    extensions = mypycify(
        ["--follow-imports=silent", "--ignore-missing-imports", *COMPILED],
        opt_level="3", group_name="gatekeeper",
    )
    MANIFEST.write_text(json.dumps(
        {p: native["digest"](ROOT / p) for p in COMPILED}, indent=1, sort_keys=True) + "\n")
    return [*extensions, NFQ]


setup(ext_modules=ext_modules())
