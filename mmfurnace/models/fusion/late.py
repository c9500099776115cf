"""Fusion "late": one classifier per modality, combined at the decision level with learned
weights renormalized over the modalities present in each row. Each classifier is an MLP
(``head="mlp"``) or one linear layer (``head="linear"``, ``model.late_head``): with linear
heads the model is a logistic regression per modality plus the learned combination, the
probe's hypothesis class on few training rows."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from mmfurnace.errors import ConfigError
from mmfurnace.models.layers import NamedSequential, masked_softmax, pooled_inputs, zero_absent
from mmfurnace.models.outputs import EncoderOutput, FusionOutput
from mmfurnace.models.pruning import Chooser, fusion_pruner
from mmfurnace.models.registry import FUSIONS
from mmfurnace.models.surgery import slice_linear_


class LateFusion(nn.Module):
    """logits = sum_m w_m * head_m(pooled_m), with w = softmax(weight_logits) taken over the
    present modalities only (an absent modality gets weight 0 and the rest sum to 1).

    ``fused`` already holds logits (out_dim = num_classes), so the classifier's head is
    Identity; ``produces_logits`` tells the builder so.

    head: "mlp" (fc1 -> GELU -> dropout -> fc2, ``hidden_dim`` wide) or "linear" (dropout on
    the features -> fc1 straight to the logits; ``hidden_dim`` unused)."""

    produces_logits = True

    def __init__(
        self,
        *,
        dims: dict[str, int],
        num_classes: int,
        hidden_dim: int = 64,
        dropout: float = 0.1,
        head: Literal["mlp", "linear"] = "mlp",
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ConfigError(f"late fusion head {head!r}: use one of {', '.join(HEADS)}")
        self.modalities = sorted(dims)
        self.dims = dict(dims)
        self.head = head
        self.heads = nn.ModuleDict(
            {m: _head(head, dims[m], hidden_dim, num_classes, dropout) for m in self.modalities}
        )
        self.weight_logits = nn.Parameter(torch.zeros(len(self.modalities)))
        self.out_dim = num_classes

    def forward(
        self, features: dict[str, EncoderOutput], present: dict[str, Tensor]
    ) -> FusionOutput:
        """-> fused (batch, num_classes) logits, unimodal_logits for the modalities in
        ``features``, weights (batch, num_modalities)."""
        pooled, mask = pooled_inputs(features, present, self.modalities, self.dims)
        logits = {m: self.heads[m](x) for m, x in zip(self.modalities, pooled, strict=True)}
        weights = masked_softmax(self.weight_logits.expand(mask.shape[0], -1), mask)
        stacked = torch.stack(
            [zero_absent(logits[m], mask[:, i]) for i, m in enumerate(self.modalities)], dim=1
        )
        fused = (weights.unsqueeze(-1) * stacked).sum(1)
        unimodal = {m: logits[m] for m in self.modalities if m in features}
        return FusionOutput(fused, unimodal, weights)


HEADS = ("mlp", "linear")


def _head(kind: str, dim: int, hidden_dim: int, num_classes: int, dropout: float) -> nn.Module:
    if kind == "linear":
        # dropout on the input: for a linear model, a data-dependent L2 penalty on its weights
        return NamedSequential(drop=nn.Dropout(dropout), fc1=nn.Linear(dim, num_classes))
    return NamedSequential(
        fc1=nn.Linear(dim, hidden_dim),
        act=nn.GELU(),
        drop=nn.Dropout(dropout),
        fc2=nn.Linear(hidden_dim, num_classes),
    )


@FUSIONS.register("late")
def late(
    *,
    dims: dict[str, int],
    num_classes: int,
    hidden_dim: int = 64,
    dropout: float = 0.1,
    late_head: Literal["mlp", "linear"] = "mlp",
    **_: object,
) -> LateFusion:
    return LateFusion(dims=dims, num_classes=num_classes, hidden_dim=hidden_dim, dropout=dropout,
                      head=late_head)


def _shrink_input(f: LateFusion, m: str, keep: Tensor) -> None:
    slice_linear_(f.heads[m].fc1, inp=keep)


@fusion_pruner(LateFusion, shrink_input=_shrink_input)
def _prune(f: LateFusion, pr: Chooser) -> None:
    """The hidden width of each modality's head; the output stays num_classes logits. Linear
    heads have no hidden width: nothing to narrow."""
    if f.head == "linear":
        return None
    for m in f.modalities:
        fc1, fc2 = f.heads[m].fc1, f.heads[m].fc2
        hidden = pr.choose([(fc1.weight, 0), (fc2.weight, 1)], fc1.out_features, pr.count(fc1.out_features))
        slice_linear_(fc1, out=hidden)
        slice_linear_(fc2, inp=hidden)
    return None
