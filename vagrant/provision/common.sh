# Shared by gateway.sh, client.sh and attacker.sh (sourced, never run on its own).
#
# Environment (all optional):
#   GATEKEEPER_SRC    the repository to build the wheel from (default: two levels up
#                     from this file, i.e. the clone the script lives in)
#   GATEKEEPER_WHEEL  install this prebuilt wheel instead of building one
#   GATEKEEPER_VENV   where the virtualenv goes (default /opt/gatekeeper)
# shellcheck shell=bash

PROVISION_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
GATEKEEPER_SRC="${GATEKEEPER_SRC:-$(cd "$PROVISION_DIR/../.." && pwd)}"
GATEKEEPER_VENV="${GATEKEEPER_VENV:-/opt/gatekeeper}"
GATEKEEPER_BIN="$GATEKEEPER_VENV/bin/gatekeeper"
SCRIPT_NAME="$(basename "$0")"

# the build dependencies of NetfilterQueue (a C extension), and what every role needs
BASE_PACKAGES=(python3 python3-venv python3-dev python3-pip gcc libnetfilter-queue-dev
               libnfnetlink-dev iproute2 procps ca-certificates)

BUILD_DIR=""
cleanup_build() { if [[ -n $BUILD_DIR ]]; then rm -rf "$BUILD_DIR"; fi; }
trap cleanup_build EXIT

say() { printf '%s: %s\n' "$SCRIPT_NAME" "$*"; }
die() { printf '%s: error: %s\n' "$SCRIPT_NAME" "$*" >&2; exit 1; }

need_root_debian() {
    [[ $(id -u) -eq 0 ]] || die "run as root (it installs packages and system files)"
    if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
        die "this script is for Debian 12 (no apt-get/dpkg found)"
    fi
    [[ -f $GATEKEEPER_SRC/pyproject.toml || -n ${GATEKEEPER_WHEEL:-} ]] \
        || die "$GATEKEEPER_SRC has no pyproject.toml; set GATEKEEPER_SRC to the gatekeeper clone"
}

apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg -s "$pkg" 2>/dev/null | grep -qx 'Status: install ok installed' || missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    say "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -q
    apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${missing[@]}"
}

# The address's interface: `iface_of 192.168.56.10` -> eth1
iface_of() {
    ip -o -4 addr show to "$1/32" | awk '{print $2; exit}'
}

# Build the repository's wheel and install it (with the given extras, e.g. "[soak]")
# into $GATEKEEPER_VENV; /usr/local/bin/gatekeeper points at it.
install_gatekeeper() {
    local extras="${1:-}" wheel
    apt_install "${BASE_PACKAGES[@]}"
    if [[ ! -x $GATEKEEPER_VENV/bin/python ]]; then
        say "creating the virtualenv $GATEKEEPER_VENV"
        python3 -m venv "$GATEKEEPER_VENV"
    fi
    BUILD_DIR="$(mktemp -d /tmp/gatekeeper-build.XXXXXX)"
    if [[ -n ${GATEKEEPER_WHEEL:-} ]]; then
        wheel="$GATEKEEPER_WHEEL"
        [[ -f $wheel ]] || die "GATEKEEPER_WHEEL=$wheel: no such file"
    else
        say "building the wheel from $GATEKEEPER_SRC"
        mkdir -p "$BUILD_DIR/src" "$BUILD_DIR/dist"
        # a clean copy: the synced tree may hold caches, a .venv or an old build/
        tar -C "$GATEKEEPER_SRC" --exclude=.git --exclude=.venv --exclude=build --exclude=dist \
            --exclude='*.egg-info' --exclude=__pycache__ --exclude=.vagrant --exclude=results \
            --exclude=.mypy_cache --exclude=.ruff_cache --exclude=.pytest_cache \
            -cf - . | tar -C "$BUILD_DIR/src" -xf -
        "$GATEKEEPER_VENV/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps \
            -w "$BUILD_DIR/dist" "$BUILD_DIR/src"
        wheel="$(ls "$BUILD_DIR"/dist/gatekeeper-*.whl)"
    fi
    install -d -m 0755 "$GATEKEEPER_VENV/dist"
    install -m 0644 "$wheel" "$GATEKEEPER_VENV/dist/"
    wheel="$GATEKEEPER_VENV/dist/$(basename "$wheel")"
    say "installing $(basename "$wheel")$extras into $GATEKEEPER_VENV"
    "$GATEKEEPER_VENV/bin/python" -m pip install -q --disable-pip-version-check "$wheel$extras"
    # the same version number with new code: reinstall the package itself
    "$GATEKEEPER_VENV/bin/python" -m pip install -q --disable-pip-version-check \
        --force-reinstall --no-deps "$wheel"
    ln -sfn "$GATEKEEPER_BIN" /usr/local/bin/gatekeeper
    say "$("$GATEKEEPER_BIN" --version) installed: $GATEKEEPER_BIN"
}
