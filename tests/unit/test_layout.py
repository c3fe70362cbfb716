"""The sizes a reader can take in one sitting (#15): no product module over 500 lines, no
product function over 80, no test file over 600. The lab (``gatekeeper/lab``) is tooling,
not the product, and is held to the module size only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "gatekeeper"
MODULE_LINES, FUNCTION_LINES, TEST_LINES = 500, 80, 600


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_no_module_is_longer_than_a_sitting() -> None:
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := _lines(p)) > MODULE_LINES}
    assert long == {}


def test_no_product_function_is_longer_than_a_screenful_or_two() -> None:
    long = {}
    for path in PACKAGE.rglob("*.py"):
        if PACKAGE / "lab" in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = size
    assert long == {}


def test_no_test_file_is_over_600_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "tests").rglob("*.py")
            if (n := _lines(p)) > TEST_LINES}
    assert long == {}


def test_every_path_the_readme_names_exists() -> None:
    """The README points readers at files (tests backing a claim, scripts, modules): a
    move must take the README along."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    pattern = (r"(?<![\w/.-])((?:tests|gatekeeper|scripts|rules|grafana|vagrant)/[\w./-]*"
               r"\.(?:py|sh|c|lua|json|conf|toml))\b")
    named = set(re.findall(pattern, text))
    assert named, "the README names no file: the pattern is wrong"
    assert sorted(p for p in named if not (ROOT / p).exists()) == []
