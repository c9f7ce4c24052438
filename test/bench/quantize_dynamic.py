"""onnxruntime's own quantize_dynamic on a model, timed (the INT8 anchor of test/bench/int8.bench.ts).

    $SERVICES_VENV/bin/python quantize_dynamic.py IN.onnx OUT.onnx

Per-channel int8 weights for MatMul and Gemm (issue 14's recipe). Prints one JSON line:
{"seconds", "maxRssBytes", "bytes"}.
"""

import json
import os
import resource
import sys
import time

from onnxruntime.quantization import QuantType, quantize_dynamic

source, out = sys.argv[1], sys.argv[2]
started = time.perf_counter()
quantize_dynamic(source, out, per_channel=True, op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "maxRssBytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "bytes": os.path.getsize(out)}))
