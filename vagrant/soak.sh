#!/usr/bin/env bash
# Run the soak scenario across the three VMs (after `vagrant up`), on the host:
#
#   bash vagrant/soak.sh [--duration SECONDS] [--out DIR]
#
# The same role commands as `gatekeeper soak lab` runs in the namespace lab, each in its
# VM over `vagrant ssh -c`, concurrently:
#   gateway:  sudo gatekeeper soak gateway --duration D+3 --out .../gateway.jsonl
#   client:   gatekeeper soak client --gateway 192.168.56.10 --port 2222 --sources ... --out ...
#   attacker: gatekeeper soak attacker --gateway 192.168.56.10 --port 2222 --out ...
# then copies the client's and attacker's records to the gateway, runs
# `gatekeeper soak report` there and copies everything back to DIR (default
# vagrant/results/soak-YYYYmmdd-HHMMSS): the .jsonl files, summary.json, soak.png and
# report.txt. Exit status: the report's (0 = every check passed), or 1 if a role failed.
#
# Every role is bounded by --duration; interrupting this script leaves the remote roles
# to finish on their own within that time.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DURATION=600
OUT=""
GATEWAY_IP="${GATEKEEPER_GATEWAY_IP:-192.168.56.10}"
SSH_PORT="${GATEKEEPER_SSH_PORT:-2222}"
SEQUENCE="${GATEKEEPER_SEQUENCE:-7000:udp,8000:tcp,9000:udp}"
REMOTE=/var/tmp/gatekeeper-soak

say() { printf 'soak.sh: %s\n' "$*"; }
die() { printf 'soak.sh: error: %s\n' "$*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --duration) DURATION="${2:?--duration SECONDS}"; shift 2 ;;
        --out) OUT="${2:?--out DIR}"; shift 2 ;;
        -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 10 && $DURATION -le 604800 ]] \
    || die "--duration: whole seconds, 10-604800"
OUT="${OUT:-$HERE/results/soak-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
command -v vagrant >/dev/null || die "vagrant is not installed"
cd "$HERE"  # the Vagrantfile's directory

# vssh MACHINE COMMAND...: the words are quoted for the remote shell; no tty, so the
# output is the command's bytes
vssh() {
    local machine=$1 cmd
    shift
    printf -v cmd '%q ' "$@"
    vagrant ssh "$machine" --no-tty -c "$cmd" </dev/null
}

for machine in gateway client attacker; do
    vagrant status "$machine" --machine-readable | grep -q ",state,running" \
        || die "$machine is not running: vagrant up first"
done
vssh gateway sudo systemctl is-active --quiet gatekeeper.service \
    || die "gatekeeper.service is not active on the gateway"

say "preparing: $REMOTE in every VM, the client's source addresses"
for machine in gateway client attacker; do
    vssh "$machine" bash -c "sudo rm -rf $REMOTE && mkdir -p $REMOTE"
done
SOURCES="$(vssh client sudo /usr/local/sbin/gatekeeper-soak-sources | tr -d '\r')"

say "running for $DURATION s; logs in $OUT/*.log"
vssh gateway sudo gatekeeper soak gateway --duration "$((DURATION + 3))" \
    --out "$REMOTE/gateway.jsonl" >"$OUT/gateway.log" 2>&1 &
declare -A pids=([gateway]=$!)
sleep 1
vssh client gatekeeper soak client --gateway "$GATEWAY_IP" --duration "$DURATION" \
    --sequence "$SEQUENCE" --port "$SSH_PORT" ${SOURCES:+--sources "$SOURCES"} \
    --out "$REMOTE/client.jsonl" >"$OUT/client.log" 2>&1 &
pids[client]=$!
vssh attacker gatekeeper soak attacker --gateway "$GATEWAY_IP" --duration "$DURATION" \
    --sequence "$SEQUENCE" --port "$SSH_PORT" --out "$REMOTE/attacker.jsonl" \
    >"$OUT/attacker.log" 2>&1 &
pids[attacker]=$!

failed=0
for role in gateway client attacker; do
    if wait "${pids[$role]}"; then
        say "$role: $(tail -n 1 "$OUT/$role.log")"
    else
        say "$role FAILED: $(tail -n 3 "$OUT/$role.log")"
        failed=1
    fi
done

say "collecting the records"
for role in gateway client attacker; do
    vssh "$role" cat "$REMOTE/$role.jsonl" >"$OUT/$role.jsonl" \
        || { say "no records from $role"; failed=1; }
done
for role in client attacker; do
    vagrant upload "$OUT/$role.jsonl" "$REMOTE/$role.jsonl" gateway >/dev/null
done

say "report (on the gateway: it has the soak extra, matplotlib)"
status=0
vssh gateway gatekeeper soak report --in "$REMOTE" --out "$REMOTE" | tee "$OUT/report.txt" || status=$?
vssh gateway cat "$REMOTE/summary.json" >"$OUT/summary.json" || status=1
vssh gateway base64 -w0 "$REMOTE/soak.png" | base64 -d >"$OUT/soak.png" || status=1
say "results: $OUT (summary.json, soak.png, report.txt, *.jsonl, *.log)"
if [[ $failed -ne 0 ]]; then
    exit 1
fi
exit "$status"
