"""Runs the real onnx.checker over ONNX files (run with the venv's python).

    $VENV/bin/python test/oracle/check_onnx.py FILE...

For each FILE prints one JSON line on stdout:
    {"file": ..., "ok": bool, "error": str|null, "opset": n|null, "ir_version": n|null}
The check is path-based (onnx.checker.check_model(path, full_check=True)), so models with external
data and models past 2 GiB work. Exits 0 even when a check fails: the caller asserts.
"""

from __future__ import annotations

import json
import sys

import onnx


def describe(path: str) -> dict:
    result = {"file": path, "ok": False, "error": None, "opset": None, "ir_version": None}
    try:
        # The proto itself, without external tensor data: enough for opset and IR version.
        model = onnx.load(path, load_external_data=False)
        result["ir_version"] = int(model.ir_version)
        for imp in model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                result["opset"] = int(imp.version)
    except Exception as e:  # noqa: BLE001 - reported, not raised
        result["error"] = f"load: {type(e).__name__}: {e}"
    try:
        onnx.checker.check_model(path, full_check=True)
        result["ok"] = result["error"] is None
    except Exception as e:  # noqa: BLE001
        msg = f"{type(e).__name__}: {e}"
        result["error"] = msg if result["error"] is None else f"{result['error']}; check: {msg}"
    return result


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: check_onnx.py FILE...")
    for path in sys.argv[1:]:
        print(json.dumps(describe(path)), flush=True)


if __name__ == "__main__":
    main()
