#!/usr/bin/env bash
# Set the machine up (scripts/setup.sh, idempotent) and run `gatekeeper demo` as root.
# Arguments go to the demo, e.g. scripts/demo.sh --open-for 10
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
exec "$ROOT/.venv/bin/gatekeeper" demo "$@"
