#!/usr/bin/env bash
# Prepares the two Python interpreters the tests use as their numeric oracle.
#
#   1. Debian's /usr/bin/python3 with python3-torch (1.13), python3-torchvision and python3-onnx:
#      builds LocalizationNet and writes the fixtures (test/oracle/generate.py).
#   2. A venv at ${HEIMDALL_CACHE_DIR:-$HOME/.cache/heimdall}/venv with torch 2.x, onnx and numpy:
#      re-saves checkpoints with torch 2 (resave.py), runs onnx.checker (check_onnx.py) and loads
#      TS-written checkpoints with weights_only=True (load_checkpoint.py).
#
# Idempotent and fast (well under a second) when everything is already in place. Progress goes to
# stderr; nothing is printed on stdout. Exits non-zero with a message naming what failed.
# Safe to run concurrently (a flock on the cache dir serializes the slow path).
#
# Environment:
#   HEIMDALL_CACHE_DIR    cache root (default $HOME/.cache/heimdall)
#   HEIMDALL_VENV_PYTHON  interpreter that creates the venv (default: python3 on PATH)
#   HEIMDALL_SKIP_OPENBLAS=1  do not install OpenBLAS (see SPEEDUP_PACKAGES)
set -euo pipefail

VENV_REQUIREMENTS="torch==2.13.0 onnx numpy"
DEBIAN_PACKAGES=(python3-torch python3-torchvision python3-onnx python3-venv)
# Debian's torch links the system libblas.so.3; the default is the netlib reference BLAS, which makes
# the fixture generator ~10x slower (ConvNeXt-large: minutes instead of seconds). OpenBLAS takes over
# libblas.so.3 through update-alternatives. Only a speed-up: a failed install is a warning.
SPEEDUP_PACKAGES=(libopenblas0-pthread)
DEBIAN_PYTHON=/usr/bin/python3

CACHE_DIR="${HEIMDALL_CACHE_DIR:-${HOME:?HOME is not set}/.cache/heimdall}"
VENV_DIR="$CACHE_DIR/venv"
MARKER="$VENV_DIR/.heimdall-requirements"
BASE_PYTHON="${HEIMDALL_VENV_PYTHON:-python3}"

log() { printf 'oracle/setup: %s\n' "$*" >&2; }
die() { printf 'oracle/setup: ERROR: %s\n' "$*" >&2; exit 1; }

# Fast check (importing torch takes seconds): the modules can be found.
debian_ok() {
  [ -x "$DEBIAN_PYTHON" ] && PYTHONNOUSERSITE=1 "$DEBIAN_PYTHON" -c '
import importlib.util, sys
sys.exit(0 if all(importlib.util.find_spec(m) for m in ("torch", "torchvision")) else 1)' >/dev/null 2>&1
}
# Full check after an install.
debian_imports() {
  PYTHONNOUSERSITE=1 "$DEBIAN_PYTHON" -c 'import torch, torchvision' >/dev/null 2>&1
}

fast_blas_ok() {
  compgen -G '/usr/lib/*/openblas*/libblas.so.3' >/dev/null || [ "${HEIMDALL_SKIP_OPENBLAS:-}" = 1 ] ||
    [ -f "$CACHE_DIR/openblas-unavailable" ]
}

venv_ok() {
  [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$VENV_REQUIREMENTS" ] &&
    [ -x "$VENV_DIR/bin/python" ] && "$VENV_DIR/bin/python" -c '' >/dev/null 2>&1
}

# Fast path: nothing to do, no lock taken.
if debian_ok && fast_blas_ok && venv_ok; then
  exit 0
fi

mkdir -p "$CACHE_DIR" || die "cannot create cache dir $CACHE_DIR"
command -v flock >/dev/null 2>&1 || die "flock (util-linux) is required"
exec 9>"$CACHE_DIR/setup.lock"
log "waiting for lock $CACHE_DIR/setup.lock"
flock 9 || die "cannot lock $CACHE_DIR/setup.lock"

as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    die "need root (or passwordless sudo) to run: $*"
  fi
}

apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* by hand (Debian packages)"
  log "apt-get update"
  as_root apt-get update >&2 || die "apt-get update failed"
  log "apt-get install -y $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >&2 || die "apt-get install $* failed"
}

# 1. Debian interpreter with torch 1.13 + torchvision.
if ! debian_ok || ! debian_imports; then
  log "$DEBIAN_PYTHON cannot import torch/torchvision: installing ${DEBIAN_PACKAGES[*]}"
  apt_install "${DEBIAN_PACKAGES[@]}"
  debian_imports || die "$DEBIAN_PYTHON still cannot import torch, torchvision after installing ${DEBIAN_PACKAGES[*]}"
  log "debian python ready: $("$DEBIAN_PYTHON" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)' 2>&1)"
fi

if ! fast_blas_ok; then
  log "no OpenBLAS: installing ${SPEEDUP_PACKAGES[*]} (reference BLAS makes the generator ~10x slower)"
  if ! ( apt_install "${SPEEDUP_PACKAGES[@]}" ); then
    log "WARNING: could not install ${SPEEDUP_PACKAGES[*]}; fixtures will be slow to generate (not retried; remove $CACHE_DIR/openblas-unavailable to retry)"
    touch "$CACHE_DIR/openblas-unavailable"
  fi
fi

# 2. venv with torch 2.x + onnx + numpy (never torchvision).
if ! venv_ok; then
  command -v "$BASE_PYTHON" >/dev/null 2>&1 || die "$BASE_PYTHON not found (set HEIMDALL_VENV_PYTHON)"
  if ! "$BASE_PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    if [ "$(command -v "$BASE_PYTHON")" = "$DEBIAN_PYTHON" ] || [ "$(readlink -f "$(command -v "$BASE_PYTHON")")" = "$(readlink -f "$DEBIAN_PYTHON")" ]; then
      log "$BASE_PYTHON lacks venv/ensurepip: installing python3-venv"
      apt_install python3-venv
    else
      die "$BASE_PYTHON lacks the venv/ensurepip modules"
    fi
  fi
  if [ -e "$VENV_DIR" ]; then
    log "venv at $VENV_DIR is stale or incomplete (want: $VENV_REQUIREMENTS): re-creating"
    rm -rf "$VENV_DIR" || die "cannot remove $VENV_DIR"
  fi
  log "creating venv $VENV_DIR with $BASE_PYTHON ($("$BASE_PYTHON" --version 2>&1))"
  "$BASE_PYTHON" -m venv "$VENV_DIR" >&2 || die "python -m venv $VENV_DIR failed"
  log "pip install $VENV_REQUIREMENTS"
  # shellcheck disable=SC2086  # word splitting of the requirement list is intended
  "$VENV_DIR/bin/python" -m pip install --no-input $VENV_REQUIREMENTS >&2 ||
    die "pip install $VENV_REQUIREMENTS into $VENV_DIR failed"
  "$VENV_DIR/bin/python" -c 'import torch, onnx, numpy' >&2 ||
    die "venv $VENV_DIR cannot import torch, onnx, numpy after pip install"
  # The marker is written last: a half-built venv is never taken for a complete one.
  printf '%s' "$VENV_REQUIREMENTS" >"$MARKER.tmp" && mv -f "$MARKER.tmp" "$MARKER" || die "cannot write $MARKER"
  log "venv ready: $("$VENV_DIR/bin/python" -c 'import torch, onnx, numpy; print("torch", torch.__version__, "onnx", onnx.__version__, "numpy", numpy.__version__)' 2>&1)"
fi

exit 0
