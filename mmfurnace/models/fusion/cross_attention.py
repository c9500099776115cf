"""Fusion "cross_attention": one Transformer over the tokens of every modality plus a fusion
([CLS]) token, whose output is the fused vector."""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from mmfurnace.errors import ConfigError, InputError
from mmfurnace.models.layers import run_block
from mmfurnace.models.outputs import EncoderOutput, FusionOutput
from mmfurnace.models.pruning import Chooser, fusion_pruner, shrink_proj_input
from mmfurnace.models.registry import FUSIONS
from mmfurnace.models.surgery import slice_linear_, slice_norm_, slice_param_


class CrossAttentionFusion(nn.Module):
    """Each modality's sequence is projected to ``hidden_dim`` and tagged with a learned
    modality-type embedding; the tokens of all modalities follow a learned fusion token, and
    self-attention runs across all of them. The key padding mask hides padded tokens and every
    token of an absent modality (whose values are also zeroed), so attention weights on them
    are exactly 0. The fusion token is never masked, so a row with nothing present stays finite.
    A modality missing from ``features`` simply contributes no tokens.

    Modality balance, so that no modality can starve another of attention (AV-MNIST, README:
    a 4x4 image map beside 2 audio frames; with one softmax over all tokens the model ignored
    the audio after one epoch, audio alone at chance, and with the scores merely rebalanced it
    ignored the image instead: a softmax across modalities lets the first to win take all).
    So the fusion token's block attends to each modality separately -- the fusion token and
    that modality's tokens, one softmax each -- and averages the results over the modalities
    the row has: every present
    modality always holds its share of the fusion token's update and of the gradient. Within
    a modality each real token's score gets -log(n), n its real tokens in the row, so the
    fusion token and the modality start with half each however many tokens the encoder emits.
    Earlier blocks (``layers`` > 1) attend across all tokens with the same -log(n) scores.
    ``modality_balance`` is a buffer, 1; checkpoints saved before it existed load with 0:
    one softmax over all tokens, which is the attention they were trained with."""

    def __init__(
        self,
        *,
        dims: dict[str, int],
        hidden_dim: int = 64,
        heads: int = 4,
        layers: int = 1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.modalities = sorted(dims)
        self.proj = nn.ModuleDict({m: nn.Linear(dims[m], hidden_dim) for m in self.modalities})
        self.type_embed = nn.Parameter(torch.randn(len(self.modalities), hidden_dim) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, 1, hidden_dim) * 0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                hidden_dim,
                heads,
                2 * hidden_dim,
                dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(hidden_dim)
        self.out_dim = hidden_dim
        self.grad_checkpointing = False
        self.register_buffer("modality_balance", torch.ones(()))
        self.balanced = True

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        key = prefix + "modality_balance"
        if key not in state_dict:  # saved before modality balance: trained without it
            state_dict[key] = torch.zeros(())
        self.balanced = bool(state_dict[key] != 0)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[arg-type]

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.grad_checkpointing = enabled

    def forward(
        self, features: dict[str, EncoderOutput], present: dict[str, Tensor]
    ) -> FusionOutput:
        """-> fused (batch, hidden_dim): the fusion token after the last block."""
        if not features:
            raise InputError(f"fusion got no modality features; expected some of {self.modalities}")
        batch = next(iter(features.values())).sequence.shape[0]
        # a module pickled before modality balance (an eager export) has neither attribute
        balanced = getattr(self, "balanced", False)
        scale = self.modality_balance if balanced else 0.0
        tokens = [self.cls.expand(batch, -1, -1)]
        # additive key mask: 0 for the fusion token, -log(n) for a modality's n real tokens,
        # -inf for padding and absent rows (what a boolean padding mask becomes inside attention)
        key_bias = [self.cls.new_zeros(batch, 1)]
        for i, m in enumerate(self.modalities):
            if m not in features:
                continue
            seq, valid = features[m].sequence, features[m].valid
            real = (
                torch.ones(seq.shape[:2], dtype=torch.bool, device=seq.device)
                if valid is None
                else valid
            )
            if m in present:
                real = real & present[m].to(torch.bool).unsqueeze(1)
            tokens.append(
                self.proj[m](seq.masked_fill(~real.unsqueeze(-1), 0.0)) + self.type_embed[i]
            )
            count = real.sum(1, keepdim=True).clamp(min=1).to(self.cls.dtype)
            share = (-torch.log(count) * scale).expand(real.shape)
            key_bias.append(share.masked_fill(~real, float("-inf")))
        x, key_mask = torch.cat(tokens, dim=1), torch.cat(key_bias, dim=1)
        *inner, last = self.blocks
        for block in inner:
            x = run_block(block, x, None, key_mask, checkpointing=self.grad_checkpointing)
        if balanced:
            masks = torch.stack(per_modality_masks(key_bias))
            # the mean over the modalities each row has: one left out of ``features`` and one
            # absent in every row give the same output
            has = torch.stack([(b > float("-inf")).any(1) for b in key_bias[1:]]).to(x.dtype)
            weights = has / has.sum(0).clamp(min=1)
        else:
            masks, weights = key_mask.unsqueeze(0), x.new_ones(1, batch)
        x = run_block(functools.partial(fusion_token_block, last), x, masks, weights,
                      checkpointing=self.grad_checkpointing)
        return FusionOutput(self.norm(x[:, 0]), None, None)


def per_modality_masks(key_bias: list[Tensor]) -> list[Tensor]:
    """One additive key mask per modality from [fusion token's, modality 1's, ...]: the fusion
    token and that modality's tokens keep their scores, every other token gets -inf."""
    masks = []
    for g in range(1, len(key_bias)):
        parts = [b if k in (0, g) else torch.full_like(b, float("-inf")) for k, b in enumerate(key_bias)]
        masks.append(torch.cat(parts, dim=1))
    return masks


def fusion_token_block(
    block: nn.TransformerEncoderLayer, x: Tensor, key_masks: Tensor, weights: Tensor | None = None
) -> Tensor:
    """The pre-norm layer ``block`` computed for the fusion token alone, its attention the
    ``weights`` (masks, batch)-weighted sum of one attention per additive key mask in
    ``key_masks`` (masks, batch, tokens): (batch, tokens, dim) -> (batch, 1, dim). With one
    mask and weight 1 this is ``block(x, src_key_padding_mask=key_masks[0])[:, :1]``.

    Only the fusion token leaves the last block, so the other tokens' queries, attention rows
    and feed-forward are dead work there: attention drops from tokens x tokens scores to
    1 x tokens and the feed-forward to one token per row, with the same numbers. This was a
    third of the demo model's inference time, and float work INT8 and pruning cannot shrink."""
    h = block.norm1(x)
    attended = attend_per_mask(block.self_attn, h[:, :1], h, key_masks)  # (batch, masks, dim)
    if weights is None:
        attended = attended.sum(1, keepdim=True)
    else:
        attended = (attended * weights.t().unsqueeze(-1)).sum(1, keepdim=True)
    out = x[:, :1] + block.dropout1(attended)
    z = block.linear2(block.dropout(block.activation(block.linear1(block.norm2(out)))))
    return out + block.dropout2(z)


@FUSIONS.register("cross_attention")
def cross_attention(
    *,
    dims: dict[str, int],
    hidden_dim: int = 64,
    heads: int = 4,
    layers: int = 1,
    dropout: float = 0.1,
    **_: object,
) -> CrossAttentionFusion:
    if hidden_dim % heads:
        raise ConfigError(
            f"fusion 'cross_attention': hidden_dim {hidden_dim} must be divisible by heads {heads}"
        )
    return CrossAttentionFusion(
        dims=dims, hidden_dim=hidden_dim, heads=heads, layers=layers, dropout=dropout
    )


@fusion_pruner(CrossAttentionFusion, shrink_input=shrink_proj_input)
def _prune(f: CrossAttentionFusion, pr: Chooser) -> Tensor:
    """The residual stream's width: every projection's output, the type embeddings, the fusion
    token, each block (its heads' width and feed-forward too) and the final norm."""
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


def attend_per_mask(attn: nn.MultiheadAttention, query: Tensor, h: Tensor, key_masks: Tensor) -> Tensor:
    """``attn``'s attention of one query (batch, 1, dim) over ``h`` (batch, tokens, dim), once per
    additive key mask in ``key_masks`` (masks, batch, tokens): (batch, masks, dim).

    The masks are folded into the batch and ``attn`` is called once. A call per mask gave each
    projection weight several MatMuls in the exported graph, which ONNX Runtime's INT8
    precision mode (CPUs without VNNI) fails to load; computing the attention by hand skipped
    the module's hooks (pruning masks, QAT fake quantization); per-query masks as ``attn_mask``
    bake the traced batch size into the export."""
    groups = key_masks.shape[0]
    queries = query.repeat(groups, 1, 1)  # mask-major: rows g * batch + b
    keys = h.repeat(groups, 1, 1)
    out = attn(queries, keys, keys, key_padding_mask=key_masks.flatten(0, 1), need_weights=False)[0]
    return out.reshape(groups, -1, out.shape[-1]).transpose(0, 1)
