"""Re-saves a fixture set's torch 1.13 checkpoints with torch 2.x (run with the venv's python).

    $VENV/bin/python test/oracle/resave.py DIR

Loads DIR/bare.pt and DIR/full.pth with torch.load(weights_only=True) and writes t2-bare.pt and
t2-full.pth with the current torch (zip layout with an ``archive/`` root, ``.format_version``,
``byteorder``, ``.data/serialization_id``, 64-byte aligned records), then adds them to
DIR/manifest.json (rewritten atomically). Idempotent. Progress on stderr, stdout stays empty.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

RESAVES = (
    # (source, target, layout)
    ("bare.pt", "t2-bare.pt", "bare"),
    ("full.pth", "t2-full.pth", "full"),
)


def log(msg: str) -> None:
    print(f"oracle/resave: {msg}", file=sys.stderr, flush=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: resave.py DIR")
    d = Path(sys.argv[1])
    manifest_path = d / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    major_minor = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    for src, dst, layout in RESAVES:
        t0 = time.monotonic()
        obj = torch.load(d / src, weights_only=True, map_location="cpu")
        tmp = d / f".{dst}.tmp-{os.getpid()}"
        try:
            # Saved through a file object: torch names the zip root "archive/" then. (Given a path,
            # torch 2.13 too names the root after the file's stem, e.g. "t2-bare/".)
            with open(tmp, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, d / dst)
        finally:
            if tmp.exists():
                tmp.unlink()
        del obj
        manifest["files"][dst] = {
            "layout": layout,
            "golden": manifest["files"][src]["golden"],
            "torch": major_minor,
            "bytes": (d / dst).stat().st_size,
            "resaved_from": src,
        }
        log(f"{src} -> {dst} with torch {torch.__version__} ({time.monotonic() - t0:.1f}s)")
    manifest["resave_torch_version"] = torch.__version__
    atomic_write_bytes(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
