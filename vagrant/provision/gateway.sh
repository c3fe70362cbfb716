#!/usr/bin/env bash
# Provision the soak gateway (Debian 12, as root). Vagrant runs it from the synced
# repository; by hand, on a Debian 12 machine with a second, private interface:
#
#   sudo GATEKEEPER_ADDRESS=192.168.56.10 bash vagrant/provision/gateway.sh
#
# It installs, and changes on this machine:
#   * gatekeeper from the repository's wheel into /opt/gatekeeper (with the soak extra),
#     /usr/local/bin/gatekeeper, the system user "gatekeeper", /etc/gatekeeper/gatekeeper.toml
#     guarding ONLY the interface that holds $GATEKEEPER_ADDRESS, the systemd unit printed
#     by `gatekeeper unit`, enabled and (re)started; /etc/modules-load.d/gatekeeper.conf;
#   * a second sshd port ($GATEKEEPER_SSH_PORT, default 2222), the door's protected port;
#   * Prometheus (Debian's package) with grafana/prometheus/prometheus.yml and alerts.yml;
#   * Grafana from Grafana's own apt repository (Grafana is not in Debian), with
#     grafana/provisioning/ and grafana/dashboards/gatekeeper.json.
#
# Environment: GATEKEEPER_ADDRESS (default 192.168.56.10) or GATEKEEPER_INTERFACE,
# GATEKEEPER_SSH_PORT, GATEKEEPER_SEQUENCE (default 7000:udp,8000:tcp,9000:udp),
# GATEKEEPER_NO_GRAFANA=1 to skip Grafana, and those of common.sh.
set -euo pipefail
# shellcheck source=vagrant/provision/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ADDRESS="${GATEKEEPER_ADDRESS:-192.168.56.10}"
INTERFACE="${GATEKEEPER_INTERFACE:-}"
SSH_PORT="${GATEKEEPER_SSH_PORT:-2222}"
SEQUENCE="${GATEKEEPER_SEQUENCE:-7000:udp,8000:tcp,9000:udp}"
GRAFANA_DIR="$GATEKEEPER_SRC/grafana"

need_root_debian
[[ -d $GRAFANA_DIR/prometheus && -d $GRAFANA_DIR/provisioning ]] \
    || die "$GRAFANA_DIR: no prometheus/ and provisioning/ (set GATEKEEPER_SRC to the clone)"
[[ $SSH_PORT =~ ^[0-9]+$ && $SSH_PORT -ge 1 && $SSH_PORT -le 65535 && $SSH_PORT -ne 22 ]] \
    || die "GATEKEEPER_SSH_PORT=$SSH_PORT: a port 1-65535 other than 22"
[[ $SEQUENCE =~ ^[0-9]+(:(tcp|udp|icmp))?(,[0-9]+(:(tcp|udp|icmp))?)*$ ]] \
    || die "GATEKEEPER_SEQUENCE=$SEQUENCE: expected PORT[:PROTO],..."

# --- the one interface to guard -------------------------------------------------------

if [[ -z $INTERFACE ]]; then
    INTERFACE="$(iface_of "$ADDRESS")"
    [[ -n $INTERFACE ]] || die "no interface holds $ADDRESS; set GATEKEEPER_ADDRESS or GATEKEEPER_INTERFACE"
fi
ip link show dev "$INTERFACE" >/dev/null 2>&1 || die "no interface $INTERFACE"
[[ $INTERFACE != lo ]] || die "refusing to guard the loopback interface"
# The interface of the default route is how this machine is administered (Vagrant's ssh
# on the NAT/management interface): guarding it would lock everyone out.
default_if="$(ip -o -4 route show default | awk '{print $5; exit}')"
if [[ $INTERFACE == "$default_if" && ${GATEKEEPER_GUARD_DEFAULT_ROUTE:-0} != 1 ]]; then
    die "$INTERFACE carries the default route (the way in for ssh); refusing to guard it" \
        "(GATEKEEPER_GUARD_DEFAULT_ROUTE=1 to insist)"
fi
say "guarding $INTERFACE only ($ADDRESS); door ssh: ${SEQUENCE//,/ } -> $SSH_PORT/tcp"

# --- packages and gatekeeper ----------------------------------------------------------

apt_install iptables ipset conntrack kmod openssh-server prometheus curl gpg
install_gatekeeper "[soak]"

# The unit forbids module loading (ProtectKernelModules=yes): load what the rules need
# at boot, before the unit (After=systemd-modules-load.service), and now.
MODULES=(nfnetlink_queue xt_NFQUEUE xt_HMARK xt_mark xt_conntrack xt_set xt_comment xt_tcpudp xt_multiport
         xt_length ip_set ip_set_hash_ipport ip_set_hash_ipportip ip_set_hash_ip xt_hashlimit
         iptable_nat ip6table_nat xt_nat xt_addrtype)
