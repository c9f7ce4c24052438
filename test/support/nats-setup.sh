#!/usr/bin/env bash
# Installs Debian's nats-server for the tests (they start their own on free ports). Fast when present.
set -euo pipefail
command -v nats-server >/dev/null 2>&1 && exit 0
echo 'nats/setup: installing nats-server (Debian package)' >&2
if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo -n); fi
"${SUDO[@]}" apt-get update >&2
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y nats-server >&2
command -v nats-server >/dev/null 2>&1 || { echo 'nats/setup: ERROR: nats-server still missing' >&2; exit 1; }
