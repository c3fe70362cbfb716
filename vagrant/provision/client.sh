#!/usr/bin/env bash
# Provision the soak client (Debian 12, as root): gatekeeper from the repository's wheel
# in /opt/gatekeeper, and /usr/local/sbin/gatekeeper-soak-sources, which puts the extra
# source addresses the soak client rotates over on the private interface. It runs no
# traffic: vagrant/soak.sh starts `gatekeeper soak client` when asked.
#
#   sudo GATEKEEPER_ADDRESS=192.168.56.11 GATEKEEPER_SOURCES=192.168.56.200-229 \
#       bash vagrant/provision/client.sh
#
# Environment: GATEKEEPER_ADDRESS (this machine's private address, default
# 192.168.56.11), GATEKEEPER_SOURCES (extra addresses, a last-octet range A.B.C.X-Y,
# default 192.168.56.200-229; "" for none), and those of common.sh.
set -euo pipefail
# shellcheck source=vagrant/provision/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ADDRESS="${GATEKEEPER_ADDRESS:-192.168.56.11}"
SOURCES="${GATEKEEPER_SOURCES-192.168.56.200-229}"

need_root_debian
if [[ -n $SOURCES ]]; then
    [[ $SOURCES =~ ^([0-9]+\.[0-9]+\.[0-9]+\.)([0-9]+)-([0-9]+)$ ]] \
        || die "GATEKEEPER_SOURCES=$SOURCES: expected a range like 192.168.56.200-229"
    (( BASH_REMATCH[2] <= BASH_REMATCH[3] && BASH_REMATCH[3] <= 254 && BASH_REMATCH[3] - BASH_REMATCH[2] < 100 )) \
        || die "GATEKEEPER_SOURCES=$SOURCES: at most 100 addresses, last octet up to 254"
fi

install_gatekeeper ""

# The helper adds the addresses (idempotent; not persistent: soak.sh runs it before a soak).
cat >/usr/local/sbin/gatekeeper-soak-sources <<HELPER
#!/usr/bin/env bash
# Written by vagrant/provision/client.sh: put the soak client's extra source addresses
# ($SOURCES) on the interface that holds $ADDRESS, and print them for --sources.
set -euo pipefail
address="$ADDRESS"; sources="$SOURCES"
iface="\$(ip -o -4 addr show to "\$address/32" | awk '{print \$2; exit}')"
[[ -n \$iface ]] || { echo "gatekeeper-soak-sources: no interface holds \$address" >&2; exit 1; }
[[ -n \$sources ]] || exit 0
prefix="\${sources%.*}."; range="\${sources##*.}"
plen="\$(ip -o -4 addr show to "\$address/32" | awk '{split(\$4, a, "/"); print a[2]; exit}')"
for n in \$(seq "\${range%-*}" "\${range#*-}"); do
    ip addr replace "\$prefix\$n/\$plen" dev "\$iface"
done
echo "\$sources"
HELPER
chmod 0755 /usr/local/sbin/gatekeeper-soak-sources
/usr/local/sbin/gatekeeper-soak-sources >/dev/null
say "done: $(gatekeeper --version); source addresses: ${SOURCES:-none}"
