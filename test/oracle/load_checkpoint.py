"""Loads a checkpoint with real torch, weights_only=True, and describes it as JSON (venv python).

    $VENV/bin/python test/oracle/load_checkpoint.py FILE

Proves that a checkpoint (e.g. one written by our TypeScript checkpoint writer) loads in real
PyTorch's safe loader. Prints one JSON object on stdout:
    {
      "torch_version": "2.13.0+cpu",
      "type": "dict" | "OrderedDict" | ...,           # type of the loaded top-level object
      "top_level": {key: type-name, ...} | null,      # for a dict: each top-level key
      "state_dict_key": "model_state_dict" | "state_dict" | null (bare) | missing when none found,
      "tensors": {name: {"dtype": "float32", "shape": [...], "sum": float64, "first": [<= 4 values]}}
    }
Non-finite numbers are written as the strings "NaN", "Infinity", "-Infinity" (JSON has no NaN).
Exits non-zero (with the torch error on stderr) when torch refuses the file.
"""

from __future__ import annotations

import json
import math
import sys

import torch


def num(x):
    if isinstance(x, bool):
        return x
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
    return x


def describe_tensor(t: torch.Tensor) -> dict:
    flat = t.detach().reshape(-1)
    if t.is_complex():
        total = complex(flat.to(torch.complex128).sum().item())
        s = [num(total.real), num(total.imag)]
        first = [[num(v.real), num(v.imag)] for v in flat[:4].tolist()]
    else:
        s = num(float(flat.to(torch.float64).sum().item())) if flat.numel() else 0.0
        first = [num(v) for v in flat[:4].tolist()]
    return {
        "dtype": str(t.dtype).removeprefix("torch."),
        "shape": list(t.shape),
        "sum": s,
        "first": first,
    }


def is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: load_checkpoint.py FILE")
    obj = torch.load(sys.argv[1], weights_only=True, map_location="cpu")
    out = {"torch_version": torch.__version__, "type": type(obj).__name__, "top_level": None}
    if isinstance(obj, dict):
        out["top_level"] = {str(k): type(v).__name__ for k, v in obj.items()}
    state = None
    if is_state_dict(obj):
        out["state_dict_key"] = None
        state = obj
    elif isinstance(obj, dict):
        for key in ("model_state_dict", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                out["state_dict_key"] = key
                state = obj[key]
                break
    out["tensors"] = (
        {str(k): describe_tensor(v) for k, v in state.items() if isinstance(v, torch.Tensor)}
        if state is not None
        else {}
    )
    print(json.dumps(out, allow_nan=False))


if __name__ == "__main__":
    main()
