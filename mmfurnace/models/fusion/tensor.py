"""Fusion "tensor": Tensor Fusion Network (Zadeh et al. 2017; MultiBench ``TensorFusion``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmfurnace.models.layers import NamedSequential, pooled_inputs, zero_absent
from mmfurnace.models.outputs import EncoderOutput, FusionOutput
from mmfurnace.models.pruning import Chooser, fusion_pruner, shrink_proj_input
from mmfurnace.models.registry import FUSIONS
from mmfurnace.models.surgery import slice_linear_


class TensorFusion(nn.Module):
    """Flatten the outer product of [1; z_m] over modalities, where z_m is modality m projected
    to ``tensor_dim``; the result holds every unimodal, bimodal and trimodal product term, and
    an MLP maps it to ``hidden_dim``. Size is (tensor_dim + 1) ** num_modalities, hence the
    projection first.

    Absence: an absent modality's vector is [1; 0]. Every product term involving it is then 0
    and only the terms of the present modalities survive, so it drops out multiplicatively
    rather than being imputed with a value the MLP could read as content."""

    def __init__(
        self,
        *,
        dims: dict[str, int],
        hidden_dim: int = 64,
        tensor_dim: int = 16,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.modalities = sorted(dims)
        self.dims = dict(dims)
        self.proj = nn.ModuleDict({m: nn.Linear(dims[m], tensor_dim) for m in self.modalities})
        self.post = NamedSequential(
            drop=nn.Dropout(dropout),
            fc1=nn.Linear((tensor_dim + 1) ** len(self.modalities), hidden_dim),
            act=nn.GELU(),
            fc2=nn.Linear(hidden_dim, hidden_dim),
        )
        self.out_dim = hidden_dim

    def forward(
        self, features: dict[str, EncoderOutput], present: dict[str, Tensor]
    ) -> FusionOutput:
        """-> fused (batch, hidden_dim)."""
        pooled, mask = pooled_inputs(features, present, self.modalities, self.dims)
        one = pooled[0].new_ones(mask.shape[0], 1)
        product = one
        for i, (m, x) in enumerate(zip(self.modalities, pooled, strict=True)):
            z = torch.cat([one, zero_absent(self.proj[m](x), mask[:, i])], dim=-1)
            product = (product.unsqueeze(2) * z.unsqueeze(1)).flatten(1)
        return FusionOutput(self.post(product), None, None)


@FUSIONS.register("tensor")
def tensor(
    *,
    dims: dict[str, int],
    hidden_dim: int = 64,
    tensor_dim: int = 16,
    dropout: float = 0.1,
    **_: object,
) -> TensorFusion:
    return TensorFusion(dims=dims, hidden_dim=hidden_dim, tensor_dim=tensor_dim, dropout=dropout)


@fusion_pruner(TensorFusion, shrink_input=shrink_proj_input)
def _prune(f: TensorFusion, pr: Chooser) -> Tensor:
    """Each projection's width (z_m), the outer product's entries that read dropped ones, the
    hidden and output widths of the MLP after it."""
    fc1, fc2 = f.post.fc1, f.post.fc2
    sizes_before = [f.proj[m].out_features + 1 for m in f.modalities]
    kept_z = []
    for m in f.modalities:
        proj = f.proj[m]
        keep = pr.choose([(proj.weight, 0)], proj.out_features, pr.count(proj.out_features))
        slice_linear_(proj, out=keep)
        kept_z.append(torch.cat([torch.zeros(1, dtype=torch.long), keep + 1]))  # [1; z]
    # flat index of the outer product, built in the forward's order (row-major over modalities)
    flat = torch.zeros(1, dtype=torch.long)
    for size, z in zip(sizes_before, kept_z, strict=True):
        flat = (flat.unsqueeze(1) * size + z.unsqueeze(0)).flatten()
    hidden = pr.choose([(fc1.weight, 0), (fc2.weight, 1)], fc1.out_features, pr.count(fc1.out_features))
    slice_linear_(fc1, out=hidden, inp=flat)
    out = pr.choose([(fc2.weight, 0)], fc2.out_features, pr.count(fc2.out_features))
    slice_linear_(fc2, out=out, inp=hidden)
    f.out_dim = len(out)
    return out
