#!/usr/bin/env bash
# Prepare a Debian 12 / Ubuntu machine for gatekeeper, as root: the system packages
# (netfilter tools, the libnetfilter_queue headers NetfilterQueue builds against, Debian's
# knockd for its stock knock client, redis-server for the cluster tests, fail2ban for
# fail2ban-regex and the SPA filter under rules/fail2ban, dh-virtualenv,
# lintian and debootstrap for the Debian package and its test) and a virtualenv
# at .venv in the repo root with gatekeeper installed editable, test extras included, its
# hot path compiled with mypyc (GATEKEEPER_PURE=1 bash scripts/setup.sh: pure Python).
#
# Idempotent and fast on a rerun: apt is skipped when every package is installed, pip
# when the virtualenv already holds this checkout's install for the same pyproject.toml
# and the same sources of the compiled modules.
# Installing knockd, fail2ban or redis-server never starts their daemons: service starts are
# forbidden for the duration of the install (policy-rc.d), and a service that the install
# enabled is disabled again.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.gatekeeper-setup"
POLICY=/usr/sbin/policy-rc.d
PACKAGES=(
    python3 python3-venv python3-dev gcc libnetfilter-queue-dev libnfnetlink-dev
    iptables ipset nftables conntrack iproute2 knockd procps prometheus systemd
    fwknop-client fwknop-server gnupg vagrant vagrant-libvirt nmap redis-server tcpdump
    dh-virtualenv debhelper dpkg-dev lintian debootstrap fail2ban
)

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (apt-get, and the lab's network namespaces, need it)"
command -v dpkg >/dev/null && command -v apt-get >/dev/null \
    || die "this script is for Debian or Ubuntu (no dpkg/apt-get found)"

installed() {  # dpkg -s also answers for removed packages whose config files remain
    local status
    status="$(dpkg -s "$1" 2>/dev/null || true)"
    grep -qx 'Status: install ok installed' <<<"$status"
}

# --- system packages ------------------------------------------------------------------

missing=()
for pkg in "${PACKAGES[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done

created_policy=0
remove_policy() {
    if [[ $created_policy -eq 1 ]]; then
        rm -f "$POLICY"
        created_policy=0
    fi
}
trap remove_policy EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ ${#missing[@]} -eq 0 ]]; then
    say "system packages: all installed"
else
    say "installing: ${missing[*]}"
    # services whose packages we need only for a binary (knock, promtool, the lab's
    # prometheus, fail2ban-regex): if this install enables them, they are disabled again below
    newly=()
    for svc in knockd prometheus fwknop-server redis-server fail2ban; do installed "$svc" || newly+=("$svc"); done
    if [[ ! -e $POLICY ]]; then
        # 101 = "action forbidden": invoke-rc.d and deb-systemd-invoke start nothing.
        printf '#!/bin/sh\n# gatekeeper scripts/setup.sh: no service starts during its apt-get install\nexit 101\n' \
            >"$POLICY"
        chmod 0755 "$POLICY"
        created_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update
    apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "${missing[@]}"
    remove_policy
    if [[ ${#newly[@]} -gt 0 && -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
        # knockd.service ignores START_KNOCKD in /etc/default/knockd, prometheus.service
        # would scrape from the next boot on, redis-server.service would listen on 6379
        # (the cluster tests start their own redis-server), fail2ban.service would ban
        # with its sshd jail: none is wanted on a machine
        # that only tests.
        for svc in "${newly[@]}"; do
            if systemctl is-enabled --quiet "$svc.service" 2>/dev/null; then
                say "disabling $svc.service, which its install enabled"
                systemctl disable --now "$svc.service" || say "warning: could not disable $svc.service"
            fi
        done
    fi
fi

# --- the virtualenv -------------------------------------------------------------------

PYTHON=/usr/bin/python3  # the interpreter python3-venv and python3-dev belong to
[[ -x $PYTHON ]] || PYTHON="$(command -v python3)" || die "python3 not found"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "gatekeeper needs Python 3.11 or newer; $PYTHON is $("$PYTHON" -V 2>&1)"

if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c '' 2>/dev/null; then
    say "creating the virtualenv $VENV"
    "$PYTHON" -m venv --clear "$VENV"
fi

# The hot path is compiled with mypyc (setup.py; GATEKEEPER_PURE=1 builds pure Python). In
# this editable install the compiled modules sit next to their sources and win on import,
# so a change to one of those sources (or to the build) means a rebuild.
read -r -a compiled < <("$PYTHON" -c 'import runpy, sys; print(*runpy.run_path(sys.argv[1])["COMPILED"])' \
    "$ROOT/gatekeeper/native.py")
sources="$(cd "$ROOT" && cat pyproject.toml setup.py gatekeeper/native.py "${compiled[@]}" \
    | sha256sum | cut -d' ' -f1)"
want="$sources pure=${GATEKEEPER_PURE:-0} $ROOT $("$VENV/bin/python" -V 2>&1)"
if [[ -f $STAMP && "$(cat "$STAMP")" == "$want" && -x $VENV/bin/gatekeeper ]] \
    && "$VENV/bin/python" -c 'import gatekeeper, netfilterqueue, pyroute2, dpkt, pytest' 2>/dev/null; then
    say "virtualenv: gatekeeper already installed (editable) in $VENV"
else
    say "installing gatekeeper (editable, with test extras) into $VENV"
    rm -f "$STAMP"
    (cd "$ROOT" && "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e '.[test]')
    printf '%s\n' "$want" >"$STAMP"
fi
# from / : the install itself (not this checkout's directory) must find every module
hot="$(cd / && "$VENV/bin/python" -c 'from gatekeeper import native; print(native.describe())')" \
    || die "the install cannot import gatekeeper's hot path"
say "done: $VENV/bin/gatekeeper (hot path: $hot)"
