"""Fusion "gated": per-modality gates from a gating network, softmax over present modalities."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmfurnace.models.layers import masked_softmax, pooled_inputs, zero_absent
from mmfurnace.models.outputs import EncoderOutput, FusionOutput
from mmfurnace.models.registry import FUSIONS


class GatedFusion(nn.Module):
    """h_m = tanh(W_m pooled_m). A gating network reads every h_m (absent ones zeroed) plus the
    presence indicator and scores each modality; the gates are a softmax over the present
    modalities only, and fused = sum_m gate_m * h_m."""

    def __init__(self, *, dims: dict[str, int], hidden_dim: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.modalities = sorted(dims)
        self.dims = dict(dims)
        n = len(self.modalities)
        self.proj = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(dims[m], hidden_dim), nn.Tanh()) for m in self.modalities}
        )
        self.gate = nn.Sequential(
            nn.Linear(n * hidden_dim + n, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, n)
        )
        self.drop = nn.Dropout(dropout)
        self.out_dim = hidden_dim

    def forward(
        self, features: dict[str, EncoderOutput], present: dict[str, Tensor]
    ) -> FusionOutput:
        """-> fused (batch, hidden_dim), weights (batch, num_modalities) = the gates."""
        pooled, mask = pooled_inputs(features, present, self.modalities, self.dims)
        hidden = [
            zero_absent(self.proj[m](x), mask[:, i])
            for i, (m, x) in enumerate(zip(self.modalities, pooled, strict=True))
        ]
        scores = self.gate(torch.cat([*hidden, mask.to(hidden[0].dtype)], dim=-1))
        weights = masked_softmax(scores, mask)
        fused = (weights.unsqueeze(-1) * torch.stack(hidden, dim=1)).sum(1)
        return FusionOutput(self.drop(fused), None, weights)


@FUSIONS.register("gated")
def gated(
    *, dims: dict[str, int], hidden_dim: int = 64, dropout: float = 0.1, **_: object
) -> GatedFusion:
    return GatedFusion(dims=dims, hidden_dim=hidden_dim, dropout=dropout)
