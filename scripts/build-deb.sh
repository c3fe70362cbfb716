#!/usr/bin/env bash
# Build the Debian package, as root on Debian 12: dist/gatekeeper_VERSION_amd64.deb
# (VERSION: gatekeeper/__init__.py's __version__, which debian/changelog's top entry must
# match). Installs the build dependencies with apt-get when missing, builds a copy of the
# checkout (tracked and new files, not .venv or ignored ones) with dpkg-buildpackage
# (debian/rules: dh-virtualenv, the pinned debian/requirements.txt, the hot path compiled),
# then runs lintian, which must report no error (kept warnings: debian/*lintian-overrides).
#   bash scripts/build-deb.sh [OUTDIR]      (default OUTDIR: dist/)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(mkdir -p "${1:-$ROOT/dist}" && cd "${1:-$ROOT/dist}" && pwd)"
BUILD_DEPS=(debhelper dh-virtualenv dpkg-dev gcc libnetfilter-queue-dev libnfnetlink-dev
            python3-dev python3-venv lintian)

say() { printf 'build-deb: %s\n' "$*"; }
die() { printf 'build-deb: error: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (it installs the build dependencies with apt-get)"
command -v apt-get >/dev/null || die "this script is for Debian (no apt-get found)"

missing=()
for pkg in "${BUILD_DEPS[@]}"; do
    dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -qx 'install ok installed' || missing+=("$pkg")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    say "installing build dependencies: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update
    apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "${missing[@]}"
fi

version="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/gatekeeper/__init__.py")"
[[ -n $version ]] || die "gatekeeper/__init__.py: no __version__ line"
deb_version="$(cd "$ROOT" && dpkg-parsechangelog -S Version)"
[[ $deb_version == "$version" ]] \
    || die "debian/changelog: version $deb_version, gatekeeper/__init__.py __version__ is $version (add a changelog entry)"

work="$(mktemp -d /tmp/gatekeeper-deb.XXXXXX)"
trap 'rm -rf "$work"' EXIT
src="$work/gatekeeper-$version"
mkdir "$src"
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$ROOT" && git ls-files -z -co --exclude-standard | xargs -0 cp --parents -t "$src")
else
    tar -C "$ROOT" --exclude=.venv --exclude=dist --exclude=build --exclude='*.so' -cf - . | tar -C "$src" -xf -
fi

say "building gatekeeper $version in $src"
(cd "$src" && dpkg-buildpackage -us -uc -b)
deb="gatekeeper_${version}_amd64.deb"
[[ -f $work/$deb ]] || die "dpkg-buildpackage made no $deb"
say "lintian $deb"
lintian --fail-on error --no-tag-display-limit "$work/$deb"
mv "$work/$deb" "$OUT/$deb"
say "done: $OUT/$deb"
