"""What Python MLflow 3 sees of LoggedModels, and the reference it is compared with.

Usage (tracking server and credentials from MLFLOW_* variables; JSON on stdout):
  mlflow3_models.py log <experiment> <model.onnx> <inputs.f32> <metadata.json>
      logs the file with mlflow.onnx.log_model (our signature, the input example read from
      inputs.f32 as float32 [1, 3, 128, 32], the metadata) and describes the LoggedModel
  mlflow3_models.py show <model_id>
      describes a LoggedModel: its info, its files, its MLmodel parsed, the text of its other files
  mlflow3_models.py search <experiment> <name>
      mlflow.search_logged_models in the experiment, filtered on the name
"""
import contextlib
import json
import os
import sys
import tempfile

import mlflow
import mlflow.onnx
import numpy as np
import onnx
import yaml
from mlflow import MlflowClient
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

TEXT_FILES = ["requirements.txt", "conda.yaml", "python_env.yaml", "input_example.json", "serving_input_example.json"]


def describe(model_id):
    client = MlflowClient()
    model = client.get_logged_model(model_id)
    files = sorted(f.path for f in client.list_logged_model_artifacts(model_id))
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(f"models:/{model_id}", dst_path=tmp)
        with open(os.path.join(local, "MLmodel")) as f:
            mlmodel = yaml.safe_load(f)
        texts = {}
        for name in TEXT_FILES:
            path = os.path.join(local, name)
            if os.path.exists(path):
                with open(path) as f:
                    texts[name] = f.read()
    return {
        "model_id": model.model_id,
        "name": model.name,
        "status": str(model.status),
        "source_run_id": model.source_run_id,
        "artifact_location": model.artifact_location,
        "params": model.params,
        "metrics": {m.key: m.value for m in model.metrics or []},
        "tags": model.tags,
        "files": files,
        "mlmodel": mlmodel,
        "texts": texts,
    }


def log(experiment, onnx_path, inputs_path, metadata_path):
    mlflow.set_experiment(experiment)
    x = np.fromfile(inputs_path, dtype="<f4").reshape(1, 3, 128, 32)
    with open(metadata_path) as f:
        metadata = json.load(f)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, 128, 32), "mel_spectrogram")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 2), "positions"), TensorSpec(np.dtype(np.float32), (-1, 2), "uncertainties")]),
    )
    with mlflow.start_run():
        # save_as_external_data left at its default (True): the weights go to a .data file beside
        # model.onnx, as the pipeline stores and registers its models.
        info = mlflow.onnx.log_model(
            onnx.load(onnx_path),
            name="model",
            signature=signature,
            input_example={"mel_spectrogram": x},
            metadata=metadata,
        )
    return describe(info.model_id)


def search(experiment, name):
    experiment_id = MlflowClient().get_experiment_by_name(experiment).experiment_id
    models = mlflow.search_logged_models(experiment_ids=[experiment_id], filter_string=f"name = '{name}'", output_format="list")
    return [{"model_id": m.model_id, "name": m.name, "status": str(m.status), "source_run_id": m.source_run_id} for m in models]


command, args = sys.argv[1], sys.argv[2:]
# MLflow prints to stdout too ("View run ..."): only the answer goes there.
with contextlib.redirect_stdout(sys.stderr):
    answer = {"log": log, "show": describe, "search": search}[command](*args)
print(json.dumps(answer))
