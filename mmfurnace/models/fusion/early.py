"""Fusion "early": concatenate projected features of every modality into one MLP."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmfurnace.models.layers import pooled_inputs, zero_absent
from mmfurnace.models.outputs import EncoderOutput, FusionOutput
from mmfurnace.models.registry import FUSIONS


class EarlyFusion(nn.Module):
    """Feature-level fusion. Each modality's pooled features are projected to ``hidden_dim``;
    an absent modality's slot is set to zero *and* a presence indicator (one 0/1 per modality)
    is appended, so the MLP can tell "absent" from "features that happen to be zero"."""

    def __init__(self, *, dims: dict[str, int], hidden_dim: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.modalities = sorted(dims)
        self.dims = dict(dims)
        self.proj = nn.ModuleDict({m: nn.Linear(dims[m], hidden_dim) for m in self.modalities})
        n = len(self.modalities)
        self.mlp = nn.Sequential(
            nn.Linear(n * hidden_dim + n, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim),
        )
        self.out_dim = hidden_dim

    def forward(
        self, features: dict[str, EncoderOutput], present: dict[str, Tensor]
    ) -> FusionOutput:
        """features: modality -> EncoderOutput; present: modality -> (batch,) bool -> fused (batch, hidden_dim)."""
        pooled, mask = pooled_inputs(features, present, self.modalities, self.dims)
        parts = [
            zero_absent(self.proj[m](x), mask[:, i])
            for i, (m, x) in enumerate(zip(self.modalities, pooled, strict=True))
        ]
        fused = self.mlp(torch.cat([*parts, mask.to(parts[0].dtype)], dim=-1))
        return FusionOutput(fused, None, None)


@FUSIONS.register("early")
def early(
    *, dims: dict[str, int], hidden_dim: int = 64, dropout: float = 0.1, **_: object
) -> EarlyFusion:
    return EarlyFusion(dims=dims, hidden_dim=hidden_dim, dropout=dropout)
