"""torch.onnx.export of the same checkpoint, the anchor for `npm run bench:export`.

usage: /usr/bin/python3 torch_export.py CHECKPOINT OUT.onnx
Prints one JSON line: export seconds (torch.onnx.export alone) and the process's peak RSS.
"""
import json
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "oracle"))
from localization_net import LocalizationNet  # noqa: E402

checkpoint, out = sys.argv[1], sys.argv[2]
state = torch.load(checkpoint, map_location="cpu", weights_only=True)
dims = state["backbone.0.1.0.block.0.weight"].shape[0]
variant = {96: "tiny" if "backbone.0.5.9.block.0.weight" not in state else "small", 128: "base", 192: "large"}[dims]
hidden = lambda head: (state[f"{head}.0.weight"].shape[0], state[f"{head}.4.weight"].shape[0])
model = LocalizationNet(variant, position_hidden=hidden("position_head"), uncertainty_hidden=hidden("uncertainty_head"))
model.load_state_dict(state)
model.eval()
del state
started = time.perf_counter()
torch.onnx.export(
    model,
    torch.randn(1, 3, 128, 32),
    out,
    opset_version=14,
    input_names=["mel_spectrogram"],
    output_names=["positions", "uncertainties"],
    dynamic_axes={"mel_spectrogram": {0: "batch_size"}, "positions": {0: "batch_size"}, "uncertainties": {0: "batch_size"}},
)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "maxRssBytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
