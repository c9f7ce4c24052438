"""Our INT8 variant next to what onnxruntime's own quantizer makes of our fp32 model (services venv).

    $VENV/bin/python test/oracle/int8_compare.py FP32.onnx OURS_INT8.onnx OUT.onnx

quantize_dynamic(per_channel=True, op_types_to_quantize=['MatMul'], weight_type=QInt8) on FP32 writes
OUT; then, for each MatMul weight we quantized (`<w>.quantized`, `<w>.scale`, `<w>.zero_point`), compares
its bytes with onnxruntime's (`<w>_quantized`, `<w>_scale`, `<w>_zero_point`). Prints one JSON line:
    {"matrices": n, "identical": n, "differences": [{"name", "max_steps", "values"}], "missing": [names],
     "scales_identical": n, "zero_points_identical": n}
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

SUFFIX = ".quantized"


def initializers(path: str) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def main() -> None:
    fp32, ours_path, out = sys.argv[1:4]
    quantize_dynamic(fp32, out, per_channel=True, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
    ours, theirs = initializers(ours_path), initializers(out)
    report = {"matrices": 0, "identical": 0, "differences": [], "missing": [], "scales_identical": 0, "zero_points_identical": 0}
    for name, q in ours.items():
        if not name.endswith(SUFFIX):
            continue
        weight = name[: -len(SUFFIX)]
        report["matrices"] += 1
        if weight + "_quantized" not in theirs:
            report["missing"].append(weight)
            continue
        ref = theirs[weight + "_quantized"]
        if ref.dtype == q.dtype and ref.shape == q.shape and np.array_equal(ref, q):
            report["identical"] += 1
        else:
            steps = np.abs(ref.astype(np.int32) - q.astype(np.int32)) if ref.shape == q.shape else None
            report["differences"].append({"name": weight, "max_steps": int(steps.max()) if steps is not None else None, "values": int((steps != 0).sum()) if steps is not None else None})
        report["scales_identical"] += int(np.array_equal(theirs[weight + "_scale"], ours[weight + ".scale"]))
        report["zero_points_identical"] += int(np.array_equal(theirs[weight + "_zero_point"], ours[weight + ".zero_point"]))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
