#!/usr/bin/env bash
# Installs Debian's `chromium`, the headless browser the status-page test drives with playwright-core
# (which downloads no browser of its own). A font package keeps screenshots legible.
#
# Idempotent and fast (one stat) when chromium is in place. Progress on stderr, nothing on stdout.
# Needs root or passwordless sudo on the slow path (CI runs as root, no stdin). Concurrent runs are
# serialized by a flock on the cache dir and by dpkg's own lock.
#
# Environment:
#   HEIMDALL_CACHE_DIR  cache root for the lock file (default $HOME/.cache/heimdall)
set -euo pipefail

CHROMIUM=/usr/bin/chromium
PACKAGES=(chromium fonts-liberation)
CACHE_DIR="${HEIMDALL_CACHE_DIR:-${HOME:?HOME is not set}/.cache/heimdall}"

log() { printf 'browser/setup: %s\n' "$*" >&2; }
die() { printf 'browser/setup: ERROR: %s\n' "$*" >&2; exit 1; }

# Fast path: nothing to do, no lock taken.
[ -x "$CHROMIUM" ] && exit 0

mkdir -p "$CACHE_DIR" || die "cannot create cache dir $CACHE_DIR"
command -v flock >/dev/null 2>&1 || die "flock (util-linux) is required"
exec 9>"$CACHE_DIR/browser-setup.lock"
log "waiting for lock $CACHE_DIR/browser-setup.lock"
flock 9 || die "cannot lock $CACHE_DIR/browser-setup.lock"
[ -x "$CHROMIUM" ] && exit 0 # installed by whoever held the lock before us

as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    die "need root (or passwordless sudo) to run: $*"
  fi
}

command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install ${PACKAGES[*]} by hand (Debian packages)"
# Another apt (the oracle setup, unattended upgrades) may hold dpkg's lock: wait for it, bounded.
APT=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300)
log "apt-get update"
as_root "${APT[@]}" update >&2 || die "apt-get update failed"
log "apt-get install --no-install-recommends ${PACKAGES[*]}"
as_root "${APT[@]}" install -y --no-install-recommends "${PACKAGES[@]}" >&2 || die "apt-get install ${PACKAGES[*]} failed"
"$CHROMIUM" --version >&2 || die "$CHROMIUM does not run after installing ${PACKAGES[*]}"
exit 0
