"""Fusion "low_rank_tensor": Low-rank Multimodal Fusion (Liu et al. 2018; MultiBench
``LowRankTensorFusion``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmfurnace.models.layers import pooled_inputs, zero_absent
from mmfurnace.models.outputs import EncoderOutput, FusionOutput
from mmfurnace.models.pruning import Chooser, fusion_pruner
from mmfurnace.models.registry import FUSIONS


class LowRankTensorFusion(nn.Module):
    """Tensor fusion with the weight tensor factorized into ``rank`` modality-specific factors:
    fused = sum_r w_r * prod_m ([1; z_m] @ W_m[r]) + b, without building the (d+1)^M tensor.

    Absence (as in tensor fusion): an absent modality's vector is [1; 0], so its factor reduces
    to W_m[:, 0], a learned constant: its content drops out and only the present modalities'
    features vary the product."""

    def __init__(self, *, dims: dict[str, int], hidden_dim: int = 64, rank: int = 4) -> None:
        super().__init__()
        self.modalities = sorted(dims)
        self.dims = dict(dims)
        self.factors = nn.ParameterDict(
            {m: nn.Parameter(self._init_factor(rank, dims[m], hidden_dim)) for m in self.modalities}
        )
        self.rank_weights = nn.Parameter(nn.init.xavier_normal_(torch.empty(1, rank)))
        self.bias = nn.Parameter(torch.zeros(hidden_dim))
        self.out_dim = hidden_dim

    @staticmethod
    def _init_factor(rank: int, dim: int, hidden_dim: int) -> Tensor:
        # Row 0 (what multiplies the constant 1) starts at 1, so each factor starts near 1 and
        # the product near 1 + sum_m z_m W_m: every modality's weights get a gradient of their
        # own size from the first step. With Xavier there too (MultiBench's init) every factor
        # starts near 0 and a modality's gradient is scaled by the others' small factors; the
        # first to grow takes over, and on AV-MNIST the image never did (image alone at chance
        # after one epoch; README, AV-MNIST).
        factor = nn.init.xavier_normal_(torch.empty(rank, dim + 1, hidden_dim))
        with torch.no_grad():
            factor[:, 0] = 1.0
        return factor

    def forward(
        self, features: dict[str, EncoderOutput], present: dict[str, Tensor]
    ) -> FusionOutput:
        """-> fused (batch, hidden_dim)."""
        pooled, mask = pooled_inputs(features, present, self.modalities, self.dims)
        one = pooled[0].new_ones(mask.shape[0], 1)
        product = None
        for i, (m, x) in enumerate(zip(self.modalities, pooled, strict=True)):
            z = torch.cat([one, zero_absent(x, mask[:, i])], dim=-1)
            factor = torch.einsum("bd,rdh->brh", z, self.factors[m])
            product = factor if product is None else product * factor
        fused = torch.einsum("r,brh->bh", self.rank_weights[0], product) + self.bias
        return FusionOutput(fused, None, None)


@FUSIONS.register("low_rank_tensor")
def low_rank_tensor(
    *, dims: dict[str, int], hidden_dim: int = 64, rank: int = 4, **_: object
) -> LowRankTensorFusion:
    return LowRankTensorFusion(dims=dims, hidden_dim=hidden_dim, rank=rank)


def _shrink_input(f: LowRankTensorFusion, m: str, keep: Tensor) -> None:
    # factor rows are [1; z]: row 0 multiplies the constant 1 and stays
    rows = torch.cat([torch.zeros(1, dtype=torch.long), keep + 1])
    f.factors[m] = nn.Parameter(f.factors[m].detach()[:, rows].clone())


@fusion_pruner(LowRankTensorFusion, shrink_input=_shrink_input)
def _prune(f: LowRankTensorFusion, pr: Chooser) -> Tensor:
    """The output width, shared by every factor and the bias."""
    width = f.out_dim
    parts = [(f.factors[m], 2) for m in f.modalities] + [(f.bias.unsqueeze(0), 1)]
    keep = pr.choose(parts, width, pr.count(width))
    for m in f.modalities:
        f.factors[m] = nn.Parameter(f.factors[m].detach()[:, :, keep].clone())
    f.bias = nn.Parameter(f.bias.detach()[keep].clone())
    f.out_dim = len(keep)
    return keep
