#!/usr/bin/env bash
# Prepares the Python venv that runs the test services and the MLflow load check:
#   - mlflow (server with SQLite backend and proxied artifacts; `--app-name basic-auth`),
#   - moto[server], a maintained S3-protocol server from PyPI (no MinIO server can be installed
#     from the registries this project reaches),
#   - onnx and onnxruntime (mlflow.onnx / mlflow.pyfunc load the registered model with them;
#     onnxruntime pinned to onnxruntime-node's version so both run the same kernels),
#   - cloudevents, the official CloudEvents Python SDK, as a client of our functions and workers.
# The venv lives at ${HEIMDALL_CACHE_DIR:-$HOME/.cache/heimdall}/services-venv, outside the repository.
#
# Idempotent and fast when the venv is in place (a marker holds the requirement list it was built
# with; changing the list rebuilds it). Progress on stderr, nothing on stdout. Concurrent runs are
# serialized by a flock on the cache dir.
#
# Environment:
#   HEIMDALL_CACHE_DIR    cache root (default $HOME/.cache/heimdall)
#   HEIMDALL_VENV_PYTHON  interpreter that creates the venv (default: python3 on PATH)
set -euo pipefail

REQUIREMENTS="mlflow[auth]==3.17.2 moto[server]==5.2.5 onnx==1.23.2 onnxruntime==1.30.0 numpy==2.4.6 cloudevents==2.2.0"

CACHE_DIR="${HEIMDALL_CACHE_DIR:-${HOME:?HOME is not set}/.cache/heimdall}"
VENV_DIR="$CACHE_DIR/services-venv"
MARKER="$VENV_DIR/.heimdall-requirements"
BASE_PYTHON="${HEIMDALL_VENV_PYTHON:-python3}"

log() { printf 'services/setup: %s\n' "$*" >&2; }
die() { printf 'services/setup: ERROR: %s\n' "$*" >&2; exit 1; }

venv_ok() {
  [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$REQUIREMENTS" ] &&
    [ -x "$VENV_DIR/bin/mlflow" ] && [ -x "$VENV_DIR/bin/moto_server" ] && "$VENV_DIR/bin/python" -c '' >/dev/null 2>&1
}

# Fast path: nothing to do, no lock taken.
venv_ok && exit 0

mkdir -p "$CACHE_DIR" || die "cannot create cache dir $CACHE_DIR"
command -v flock >/dev/null 2>&1 || die "flock (util-linux) is required"
exec 9>"$CACHE_DIR/services-setup.lock"
log "waiting for lock $CACHE_DIR/services-setup.lock"
flock 9 || die "cannot lock $CACHE_DIR/services-setup.lock"
venv_ok && exit 0 # built by whoever held the lock before us

command -v "$BASE_PYTHON" >/dev/null 2>&1 || die "$BASE_PYTHON not found (set HEIMDALL_VENV_PYTHON)"
"$BASE_PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 || die "$BASE_PYTHON lacks the venv/ensurepip modules (Debian: apt-get install python3-venv)"
if [ -e "$VENV_DIR" ]; then
  log "venv at $VENV_DIR is stale or incomplete (want: $REQUIREMENTS): re-creating"
  rm -rf "$VENV_DIR" || die "cannot remove $VENV_DIR"
fi
log "creating venv $VENV_DIR with $BASE_PYTHON ($("$BASE_PYTHON" --version 2>&1))"
"$BASE_PYTHON" -m venv "$VENV_DIR" >&2 || die "python -m venv $VENV_DIR failed"
log "pip install $REQUIREMENTS (a few minutes on a fresh machine)"
# shellcheck disable=SC2086  # word splitting of the requirement list is intended
"$VENV_DIR/bin/python" -m pip install --no-input $REQUIREMENTS >&2 || die "pip install $REQUIREMENTS into $VENV_DIR failed"
"$VENV_DIR/bin/python" -c 'import mlflow, mlflow.onnx, moto.server, onnx, onnxruntime, cloudevents.core.bindings.http, cloudevents.v1.http' >&2 ||
  die "venv $VENV_DIR cannot import mlflow, moto.server, onnx, onnxruntime, cloudevents after pip install"
# The marker is written last: a half-built venv is never taken for a complete one.
printf '%s' "$REQUIREMENTS" >"$MARKER.tmp" && mv -f "$MARKER.tmp" "$MARKER" || die "cannot write $MARKER"
log "venv ready: $("$VENV_DIR/bin/python" -c 'import mlflow, moto, onnx, onnxruntime; print("mlflow", mlflow.__version__, "moto", moto.__version__, "onnx", onnx.__version__, "onnxruntime", onnxruntime.__version__)' 2>&1)"
