"""Loads a registered model the way Heimdall's inference service does, with Python MLflow, and reports.

Usage: load_registered_model.py <models:/name@alias> <inputs.f32> <batch>
  inputs.f32: float32 little-endian, shape [batch, 3, 128, 32]
Prints JSON: outputs of mlflow.onnx.load_model (run with onnxruntime) and of mlflow.pyfunc.load_model,
the sha256 of the downloaded model.onnx, the MLmodel flavors and signature, and the version's
run (params, metric keys, artifact paths). Tracking server and credentials come from MLFLOW_* variables.
"""
import hashlib
import json
import os
import sys

import mlflow
import mlflow.onnx
import mlflow.pyfunc
import numpy as np
import onnxruntime as ort
from mlflow import MlflowClient
from mlflow.models import Model

uri, inputs_path, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
x = np.fromfile(inputs_path, dtype="<f4").reshape(batch, 3, 128, 32)

onnx_model = mlflow.onnx.load_model(uri)
session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
names = [o.name for o in session.get_outputs()]
onnx_outputs = dict(zip(names, session.run(None, {"mel_spectrogram": x})))

pyfunc_outputs = mlflow.pyfunc.load_model(uri).predict({"mel_spectrogram": x})

local = mlflow.artifacts.download_artifacts(uri)
with open(os.path.join(local, "model.onnx"), "rb") as f:
    sha256 = hashlib.sha256(f.read()).hexdigest()
mlmodel = Model.load(local)

name, alias = uri[len("models:/"):].split("@")
client = MlflowClient()
version = client.get_model_version_by_alias(name, alias)
run = client.get_run(version.run_id)


def artifacts(path=None):
    for item in client.list_artifacts(version.run_id, path):
        yield from artifacts(item.path) if item.is_dir else [item.path]


as_lists = lambda outputs: {k: np.asarray(v, dtype=np.float32).ravel().tolist() for k, v in outputs.items()}
print(json.dumps({
    "onnx": as_lists(onnx_outputs),
    "pyfunc": as_lists(pyfunc_outputs),
    "sha256": sha256,
    "flavors": sorted(mlmodel.flavors),
    "signature": mlmodel.signature.to_dict(),
    "version": {"version": version.version, "source": version.source, "tags": version.tags, "aliases": list(version.aliases)},
    "run": {"params": run.data.params, "metrics": sorted(run.data.metrics), "status": run.info.status, "artifacts": sorted(artifacts())},
}))
