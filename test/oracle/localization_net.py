"""LocalizationNet, built exactly as upstream Heimdall builds it (the test oracle's reference).

torchvision ConvNeXt backbone without its classifier (features + avgpool, so state_dict keys are
``backbone.0.<i>...``), then two MLP heads on the pooled features:

    f = flatten(backbone(mel_spectrogram), 1)              # [B, C]
    positions     = position_head(f)                       # [B, 2]
    uncertainties = clamp(softplus(uncertainty_head(f)), uncertainty_min, uncertainty_max)

Input ``mel_spectrogram`` is [B, 3, 128, 32]. C = 768 (tiny, small), 1024 (base), 1536 (large).
Runs on torch 1.13 + torchvision 0.14 (Debian) and needs nothing else.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

VARIANTS = ("tiny", "small", "base", "large")
FEATURE_DIMS = {"tiny": 768, "small": 768, "base": 1024, "large": 1536}
DEFAULT_UNCERTAINTY_MIN = 0.01
DEFAULT_UNCERTAINTY_MAX = 1.0


def make_head(in_features: int, hidden: Sequence[int], dropout: float = 0.2) -> nn.Sequential:
    """Linear, BN, ReLU, Dropout, Linear, BN, ReLU, Dropout, Linear(., 2).

    state_dict keys: 0 (Linear), 1 (BatchNorm1d), 4 (Linear), 5 (BatchNorm1d), 8 (Linear).
    """
    h1, h2 = hidden
    return nn.Sequential(
        nn.Linear(in_features, h1),
        nn.BatchNorm1d(h1),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(h1, h2),
        nn.BatchNorm1d(h2),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(h2, 2),
    )


class LocalizationNet(nn.Module):
    def __init__(
        self,
        backbone_size: str = "tiny",
        uncertainty_min: float = DEFAULT_UNCERTAINTY_MIN,
        uncertainty_max: float = DEFAULT_UNCERTAINTY_MAX,
        position_hidden: Sequence[int] = (256, 128),
        uncertainty_hidden: Sequence[int] = (256, 128),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if backbone_size not in VARIANTS:
            raise ValueError(f"unknown backbone_size {backbone_size!r}; expected one of {VARIANTS}")
        backbone = getattr(torchvision.models, f"convnext_{backbone_size}")(weights=None)
        # features + avgpool; the classifier (LayerNorm2d, Flatten, Linear) is dropped.
        self.backbone = nn.Sequential(*list(backbone.children())[:-1])
        feature_dim = FEATURE_DIMS[backbone_size]
        self.backbone_size = backbone_size
        self.feature_dim = feature_dim
        self.uncertainty_min = float(uncertainty_min)
        self.uncertainty_max = float(uncertainty_max)
        self.position_head = make_head(feature_dim, position_hidden, dropout)
        self.uncertainty_head = make_head(feature_dim, uncertainty_hidden, dropout)

    def features(self, mel_spectrogram: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.backbone(mel_spectrogram), 1)

    def forward(self, mel_spectrogram: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        f = self.features(mel_spectrogram)
        positions = self.position_head(f)
        uncertainties = torch.clamp(
            F.softplus(self.uncertainty_head(f)),
            min=self.uncertainty_min,
            max=self.uncertainty_max,
        )
        return positions, uncertainties


def stage_dims_and_depths(model: LocalizationNet) -> Tuple[list, list]:
    """(dims, depths) read from the built module tree, not from a table."""
    features = model.backbone[0]
    dims, depths = [], []
    # features = [stem, stage, down, stage, down, stage, down, stage]
    for i in range(1, len(features), 2):
        stage = features[i]
        depths.append(len(stage))
        dims.append(stage[0].block[0].in_channels)
    return dims, depths
