#!/usr/bin/python3
"""Writes one deterministic fixture set for the exporter tests (run with Debian's torch 1.13).

    /usr/bin/python3 test/oracle/generate.py --variant tiny|small|base|large --out DIR [--seed N]

Builds LocalizationNet, randomizes every parameter and buffer so that every part of the network
changes the outputs, takes one real Adam step (so the optimizer state is realistic), then writes
into DIR (built in a temp dir beside it and renamed, so a half-written set is never seen):

    bare.pt                     torch.save(state_dict)
    full.pth                    {model_state_dict, optimizer_state_dict, scheduler_state_dict,
                                 epoch, config (uncertainty range 0.05/0.8), metrics}
    lightning.ckpt              Lightning 2.x layout: state_dict with 'model.' prefix,
                                hyper_parameters as lightning.fabric.utilities.data.AttributeDict
    model.safetensors           all state_dict entries, __metadata__ with the uncertainty range
    golden.safetensors          inputs [16,3,128,32], positions/uncertainties for range 0.05/0.8
    golden-default.safetensors  same inputs and weights, default range 0.01/1.0
    manifest.json

Progress goes to stderr; stdout stays empty.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import struct
import sys
import time
import types
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.dont_write_bytecode = True  # no __pycache__ inside the repository
sys.path.insert(0, str(Path(__file__).resolve().parent))
from localization_net import (  # noqa: E402
    DEFAULT_UNCERTAINTY_MAX,
    DEFAULT_UNCERTAINTY_MIN,
    VARIANTS,
    LocalizationNet,
    stage_dims_and_depths,
)

CONFIG_RANGE = (0.05, 0.8)
DEFAULT_RANGE = (DEFAULT_UNCERTAINTY_MIN, DEFAULT_UNCERTAINTY_MAX)
POSITION_HIDDEN = (256, 128)
UNCERTAINTY_HIDDEN = (192, 96)
NUM_GOLDEN = 16
INPUT_SHAPE = (3, 128, 32)
# Where the uncertainty head's two output columns are centred (after softplus): column 0 on the
# default minimum, column 1 on the default maximum, so about half of each column clamps in the
# default range and the other half exercises softplus; the config range (0.05, 0.8) then clamps
# both columns, at its minimum and at its maximum.
UNCERTAINTY_CENTRES = (DEFAULT_RANGE[0], DEFAULT_RANGE[1])

T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"oracle/generate [{time.monotonic() - T0:6.1f}s]: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Parameter randomization


@torch.no_grad()
def randomize(model: nn.Module, gen: torch.Generator) -> None:
    """Every parameter and buffer gets a non-trivial random value (deterministic given gen).

    Weights keep the magnitudes the model is built with (torchvision's ConvNeXt init: truncated
    normal, std 0.02, for convolutions and Linears; torch's default U(+-1/sqrt(fan_in)) for the heads'
    Linears), so activations and outputs have a trained model's scale (outputs O(0.1-1)). Hotter
    weights blow the residual stream up and float32 rounding alone (torch.onnx.export's graph
    included) then exceeds the 1e-6 parity bound. Norms, biases and layer_scale are randomized so
    that every one of them changes the output.
    """
    seen = set()
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            m.weight.normal_(0.0, 0.02, generator=gen).clamp_(-0.04, 0.04)
            if m.bias is not None:
                m.bias.normal_(0.0, 0.02, generator=gen)
        elif isinstance(m, nn.Linear):
            if name.startswith("backbone"):
                m.weight.normal_(0.0, 0.02, generator=gen).clamp_(-0.04, 0.04)
            else:
                bound = m.in_features ** -0.5
                m.weight.uniform_(-bound, bound, generator=gen)
            if m.bias is not None:
                m.bias.normal_(0.0, 0.02, generator=gen)
        elif isinstance(m, nn.LayerNorm):  # includes torchvision's LayerNorm2d
            m.weight.uniform_(0.8, 1.2, generator=gen)
            m.bias.uniform_(-0.1, 0.1, generator=gen)
        elif isinstance(m, nn.BatchNorm1d):
            m.weight.uniform_(0.6, 1.4, generator=gen)
            m.bias.normal_(0.0, 0.1, generator=gen)
            m.running_mean.normal_(0.0, 0.5, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
            m.num_batches_tracked.fill_(1234)
        else:
            continue
        for pname, _ in m.named_parameters(recurse=False):
            seen.add(f"{name}.{pname}" if name else pname)
    for name, p in model.named_parameters():
        if name.endswith("layer_scale"):
            # torchvision initialises layer_scale to 1e-6: every block would vanish.
            p.uniform_(0.1, 0.5, generator=gen)
            seen.add(name)
    missed = [n for n, _ in model.named_parameters() if n not in seen]
    if missed:
        raise RuntimeError(f"parameters left un-randomized: {missed[:10]}")


def adam_step(model: LocalizationNet, gen: torch.Generator, lr: float):
    """One real optimizer step on a dummy loss: exp_avg/exp_avg_sq exist for every parameter.

    eval() mode: BatchNorm uses (and keeps) its running statistics, dropout is off.
    """
    model.eval()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.1)
    x = torch.randn(2, *INPUT_SHAPE, generator=gen)
    f = model.features(x)
    # Pre-clamp softplus so that the uncertainty head gets a gradient even where a clamp would bind.
    loss = model.position_head(f).pow(2).mean() + F.softplus(model.uncertainty_head(f)).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    missing = [n for n, p in model.named_parameters() if p not in optimizer.state]
    if missing:
        raise RuntimeError(f"no Adam state for {missing[:10]}")
    for _ in range(12):  # epoch 12: the learning rate has decayed once
        scheduler.step()
    return optimizer, scheduler


@torch.no_grad()
def centre_uncertainty_head(model: LocalizationNet, features: torch.Tensor) -> None:
    """Shift the last Linear's bias of the uncertainty head so each output column's median, on the
    golden inputs, lands on UNCERTAINTY_CENTRES after softplus. Only a shift: scaling the weights
    up would amplify float32 rounding of the whole backbone into the outputs."""
    last = model.uncertainty_head[8]
    z = model.uncertainty_head[:8](features) @ last.weight.t()  # [N, 2], no bias
    for j, centre in enumerate(UNCERTAINTY_CENTRES):
        if not z[:, j].max() - z[:, j].min() > 1e-4:
            raise RuntimeError(f"uncertainty column {j} does not vary over the inputs")
        inverse_softplus = math.log(math.expm1(centre))
        last.bias[j] = inverse_softplus - z[:, j].median()


@torch.no_grad()
def heads(model: LocalizationNet, features: torch.Tensor, umin: float, umax: float):
    """The rest of LocalizationNet.forward after the backbone (the backbone runs once for both ranges)."""
    positions = model.position_head(features)
    uncertainties = torch.clamp(F.softplus(model.uncertainty_head(features)), min=umin, max=umax)
    return positions.contiguous(), uncertainties.contiguous()


def clamp_stats(u: torch.Tensor, umin: float, umax: float) -> dict:
    # Clamped values equal the bound exactly (float32 of the python float).
    lo = torch.tensor(umin, dtype=torch.float32)
    hi = torch.tensor(umax, dtype=torch.float32)
    return {
        "at_min": int((u == lo).sum()),
        "at_max": int((u == hi).sum()),
        "inside": int(((u > lo) & (u < hi)).sum()),
        "at_min_per_column": [int(c) for c in (u == lo).sum(0)],
        "at_max_per_column": [int(c) for c in (u == hi).sum(0)],
    }


# --------------------------------------------------------------------------------------------
# Writers

SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.float64: "F64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def write_safetensors(path: Path, tensors, metadata=None) -> None:
    """Hand-written safetensors: u64 LE header length, JSON header padded with spaces to a multiple
    of 8, then the tensors back to back in header order. ``tensors`` is a list of (name, tensor)."""
    if sys.byteorder != "little":
        raise RuntimeError("safetensors writer assumes a little-endian host")
    header = OrderedDict()
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    prepared = []
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        if t.dtype not in SAFETENSORS_DTYPES:
            raise TypeError(f"{name}: unsupported dtype {t.dtype}")
        nbytes = t.numel() * t.element_size()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
        prepared.append(t)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * ((-len(raw)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in prepared:
            if t.numel() == 0:
                continue
            if t.dtype == torch.bfloat16:
                f.write(t.view(torch.int16).numpy().tobytes())
            else:
                f.write(memoryview(t.numpy()).cast("B"))
        f.flush()
        os.fsync(f.fileno())


def lightning_attribute_dict():
    """A dict subclass that pickles as lightning.fabric.utilities.data.AttributeDict (what
    Lightning's save_hyperparameters() stores), without needing Lightning installed."""
    try:  # the real one, if Lightning happens to be installed
        from lightning.fabric.utilities.data import AttributeDict  # type: ignore

        return AttributeDict
    except Exception:
        pass

    class AttributeDict(dict):
        def __getattr__(self, key):
            try:
                return self[key]
            except KeyError as e:
                raise AttributeError(key) from e

        def __setattr__(self, key, val):
            self[key] = val

    module_name = "lightning.fabric.utilities.data"
    AttributeDict.__module__ = module_name
    AttributeDict.__qualname__ = "AttributeDict"
    AttributeDict.__name__ = "AttributeDict"
    parts = module_name.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        mod = sys.modules.get(name)
        if mod is None:
            mod = types.ModuleType(name)
            sys.modules[name] = mod
        if i > 1:
            setattr(sys.modules[".".join(parts[: i - 1])], parts[i - 1], mod)
    setattr(sys.modules[module_name], "AttributeDict", AttributeDict)
    return AttributeDict


# --------------------------------------------------------------------------------------------


def generate(variant: str, out: Path, seed: int) -> None:
    # Debian's torch starts with one OpenMP thread; use the cores this process may run on.
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    lr = 1e-3
    config = {
        "backbone_size": variant,
        "uncertainty_min": CONFIG_RANGE[0],
        "uncertainty_max": CONFIG_RANGE[1],
        "learning_rate": lr,
        "weight_decay": 0.0,
        "batch_size": 32,
        "epochs": 50,
        "dropout": 0.2,
        "n_mels": 128,
        "n_frames": 32,
        "num_receivers": 3,
        "seed": seed,
    }
    metrics = {"val_loss": 0.123, "train_loss": 0.2345, "val_position_rmse_km": 1.75, "best_epoch": 11}

    log(f"building LocalizationNet({variant}) with torch {torch.__version__}, {torch.get_num_threads()} threads")
    # torchvision's ConvNeXt init calls nn.init.trunc_normal_ on every conv/linear weight, which is
    # slow on CPU (~17 s for large) and pointless here: randomize() overwrites every value.
    trunc_normal = nn.init.trunc_normal_
    nn.init.trunc_normal_ = lambda tensor, *args, **kwargs: tensor
    try:
        model = LocalizationNet(
            variant,
            uncertainty_min=CONFIG_RANGE[0],
            uncertainty_max=CONFIG_RANGE[1],
            position_hidden=POSITION_HIDDEN,
            uncertainty_hidden=UNCERTAINTY_HIDDEN,
        )
    finally:
        nn.init.trunc_normal_ = trunc_normal
    log("built; randomizing")
    randomize(model, gen)
    inputs = torch.randn(NUM_GOLDEN, *INPUT_SHAPE, generator=gen, dtype=torch.float32)
    log("randomized; taking one Adam step")
    optimizer, scheduler = adam_step(model, gen, lr)
    model.eval()

    log("computing golden outputs")
    with torch.no_grad():
        features = model.features(inputs)
    centre_uncertainty_head(model, features)
    positions, uncertainties = heads(model, features, *CONFIG_RANGE)
    positions_d, uncertainties_d = heads(model, features, *DEFAULT_RANGE)
    # Cross-check the split computation against the module's own forward on a few samples.
    with torch.no_grad():
        for rng, (p_ref, u_ref) in ((CONFIG_RANGE, (positions, uncertainties)), (DEFAULT_RANGE, (positions_d, uncertainties_d))):
            model.uncertainty_min, model.uncertainty_max = rng
            p_chk, u_chk = model(inputs[:2])
            if not (torch.allclose(p_chk, p_ref[:2], rtol=1e-4, atol=1e-5) and torch.allclose(u_chk, u_ref[:2], rtol=1e-4, atol=1e-5)):
                raise RuntimeError(f"forward() disagrees with the split computation for range {rng}")
    model.uncertainty_min, model.uncertainty_max = CONFIG_RANGE
    for t, what in ((positions, "positions"), (uncertainties, "uncertainties"), (uncertainties_d, "uncertainties (default range)")):
        if not torch.isfinite(t).all():
            raise RuntimeError(f"non-finite {what}")
    stats = {
        "config": clamp_stats(uncertainties, *CONFIG_RANGE),
        "default": clamp_stats(uncertainties_d, *DEFAULT_RANGE),
    }
    for key, st in stats.items():
        if st["at_min"] < 1 or st["at_max"] < 1:
            raise AssertionError(f"clamp does not bind both ways ({key} range): {st}")
    if stats["default"]["inside"] < 8:
        raise AssertionError(f"too few uncertainties exercise softplus in the default range: {stats['default']}")
    if positions.std(0).min().item() < 1e-3:
        raise AssertionError("positions do not vary over the inputs")
    log(
        f"positions |max| {positions.abs().max().item():.4g}, std {positions.std().item():.4g}; "
        f"clamp 0.05/0.8 min/in/max {stats['config']['at_min']}/{stats['config']['inside']}/{stats['config']['at_max']}; "
        f"0.01/1.0 {stats['default']['at_min']}/{stats['default']['inside']}/{stats['default']['at_max']}"
    )

    sd = model.state_dict()
    dims, depths = stage_dims_and_depths(model)
    num_params = sum(p.numel() for p in model.parameters())

    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        files = OrderedDict()

        def record(name: str, layout: str, golden: str) -> None:
            files[name] = {
                "layout": layout,
                "golden": golden,
                "torch": "1.13",
                "bytes": (tmp / name).stat().st_size,
            }
            log(f"wrote {name} ({files[name]['bytes'] / 1e6:.1f} MB)")

        write_safetensors(
            tmp / "golden.safetensors",
            [("inputs", inputs), ("positions", positions), ("uncertainties", uncertainties)],
            {"uncertainty_min": CONFIG_RANGE[0], "uncertainty_max": CONFIG_RANGE[1], "backbone_size": variant},
        )
        write_safetensors(
            tmp / "golden-default.safetensors",
            [("inputs", inputs), ("positions", positions_d), ("uncertainties", uncertainties_d)],
            {"uncertainty_min": DEFAULT_RANGE[0], "uncertainty_max": DEFAULT_RANGE[1], "backbone_size": variant},
        )

        torch.save(sd, tmp / "bare.pt")
        record("bare.pt", "bare", "golden-default.safetensors")

        optimizer_state = optimizer.state_dict()
        scheduler_state = scheduler.state_dict()
        torch.save(
            {
                "model_state_dict": sd,
                "optimizer_state_dict": optimizer_state,
                "scheduler_state_dict": scheduler_state,
                "epoch": 12,
                "config": config,
                "metrics": metrics,
            },
            tmp / "full.pth",
        )
        record("full.pth", "full", "golden.safetensors")

        AttributeDict = lightning_attribute_dict()
        hparams = AttributeDict(config)
        monitor_key = (
            "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0, "
            "'every_n_epochs': 1, 'train_time_interval': None}"
        )
        torch.save(
            {
                "epoch": 12,
                "global_step": 1200,
                "pytorch-lightning_version": "2.4.0",
                "state_dict": OrderedDict(("model." + k, v) for k, v in sd.items()),
                "loops": {
                    "fit_loop": {
                        "state_dict": {},
                        "epoch_loop.state_dict": {"_batches_that_stepped": 1200},
                        "epoch_progress": {
                            "total": {"ready": 13, "started": 13, "processed": 13, "completed": 12},
                            "current": {"ready": 13, "started": 13, "processed": 13, "completed": 12},
                        },
                    },
                    "validate_loop": {"state_dict": {}},
                },
                "callbacks": {
                    monitor_key: {
                        "monitor": "val_loss",
                        "best_model_score": torch.tensor(0.123),
                        "best_model_path": "/checkpoints/epoch=11-val_loss=0.123.ckpt",
                        "current_score": torch.tensor(0.125),
                        "dirpath": "/checkpoints",
                        "best_k_models": {"/checkpoints/epoch=11-val_loss=0.123.ckpt": torch.tensor(0.123)},
                        "kth_best_model_path": "/checkpoints/epoch=11-val_loss=0.123.ckpt",
                        "kth_value": torch.tensor(0.123),
                        "last_model_path": "",
                    }
                },
                "optimizer_states": [optimizer_state],
                "lr_schedulers": [scheduler_state],
                "hparams_name": "kwargs",
                "hyper_parameters": hparams,
            },
            tmp / "lightning.ckpt",
        )
        record("lightning.ckpt", "lightning", "golden.safetensors")

        write_safetensors(
            tmp / "model.safetensors",
            list(sd.items()),
            {"uncertainty_min": CONFIG_RANGE[0], "uncertainty_max": CONFIG_RANGE[1], "backbone_size": variant},
        )
        record("model.safetensors", "safetensors", "golden.safetensors")

        manifest = {
            "variant": variant,
            "seed": seed,
            "torch_version": torch.__version__,
            "dims": dims,
            "depths": depths,
            "feature_dim": model.feature_dim,
            "position_hidden": list(POSITION_HIDDEN),
            "uncertainty_hidden": list(UNCERTAINTY_HIDDEN),
            "config_range": list(CONFIG_RANGE),
            "default_range": list(DEFAULT_RANGE),
            "num_parameters": num_params,
            "num_state_dict_entries": len(sd),
            "input_shape": [NUM_GOLDEN, *INPUT_SHAPE],
            "golden": {
                "golden.safetensors": {"range": list(CONFIG_RANGE), "clamp": stats["config"]},
                "golden-default.safetensors": {"range": list(DEFAULT_RANGE), "clamp": stats["default"]},
            },
            "files": files,
        }
        with open(tmp / "manifest.json", "w") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")

        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"done: {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", required=True, choices=VARIANTS)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    generate(args.variant, args.out, args.seed)


if __name__ == "__main__":
    main()