printf '# gatekeeper: netfilter modules its rules use (vagrant/provision/gateway.sh)\n' \
    >/etc/modules-load.d/gatekeeper.conf
printf '%s\n' "${MODULES[@]}" >>/etc/modules-load.d/gatekeeper.conf
for module in "${MODULES[@]}"; do
    modprobe "$module" 2>/dev/null || say "note: modprobe $module failed (built in?)"
done

# --- sshd on a second port, the door's ------------------------------------------------

sed "s/@SSH_PORT@/$SSH_PORT/g" "$PROVISION_DIR/sshd-gatekeeper.conf.in" \
    >/etc/ssh/sshd_config.d/gatekeeper-soak.conf
sshd -t || die "sshd -t rejects the configuration; see /etc/ssh/sshd_config.d/gatekeeper-soak.conf"
systemctl reload ssh.service 2>/dev/null || systemctl restart ssh.service

# --- the gatekeeper service -----------------------------------------------------------

if ! id -u gatekeeper >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin gatekeeper
fi
install -d -m 0750 -g gatekeeper /etc/gatekeeper
# shellcheck disable=SC2086  # split on purpose; the pattern above admits no glob or space
quoted="$(printf '"%s", ' ${SEQUENCE//,/ })"
config="$(sed -e "s/@INTERFACE@/$INTERFACE/g" -e "s/@SSH_PORT@/$SSH_PORT/g" \
              -e "s/@SEQUENCE@/${quoted%, }/g" "$PROVISION_DIR/gatekeeper.toml.in")"
printf '%s\n' "$config" >/etc/gatekeeper/gatekeeper.toml.new
chgrp gatekeeper /etc/gatekeeper/gatekeeper.toml.new
chmod 0640 /etc/gatekeeper/gatekeeper.toml.new
"$GATEKEEPER_BIN" check -c /etc/gatekeeper/gatekeeper.toml.new
mv /etc/gatekeeper/gatekeeper.toml.new /etc/gatekeeper/gatekeeper.toml

"$GATEKEEPER_BIN" unit >/etc/systemd/system/gatekeeper.service
systemctl daemon-reload
systemctl enable gatekeeper.service
systemctl restart gatekeeper.service
for _ in $(seq 1 30); do
    systemctl is-active --quiet gatekeeper.service && break
    sleep 1
done
systemctl is-active --quiet gatekeeper.service \
    || { journalctl -u gatekeeper.service -n 20 --no-pager || true; die "gatekeeper.service is not active"; }
"$GATEKEEPER_BIN" status || true

# --- Prometheus (Debian) --------------------------------------------------------------

install -m 0644 "$GRAFANA_DIR/prometheus/prometheus.yml" /etc/prometheus/prometheus.yml
install -m 0644 "$GRAFANA_DIR/prometheus/alerts.yml" /etc/prometheus/alerts.yml
promtool check config /etc/prometheus/prometheus.yml
systemctl enable prometheus.service
systemctl restart prometheus.service

# --- Grafana (Grafana's apt repository) -----------------------------------------------

if [[ ${GATEKEEPER_NO_GRAFANA:-0} != 1 ]]; then
    if [[ ! -f /etc/apt/keyrings/grafana.gpg ]]; then
        install -d -m 0755 /etc/apt/keyrings
        curl -fsSL https://apt.grafana.com/gpg.key | gpg --dearmor -o /etc/apt/keyrings/grafana.gpg.new
        mv /etc/apt/keyrings/grafana.gpg.new /etc/apt/keyrings/grafana.gpg
    fi
    echo "deb [signed-by=/etc/apt/keyrings/grafana.gpg] https://apt.grafana.com stable main" \
        >/etc/apt/sources.list.d/grafana.list
    if ! dpkg -s grafana 2>/dev/null | grep -qx 'Status: install ok installed'; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get -o DPkg::Lock::Timeout=300 update -q
        apt-get -o DPkg::Lock::Timeout=300 install -y -q grafana
    fi
    install -m 0640 -g grafana "$GRAFANA_DIR/provisioning/datasources/prometheus.yaml" \
        /etc/grafana/provisioning/datasources/gatekeeper-prometheus.yaml
    install -m 0640 -g grafana "$GRAFANA_DIR/provisioning/dashboards/gatekeeper.yaml" \
        /etc/grafana/provisioning/dashboards/gatekeeper.yaml
    install -d -m 0755 /var/lib/grafana/dashboards/gatekeeper
    install -m 0644 "$GRAFANA_DIR/dashboards/gatekeeper.json" /var/lib/grafana/dashboards/gatekeeper/
    systemctl daemon-reload
    systemctl enable grafana-server.service
    systemctl restart grafana-server.service
fi

say "done: gatekeeper guards $INTERFACE; knock with: gatekeeper knock $ADDRESS ${SEQUENCE//,/ }" \
    "then ssh -p $SSH_PORT $ADDRESS; Prometheus :9090, Grafana :3000 (forwarded to the host's loopback)"
