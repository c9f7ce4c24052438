"""What the ONNX ecosystem's own tools make of a model (run with the services venv: onnx + onnxruntime).

    $SERVICES_VENV/bin/python test/oracle/onnx_tooling.py MODEL.onnx [QUANTIZED_OUT.onnx]

Prints one JSON line on stdout:
    {"bytes": n, "ops": {op_type: count}, "layout_nodes": [...],
     "quantized": {"bytes": n, "ops": {...}, "seconds": s, "peak_rss_bytes": n}}   (with QUANTIZED_OUT)

`layout_nodes` names every Transpose, Identity or Cast node that reads an initializer (a weight not
stored as its consumer reads it). With QUANTIZED_OUT the model is quantized as issue 14's INT8
anchor is: onnxruntime.quantization.quantize_dynamic, per-channel int8 weights for MatMul and Gemm,
dynamic quantization of their activations; the file is left at QUANTIZED_OUT for the caller.
"""

from __future__ import annotations

import collections
import json
import os
import resource
import sys
import time

import onnx

LAYOUT_OPS = ("Transpose", "Identity", "Cast")


def model_bytes(path: str) -> int:
    data = f"{path}.data"
    return os.path.getsize(path) + (os.path.getsize(data) if os.path.exists(data) else 0)


def describe(path: str) -> dict:
    graph = onnx.load(path, load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return {
        "bytes": model_bytes(path),
        "ops": dict(sorted(collections.Counter(n.op_type for n in graph.node).items())),
        "layout_nodes": [
            f"{n.name} ({n.op_type}) reads {name}"
            for n in graph.node
            if n.op_type in LAYOUT_OPS and n.domain in ("", "ai.onnx")
            for name in n.input
            if name in initializers
        ],
    }


def quantize(path: str, out: str) -> dict:
    from onnxruntime.quantization import quantize_dynamic

    started = time.perf_counter()
    quantize_dynamic(path, out, per_channel=True, op_types_to_quantize=["MatMul", "Gemm"])
    seconds = time.perf_counter() - started
    summary = describe(out)
    return {
        "bytes": summary["bytes"],
        "ops": summary["ops"],
        "seconds": seconds,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: onnx_tooling.py MODEL.onnx [QUANTIZED_OUT.onnx]")
    result = describe(sys.argv[1])
    if len(sys.argv) == 3:
        result["quantized"] = quantize(sys.argv[1], sys.argv[2])
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
