"""Structured (channel) pruning that keeps every encoder's output width in step with the
fusion that consumes it. See :mod:`mmfurnace.compress.prune` for which library does what.

Torch-Pruning's DependencyGraph prunes the CNN/MLP encoders; the rest is written here and in
the fusions because Torch-Pruning does not trace it correctly: the encoder output -> fusion
input coupling (dict inputs, concatenated modality slots plus a presence indicator, outer
products, tokens concatenated along the sequence axis), the residual and per-head width of
transformer blocks (which it leaves alone), each fusion's hidden width and the head's inputs.
How a fusion is narrowed lives next to the fusion (``FUSION_PRUNERS``, see
:mod:`mmfurnace.models.pruning`); this module picks the channels (:class:`_Pruner`) and runs
the pass over encoders, fusion and head.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mmfurnace.compress.config import ChannelConfig
from mmfurnace.data.batch import Batch
from mmfurnace.errors import ConfigError
from mmfurnace.models.encoders.transformer import TextTransformerEncoder
from mmfurnace.models.pruning import FusionPruner
from mmfurnace.models.registry import FUSION_PRUNERS
from mmfurnace.models.surgery import slice_linear_, slice_norm_, slice_param_

# --- structured: the plan ------------------------------------------------------------------------


def channel_prune_(model: nn.Module, config: ChannelConfig, *, example: Batch, ratio: float | None = None
                   ) -> dict[str, Any]:
    """Remove ``ratio`` (default ``config.sparsity``) of the channels of each encoder, the
    fusion and the head's input, in place; every encoder output change is carried into the
    fusion's input layers and the consistency projections. Returns {"widths": {part: (before,
    after)}}."""
    ratio = config.sparsity if ratio is None else ratio
    if ratio <= 0:
        return {"widths": {}}
    pr = _Pruner(config, ratio)
    widths: dict[str, tuple[int, int]] = {}
    example = example.to("cpu")
    was_training = model.training
    model.eval()
    for m, encoder in model.encoders.items():
        if _ignored(f"encoders.{m}", config.ignore):
            continue
        before = encoder.out_dim
        keep = pr.encoder(m, encoder, example)
        if keep is not None:
            _shrink_fusion_input(model.fusion, m, keep)
            slice_linear_(model.projections[m], inp=keep)
            if hasattr(model.fusion, "dims"):
                model.fusion.dims[m] = len(keep)
        widths[f"encoders.{m}"] = (before, encoder.out_dim)
    if not _ignored("fusion", config.ignore):
        before = model.fusion.out_dim
        keep = _fusion_pruner(model.fusion, "the fusion ('fusion')").prune(model.fusion, pr)
        if keep is not None and isinstance(model.head, nn.Linear):
            slice_linear_(model.head, inp=keep)
        widths["fusion"] = (before, model.fusion.out_dim)
    model.train(was_training)
    return {"widths": widths}


def _ignored(name: str, ignore: Sequence[str]) -> bool:
    return any(name == i or name.startswith(i + ".") for i in ignore)


class _Pruner:
    """Channel choice: how many to keep and which (by group magnitude). The
    :class:`~mmfurnace.models.pruning.Chooser` each fusion's registered pruner is handed."""

    def __init__(self, config: ChannelConfig, ratio: float) -> None:
        self.config = config
        self.ratio = ratio
        self.generator = torch.Generator().manual_seed(0)

    def count(self, n: int, multiple: int = 1) -> int:
        """How many of ``n`` channels to keep: ``n * (1 - ratio)`` rounded up to a multiple of
        ``multiple`` and ``round_to`` (never 0, never more than n)."""
        step = math.lcm(multiple, self.config.round_to or 1)
        keep = max(1, n - int(n * self.ratio))
        return min(n, max(step, math.ceil(keep / step) * step))

    def choose(self, parts: Sequence[tuple[Tensor, int]], n: int, keep: int) -> Tensor:
        """Indices (sorted) of the ``keep`` most important of ``n`` channels, where channel c is
        the slice ``t.select(dim, c)`` of every (t, dim) in ``parts``; each tensor's slice norms
        are divided by their mean so no single tensor dominates the sum."""
        if keep >= n:
            return torch.arange(n)
        if self.config.importance == "random":
            score = torch.rand(n, generator=self.generator)
        else:
            p = 1 if self.config.importance == "l1" else 2
            score = torch.zeros(n)
            for t, dim in parts:
                t = t.detach().float().movedim(dim, 0).reshape(n, -1)
                norm = t.norm(p=p, dim=1)
                score += norm / norm.mean().clamp(min=1e-12)
        return torch.sort(torch.topk(score, keep).indices).values

    # -- encoders -------------------------------------------------------------------------------

    def encoder(self, modality: str, encoder: nn.Module, example: Batch) -> Tensor | None:
        if isinstance(encoder, TextTransformerEncoder):
            return self.text_transformer(encoder)
        if modality not in example.inputs:
            raise ConfigError(f"ChannelConfig: the example batch has no {modality!r} input to trace its encoder with")
        return self.torch_pruning(modality, encoder, example.inputs[modality], example.valid.get(modality))

    def torch_pruning(self, modality: str, encoder: nn.Module, x: Tensor, valid: Tensor | None) -> Tensor | None:
        """Torch-Pruning on one encoder; returns the kept output channels (None: unchanged)."""
        import torch_pruning as tp

        width = encoder.out_dim
        if self.config.importance == "random":
            importance = tp.importance.RandomImportance()
        else:
            importance = tp.importance.GroupMagnitudeImportance(p=1 if self.config.importance == "l1" else 2)
        try:
            pruner = tp.pruner.MetaPruner(
                encoder, {"x": x, "valid": valid}, importance=importance, pruning_ratio=self.ratio,
                round_to=self.config.round_to, output_transform=lambda out: [out.pooled, out.sequence],
            )
            removed: list[int] = []
            for group in pruner.step(interactive=True):
                for dep, idxs in group:
                    if isinstance(dep.target.module, tp.ops._OutputOp) and not removed:
                        removed = [int(i) for i in idxs]
                group.prune()
        except Exception as err:  # Torch-Pruning raises many types on graphs it cannot follow
            raise ConfigError(
                f"ChannelConfig: Torch-Pruning cannot prune encoder {modality!r} ({type(encoder).__name__}): "
                f"{type(err).__name__}: {err}; leave it out with ignore=('encoders.{modality}',)"
            ) from None
        if not removed:
            return None
        keep = torch.tensor(sorted(set(range(width)) - set(removed)))
        encoder.out_dim = len(keep)
        return keep

    def text_transformer(self, enc: TextTransformerEncoder) -> Tensor:
        keep = self.stream_keep(
            [(enc.embed.weight, 1), (enc.pos, 2), (enc.norm.weight, 0)], enc.blocks, enc.out_dim
        )
        enc.embed.weight = nn.Parameter(enc.embed.weight.detach()[:, keep].clone())
        enc.embed.embedding_dim = len(keep)
        slice_param_(enc, "pos", keep, 2)
        slice_norm_(enc.norm, keep)
        for block in enc.blocks:
            self.encoder_layer(block, keep)
        enc.out_dim = len(keep)
        return keep

    # -- transformer blocks ----------------------------------------------------------------------

    def stream_keep(self, parts: list[tuple[Tensor, int]], blocks: Iterable[nn.TransformerEncoderLayer],
                    width: int) -> Tensor:
        """Kept channels of a residual stream: every tensor that reads or writes it votes."""
        blocks = list(blocks)
        heads = blocks[0].self_attn.num_heads if blocks else 1
        for b in blocks:
            parts += [(b.norm1.weight, 0), (b.norm2.weight, 0), (b.self_attn.in_proj_weight, 1),
                      (b.self_attn.out_proj.weight, 0), (b.linear1.weight, 1), (b.linear2.weight, 0)]
        return self.choose(parts, width, self.count(width, heads))

    def encoder_layer(self, layer: nn.TransformerEncoderLayer, stream: Tensor) -> None:
        """Shrink a (pre- or post-norm) TransformerEncoderLayer to residual channels ``stream``:
        attention keeps len(stream)/heads dims per head (nn.MultiheadAttention needs its inner
        width equal to its input width), chosen per head; the FFN hidden width is pruned too."""
        attn = layer.self_attn
        e, h = attn.embed_dim, attn.num_heads
        hd, new_hd = e // h, len(stream) // h
        w, b = attn.in_proj_weight.detach(), attn.in_proj_bias
        q, k, v = w[:e], w[e: 2 * e], w[2 * e:]
        qk_rows, v_rows = [], []
        for head in range(h):
            rows = slice(head * hd, (head + 1) * hd)
            qk = self.choose([(q[rows], 0), (k[rows], 0)], hd, new_hd) + head * hd
            vv = self.choose([(v[rows], 0), (attn.out_proj.weight.detach()[:, rows], 1)], hd, new_hd) + head * hd
            qk_rows.append(qk)
            v_rows.append(vv)
        qk_idx, v_idx = torch.cat(qk_rows), torch.cat(v_rows)
        rows = torch.cat([qk_idx, qk_idx + e, v_idx + 2 * e])
        attn.in_proj_weight = nn.Parameter(w[rows][:, stream].clone())
        if b is not None:
            attn.in_proj_bias = nn.Parameter(b.detach()[rows].clone())
        slice_linear_(attn.out_proj, out=stream, inp=v_idx)
        attn.embed_dim = attn.kdim = attn.vdim = len(stream)
        attn.head_dim = new_hd
        # FFN hidden units
        hidden = layer.linear1.out_features
        ffn = self.choose([(layer.linear1.weight, 0), (layer.linear2.weight, 1)], hidden, self.count(hidden))
        slice_linear_(layer.linear1, out=ffn, inp=stream)
        slice_linear_(layer.linear2, out=stream, inp=ffn)
        slice_norm_(layer.norm1, stream)
        slice_norm_(layer.norm2, stream)


# --- encoder output -> fusion input, and the fusion itself: registered by each fusion ------------


def _fusion_pruner(fusion: nn.Module, what: str) -> FusionPruner:
    name = type(fusion).__name__
    if name not in FUSION_PRUNERS:
        raise ConfigError(
            f"ChannelConfig: no channel pruning for fusion {name}; fusions that have it: "
            f"{', '.join(FUSION_PRUNERS.names())}. Register one next to the fusion with "
            f"@fusion_pruner({name}, shrink_input=...) (mmfurnace.models.pruning), or leave "
            f"{what} out with ignore=(...)"
        )
    return FUSION_PRUNERS[name]


def _shrink_fusion_input(fusion: nn.Module, modality: str, keep: Tensor) -> None:
    """Drop the input columns of ``fusion``'s layers that read encoder ``modality``'s output."""
    _fusion_pruner(fusion, "the encoders ('encoders')").shrink_input(fusion, modality, keep)
