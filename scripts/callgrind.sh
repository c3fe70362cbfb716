#!/usr/bin/env bash
# Instructions a verdict through Worker.on_packet, counted by valgrind (callgrind): the
# bench's round-1 packets replayed with 0 and with 2 passes (gatekeeper.lab.bench.replay);
# the difference over the 120,000 verdicts. Repeatable on a loaded machine, unlike
# times. Needs valgrind (apt-get install valgrind); about 3 minutes.
#   bash scripts/callgrind.sh            # what the install runs (compiled or pure)
#   bash scripts/callgrind.sh -o DIR     # keep the callgrind.out files in DIR
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(mktemp -d)"
keep=""
if [[ ${1:-} == -o ]]; then keep="$2"; mkdir -p "$keep"; out="$keep"; fi
command -v valgrind >/dev/null || { echo "callgrind.sh: needs valgrind (apt-get install valgrind)" >&2; exit 2; }
export PYTHONHASHSEED=0  # the same dict and set layouts on every run
declare -A ir
for n in 0 2; do
    valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out.$n" \
        .venv/bin/python -m gatekeeper.lab.bench.replay "$n" 2>"$out/log.$n"
    ir[$n]="$(grep -oP 'Collected : \K[0-9]+' "$out/log.$n")"
done
grep -v '^==' "$out/log.2" || true
echo "instructions a verdict: $(( (ir[2] - ir[0]) / 120000 )) (setup ${ir[0]}, with 2 passes ${ir[2]})"
[[ -n $keep ]] || rm -rf "$out"
