"""Fusion "gated": per-modality gates from a gating network, softmax over present modalities."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmfurnace.models.layers import NamedSequential, masked_softmax, pooled_inputs, zero_absent
from mmfurnace.models.outputs import EncoderOutput, FusionOutput
from mmfurnace.models.pruning import Chooser, fusion_pruner
from mmfurnace.models.registry import FUSIONS
from mmfurnace.models.surgery import slice_linear_


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
            {m: NamedSequential(fc=nn.Linear(dims[m], hidden_dim), act=nn.Tanh()) for m in self.modalities}
        )
        self.gate = NamedSequential(
            fc1=nn.Linear(n * hidden_dim + n, hidden_dim), act=nn.GELU(), fc2=nn.Linear(hidden_dim, n)
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


def _shrink_input(f: GatedFusion, m: str, keep: Tensor) -> None:
    slice_linear_(f.proj[m].fc, inp=keep)


@fusion_pruner(GatedFusion, shrink_input=_shrink_input)
def _prune(f: GatedFusion, pr: Chooser) -> Tensor:
    """fused = sum_m gate_m * h_m adds every modality's hidden channels together, so one set of
    channels is kept for all of them (and their slots in the gate's input); the gate's hidden
    width too. The presence indicator columns stay."""
    fc1, fc2 = f.gate.fc1, f.gate.fc2
    width = f.out_dim
    n = len(f.modalities)
    parts = [(f.proj[m].fc.weight, 0) for m in f.modalities]
    parts += [(fc1.weight.detach()[:, i * width:(i + 1) * width], 1) for i in range(n)]
    keep = pr.choose(parts, width, pr.count(width))
    for m in f.modalities:
        slice_linear_(f.proj[m].fc, out=keep)
    cols = [keep + i * width for i in range(n)] + [torch.arange(n * width, n * width + n)]
    hidden = pr.choose([(fc1.weight, 0), (fc2.weight, 1)], fc1.out_features, pr.count(fc1.out_features))
    slice_linear_(fc1, out=hidden, inp=torch.cat(cols))
    slice_linear_(fc2, inp=hidden)
    f.out_dim = len(keep)
    return keep
