#!/usr/bin/env bash
# Prepares the venv of LocalStack's S3, the test server that checks upload checksums
# (x-amz-checksum-sha256, Content-MD5) against the bytes it receives, which moto does not:
# test/integration/s3-options.test.ts runs the corrupted-upload checks on it. Every package is
# pinned in localstack-requirements.txt. The venv lives at
# ${HEIMDALL_CACHE_DIR:-$HOME/.cache/heimdall}/localstack-venv, outside the repository.
#
# Idempotent and fast when the venv is in place (a marker holds the sha256 of the requirements it
# was built from; changing them rebuilds it). Progress on stderr, nothing on stdout. Concurrent
# runs are serialized by a flock on the cache dir.
#
# Environment:
#   HEIMDALL_CACHE_DIR    cache root (default $HOME/.cache/heimdall)
#   HEIMDALL_VENV_PYTHON  interpreter that creates the venv (default: python3 on PATH; 3.10 or 3.11)
set -euo pipefail

REQUIREMENTS_FILE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/localstack-requirements.txt"
CACHE_DIR="${HEIMDALL_CACHE_DIR:-${HOME:?HOME is not set}/.cache/heimdall}"
VENV_DIR="$CACHE_DIR/localstack-venv"
MARKER="$VENV_DIR/.heimdall-requirements"
BASE_PYTHON="${HEIMDALL_VENV_PYTHON:-python3}"

log() { printf 'localstack-setup: %s\n' "$*" >&2; }
die() { printf 'localstack-setup: ERROR: %s\n' "$*" >&2; exit 1; }

[ -f "$REQUIREMENTS_FILE" ] || die "missing $REQUIREMENTS_FILE"
WANT="$(sha256sum "$REQUIREMENTS_FILE" | cut -d' ' -f1)"

venv_ok() {
  [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$WANT" ] && "$VENV_DIR/bin/python" -c '' >/dev/null 2>&1
}

# Fast path: nothing to do, no lock taken.
venv_ok && exit 0

mkdir -p "$CACHE_DIR" || die "cannot create cache dir $CACHE_DIR"
command -v flock >/dev/null 2>&1 || die "flock (util-linux) is required"
exec 9>"$CACHE_DIR/localstack-setup.lock"
log "waiting for lock $CACHE_DIR/localstack-setup.lock"
flock 9 || die "cannot lock $CACHE_DIR/localstack-setup.lock"
venv_ok && exit 0 # built by whoever held the lock before us

command -v "$BASE_PYTHON" >/dev/null 2>&1 || die "$BASE_PYTHON not found (set HEIMDALL_VENV_PYTHON)"
"$BASE_PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 || die "$BASE_PYTHON lacks the venv/ensurepip modules (Debian: apt-get install python3-venv)"
if [ -e "$VENV_DIR" ]; then
  log "venv at $VENV_DIR is stale or incomplete: re-creating"
  rm -rf "$VENV_DIR" || die "cannot remove $VENV_DIR"
fi
log "creating venv $VENV_DIR with $BASE_PYTHON ($("$BASE_PYTHON" --version 2>&1))"
"$BASE_PYTHON" -m venv "$VENV_DIR" >&2 || die "python -m venv $VENV_DIR failed"
log "pip install -r $REQUIREMENTS_FILE (a minute on a fresh machine)"
"$VENV_DIR/bin/python" -m pip install --no-input --no-deps -r "$REQUIREMENTS_FILE" >&2 || die "pip install -r $REQUIREMENTS_FILE into $VENV_DIR failed"
"$VENV_DIR/bin/python" -c 'import localstack.aws.components, localstack.services.s3.provider' >&2 ||
  die "venv $VENV_DIR cannot import LocalStack's S3 provider after pip install"
# The marker is written last: a half-built venv is never taken for a complete one.
printf '%s' "$WANT" >"$MARKER.tmp" && mv -f "$MARKER.tmp" "$MARKER" || die "cannot write $MARKER"
log "venv ready: localstack-core $("$VENV_DIR/bin/python" -c 'import importlib.metadata as m; print(m.version("localstack-core"))' 2>&1)"
