"""Which hot-path modules run compiled (mypyc) and which as pure Python.

``setup.py`` compiles the modules in :data:`COMPILED` with mypyc at install time (unless
``GATEKEEPER_PURE=1``); their ``.py`` files stay the one source of truth. An extension
module next to its ``.py`` wins on import, so in an editable install an edited ``.py`` is
not what runs until it is rebuilt (``bash scripts/setup.sh``): the build records each
source's hash in :data:`MANIFEST`, and :func:`stale` names the modules whose source has
changed since. Stdlib only: ``setup.py`` reads this file before anything is installed.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

# The modules mypyc compiles, as paths from the repository root (the order is the build's).
COMPILED = ("gatekeeper/queue/decode.py", "gatekeeper/engine/events.py", "gatekeeper/engine/limits.py",
            "gatekeeper/engine/grants.py", "gatekeeper/engine/engine.py", "gatekeeper/queue/worker.py")
MANIFEST = Path(__file__).with_name("_mypyc_build.json")
PURE_ENV = "GATEKEEPER_PURE"


def module_name(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compiled_modules() -> list[str]:
    """The modules of :data:`COMPILED` that were imported from an extension module."""
    names = []
    for path in COMPILED:
        module = importlib.import_module(module_name(path))
        if not (module.__file__ or "").endswith(".py"):
            names.append(module.__name__)
    return names


def stale() -> list[str]:
    """Compiled modules whose ``.py`` changed after the build (an editable install)."""
    try:
        built: dict[str, str] = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return []  # no record (an installed wheel): nothing to compare against
    root = Path(__file__).parent.parent
    names = set(compiled_modules())
    return [module_name(p) for p in COMPILED
            if module_name(p) in names and (root / p).exists() and built.get(p) != digest(root / p)]


def describe() -> str:
    """One line: ``compiled (mypyc)``, ``pure Python`` or what is mixed or stale."""
    names = compiled_modules()
    if not names:
        return "pure Python"
    old = stale()
    if old:
        return f"compiled (mypyc), STALE: {', '.join(old)} changed since the build (run scripts/setup.sh)"
    if len(names) < len(COMPILED):
        pure = [module_name(p) for p in COMPILED if module_name(p) not in names]
        return f"mixed: compiled (mypyc) {', '.join(names)}; pure Python {', '.join(pure)}"
    return "compiled (mypyc)"
