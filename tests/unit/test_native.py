"""The mypyc build: what runs is what setup.py built, and an edited source is noticed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gatekeeper import native

ALL = [native.module_name(p) for p in native.COMPILED]


def test_the_hot_path_is_what_the_build_made() -> None:
    compiled = native.compiled_modules()
    if os.environ.get(native.PURE_ENV, "") not in ("", "0"):
        assert compiled == [], "GATEKEEPER_PURE=1 builds nothing, and removes an earlier build"
        assert native.describe() == "pure Python"
    else:
        if os.environ.get("CI"):  # scripts/setup.sh compiles them: none silently falls back to its .py
            assert compiled == ALL
        assert (native.describe() == "compiled (mypyc)") == (compiled == ALL)


def test_a_source_changed_after_the_build_is_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if native.compiled_modules() != ALL:
        pytest.skip("not compiled (GATEKEEPER_PURE=1): nothing can be stale")
    manifest = tmp_path / "_mypyc_build.json"
    root = Path(native.__file__).parent.parent
    built = {p: native.digest(root / p) for p in native.COMPILED}
    manifest.write_text(json.dumps(built))
    monkeypatch.setattr(native, "MANIFEST", manifest)
    assert native.stale() == []
    built["gatekeeper/engine/engine.py"] = "0" * 64  # as if engine.py was edited since
    manifest.write_text(json.dumps(built))
    assert native.stale() == ["gatekeeper.engine.engine"]
    assert "STALE: gatekeeper.engine.engine" in native.describe()
