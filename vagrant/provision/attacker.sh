#!/usr/bin/env bash
# Provision the soak attacker (Debian 12, as root): gatekeeper from the repository's
# wheel in /opt/gatekeeper, for `gatekeeper soak attacker`. It runs no traffic:
# vagrant/soak.sh starts the attacker role when asked, against the gateway only.
#
#   sudo bash vagrant/provision/attacker.sh
#
# Environment: those of common.sh.
set -euo pipefail
# shellcheck source=vagrant/provision/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

need_root_debian
install_gatekeeper ""
say "done: $(gatekeeper --version)"
