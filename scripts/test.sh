#!/usr/bin/env bash
# Set up (apt packages, .venv) and run every check: ruff, mypy, the import contracts
# (lint-imports: the layers in pyproject.toml's [tool.importlinter]), then the tests.
# Lab tests need root (network namespaces); run this as root, as CI does.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check gatekeeper tests
.venv/bin/mypy
.venv/bin/lint-imports
status=0
.venv/bin/python -m pytest -ra "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure here" >&2
    exit 1
fi
exit "$status"
