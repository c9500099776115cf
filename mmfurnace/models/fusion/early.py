"""Fusion "early": concatenate projected features of every modality into one MLP."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmfurnace.models.layers import NamedSequential, pooled_inputs, zero_absent
from mmfurnace.models.outputs import EncoderOutput, FusionOutput
from mmfurnace.models.pruning import Chooser, fusion_pruner, shrink_proj_input
from mmfurnace.models.registry import FUSIONS
from mmfurnace.models.surgery import slice_linear_


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
        self.mlp = NamedSequential(
            fc1=nn.Linear(n * hidden_dim + n, hidden_dim),
            act=nn.GELU(),
            drop=nn.Dropout(dropout),
            fc2=nn.Linear(hidden_dim, hidden_dim),
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


@fusion_pruner(EarlyFusion, shrink_input=shrink_proj_input)
def _prune(f: EarlyFusion, pr: Chooser) -> Tensor:
    """Each modality's projection width (its slot in fc1's input), fc1's hidden width and the
    output width; the presence indicator columns stay."""
    cols, offset = [], 0
    for m in f.modalities:
        proj = f.proj[m]
        width = proj.out_features
        slot = f.mlp.fc1.weight.detach()[:, offset: offset + width]
        keep = pr.choose([(proj.weight, 0), (slot, 1)], width, pr.count(width))
        slice_linear_(proj, out=keep)
        cols.append(keep + offset)
        offset += width
    n = len(f.modalities)
    cols.append(torch.arange(offset, offset + n))  # the presence indicator stays
    fc1, fc2 = f.mlp.fc1, f.mlp.fc2
    hidden = pr.choose([(fc1.weight, 0), (fc2.weight, 1)], fc1.out_features, pr.count(fc1.out_features))
    slice_linear_(fc1, out=hidden, inp=torch.cat(cols))
    out = pr.choose([(fc2.weight, 0)], fc2.out_features, pr.count(fc2.out_features))
    slice_linear_(fc2, out=out, inp=hidden)
    f.out_dim = len(out)
    return out
