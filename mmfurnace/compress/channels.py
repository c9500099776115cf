"""Structured (channel) pruning that keeps every encoder's output width in step with the
fusion that consumes it. See :mod:`mmfurnace.compress.prune` for which library does what.

Torch-Pruning's DependencyGraph prunes the CNN/MLP encoders; the rest is written here because
Torch-Pruning does not trace it correctly: the encoder output -> fusion input coupling (dict
inputs, concatenated modality slots plus a presence indicator, outer products, tokens
concatenated along the sequence axis), the residual and per-head width of transformer blocks
(which it leaves alone), each fusion's hidden width and the head's inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mmfurnace.compress.config import ChannelConfig
from mmfurnace.data.batch import Batch
from mmfurnace.errors import ConfigError
from mmfurnace.models.encoders.transformer import TextTransformerEncoder
from mmfurnace.models.fusion import (
    CrossAttentionFusion,
    EarlyFusion,
    GatedFusion,
    LateFusion,
    LowRankTensorFusion,
    TensorFusion,
)
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
        keep = FUSION_PRUNERS[type(model.fusion)](model.fusion, pr)
        if keep is not None and isinstance(model.head, nn.Linear):
            slice_linear_(model.head, inp=keep)
        widths["fusion"] = (before, model.fusion.out_dim)
    model.train(was_training)
    return {"widths": widths}


def _ignored(name: str, ignore: Sequence[str]) -> bool:
    return any(name == i or name.startswith(i + ".") for i in ignore)


class _Pruner:
    """Channel choice: how many to keep and which (by group magnitude)."""

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
        return self.torch_pruning(modality, encoder, example.inputs[modality], example.padding.get(modality))

    def torch_pruning(self, modality: str, encoder: nn.Module, x: Tensor, padding: Tensor | None) -> Tensor | None:
        """Torch-Pruning on one encoder; returns the kept output channels (None: unchanged)."""
        import torch_pruning as tp

        width = encoder.out_dim
        if self.config.importance == "random":
            importance = tp.importance.RandomImportance()
        else:
            importance = tp.importance.GroupMagnitudeImportance(p=1 if self.config.importance == "l1" else 2)
        try:
            pruner = tp.pruner.MetaPruner(
                encoder, {"x": x, "padding": padding}, importance=importance, pruning_ratio=self.ratio,
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


# --- encoder output -> fusion input --------------------------------------------------------------


def _shrink_fusion_input(fusion: nn.Module, modality: str, keep: Tensor) -> None:
    """Drop the input columns of ``fusion``'s layers that read encoder ``modality``'s output."""
    if type(fusion) not in FUSION_INPUTS:
        raise ConfigError(
            f"ChannelConfig: no fusion-aware pruning for {type(fusion).__name__}; "
            f"leave the encoders out with ignore=('encoders',)"
        )
    FUSION_INPUTS[type(fusion)](fusion, modality, keep)


def _input_proj(fusion: nn.Module, m: str, keep: Tensor) -> None:
    slice_linear_(fusion.proj[m], inp=keep)


def _input_seq_proj(attr: str) -> Callable[[nn.Module, str, Tensor], None]:
    def shrink(fusion: nn.Module, m: str, keep: Tensor) -> None:
        slice_linear_(getattr(fusion, attr)[m][0], inp=keep)

    return shrink


def _input_factors(fusion: LowRankTensorFusion, m: str, keep: Tensor) -> None:
    # factor rows are [1; z]: row 0 multiplies the constant 1 and stays
    rows = torch.cat([torch.zeros(1, dtype=torch.long), keep + 1])
    fusion.factors[m] = nn.Parameter(fusion.factors[m].detach()[:, rows].clone())


FUSION_INPUTS: dict[type, Callable[[Any, str, Tensor], None]] = {
    EarlyFusion: _input_proj,
    CrossAttentionFusion: _input_proj,
    TensorFusion: _input_proj,
    GatedFusion: _input_seq_proj("proj"),
    LateFusion: _input_seq_proj("heads"),
    LowRankTensorFusion: _input_factors,
}


# --- fusion internals (return the kept fused channels, or None when out_dim is unchanged) -------


def _prune_early(f: EarlyFusion, pr: _Pruner) -> Tensor:
    mlp0, mlp3 = f.mlp[0], f.mlp[3]
    cols, offset = [], 0
    for m in f.modalities:
        proj = f.proj[m]
        width = proj.out_features
        slot = mlp0.weight.detach()[:, offset: offset + width]
        keep = pr.choose([(proj.weight, 0), (slot, 1)], width, pr.count(width))
        slice_linear_(proj, out=keep)
        cols.append(keep + offset)
        offset += width
    n = len(f.modalities)
    cols.append(torch.arange(offset, offset + n))  # the presence indicator stays
    hidden = pr.choose([(mlp0.weight, 0), (mlp3.weight, 1)], mlp0.out_features, pr.count(mlp0.out_features))
    slice_linear_(mlp0, out=hidden, inp=torch.cat(cols))
    out = pr.choose([(mlp3.weight, 0)], mlp3.out_features, pr.count(mlp3.out_features))
    slice_linear_(mlp3, out=out, inp=hidden)
    f.out_dim = len(out)
    return out


def _prune_cross_attention(f: CrossAttentionFusion, pr: _Pruner) -> Tensor:
    parts = [(f.proj[m].weight, 0) for m in f.modalities]
    parts += [(f.type_embed, 1), (f.cls, 2), (f.norm.weight, 0)]
    stream = pr.stream_keep(parts, f.blocks, f.out_dim)
    for m in f.modalities:
        slice_linear_(f.proj[m], out=stream)
    slice_param_(f, "type_embed", stream, 1)
    slice_param_(f, "cls", stream, 2)
    for block in f.blocks:
        pr.encoder_layer(block, stream)
    slice_norm_(f.norm, stream)
    f.out_dim = len(stream)
    return stream


def _prune_gated(f: GatedFusion, pr: _Pruner) -> Tensor:
    # fused = sum_m gate_m * h_m: every modality's hidden channels are added together, so one
    # set of channels is kept for all of them.
    gate0, gate2 = f.gate[0], f.gate[2]
    width = f.out_dim
    n = len(f.modalities)
    parts = [(f.proj[m][0].weight, 0) for m in f.modalities]
    parts += [(gate0.weight.detach()[:, i * width:(i + 1) * width], 1) for i in range(n)]
    keep = pr.choose(parts, width, pr.count(width))
    for m in f.modalities:
        slice_linear_(f.proj[m][0], out=keep)
    cols = [keep + i * width for i in range(n)] + [torch.arange(n * width, n * width + n)]
    hidden = pr.choose([(gate0.weight, 0), (gate2.weight, 1)], gate0.out_features, pr.count(gate0.out_features))
    slice_linear_(gate0, out=hidden, inp=torch.cat(cols))
    slice_linear_(gate2, inp=hidden)
    f.out_dim = len(keep)
    return keep


def _prune_late(f: LateFusion, pr: _Pruner) -> None:
    for m in f.modalities:
        first, last = f.heads[m][0], f.heads[m][3]
        hidden = pr.choose([(first.weight, 0), (last.weight, 1)], first.out_features, pr.count(first.out_features))
        slice_linear_(first, out=hidden)
        slice_linear_(last, inp=hidden)
    return None  # out_dim is num_classes


def _prune_tensor(f: TensorFusion, pr: _Pruner) -> Tensor:
    post1, post3 = f.post[1], f.post[3]
    sizes_before = [f.proj[m].out_features + 1 for m in f.modalities]
    kept_z = []
    for m in f.modalities:
        proj = f.proj[m]
        keep = pr.choose([(proj.weight, 0)], proj.out_features, pr.count(proj.out_features))
        slice_linear_(proj, out=keep)
        kept_z.append(torch.cat([torch.zeros(1, dtype=torch.long), keep + 1]))  # [1; z]
    # flat index of the outer product, built in the forward's order (row-major over modalities)
    flat = torch.zeros(1, dtype=torch.long)
    for size, z in zip(sizes_before, kept_z, strict=False):
        flat = (flat.unsqueeze(1) * size + z.unsqueeze(0)).flatten()
    hidden = pr.choose([(post1.weight, 0), (post3.weight, 1)], post1.out_features, pr.count(post1.out_features))
    slice_linear_(post1, out=hidden, inp=flat)
    out = pr.choose([(post3.weight, 0)], post3.out_features, pr.count(post3.out_features))
    slice_linear_(post3, out=out, inp=hidden)
    f.out_dim = len(out)
    return out


def _prune_low_rank(f: LowRankTensorFusion, pr: _Pruner) -> Tensor:
    width = f.out_dim
    parts = [(f.factors[m], 2) for m in f.modalities] + [(f.bias.unsqueeze(0), 1)]
    keep = pr.choose(parts, width, pr.count(width))
    for m in f.modalities:
        f.factors[m] = nn.Parameter(f.factors[m].detach()[:, :, keep].clone())
    f.bias = nn.Parameter(f.bias.detach()[keep].clone())
    f.out_dim = len(keep)
    return keep


FUSION_PRUNERS: dict[type, Callable[[Any, _Pruner], Tensor | None]] = {
    EarlyFusion: _prune_early,
    CrossAttentionFusion: _prune_cross_attention,
    GatedFusion: _prune_gated,
    LateFusion: _prune_late,
    TensorFusion: _prune_tensor,
    LowRankTensorFusion: _prune_low_rank,
}
