"""Text encoder "transformer": token + learned position embeddings, a small pre-norm
Transformer encoder with a key padding mask, masked-mean pooled."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmfurnace.data.batch import PAD_ID
from mmfurnace.errors import ConfigError, InputError
from mmfurnace.models.layers import attendable, check_rank, masked_mean, run_block
from mmfurnace.models.outputs import EncoderOutput
from mmfurnace.models.registry import ENCODERS


class TextTransformerEncoder(nn.Module):
    def __init__(
        self,
        *,
        vocab_size: int,
        dim: int = 64,
        layers: int = 2,
        heads: int = 4,
        dropout: float = 0.1,
        max_len: int = 512,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        self.pos = nn.Parameter(torch.randn(1, max_len, dim) * 0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim, heads, 2 * dim, dropout, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.max_len = max_len
        self.out_dim = dim
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.grad_checkpointing = enabled

    def forward(self, x: Tensor, valid: Tensor | None = None) -> EncoderOutput:
        """x (batch, tokens) int64 ids, valid (batch, tokens) True=real (default: x != PAD_ID)
        -> sequence (batch, tokens, dim)."""
        check_rank("transformer", x, (2,), "(batch, tokens) int64 token ids")
        if x.dtype.is_floating_point:
            raise InputError(
                "encoder 'transformer' takes int64 token ids; use 'mlp' for float text features"
            )
        if x.shape[1] > self.max_len:
            raise InputError(
                f"text has {x.shape[1]} tokens; encoder 'transformer' allows at most {self.max_len}"
            )
        if valid is None:
            valid = x != PAD_ID
        ignore = ~attendable(valid)
        h = self.drop(self.embed(x) + self.pos[:, : x.shape[1]])
        for block in self.blocks:
            h = run_block(block, h, None, ignore, checkpointing=self.grad_checkpointing)
        h = self.norm(h)
        return EncoderOutput(h, masked_mean(h, valid), valid)


@ENCODERS.register("transformer")
def transformer(
    *,
    input_dtype: str = "int64",
    vocab_size: int | None = None,
    dim: int = 64,
    layers: int = 2,
    heads: int = 4,
    dropout: float = 0.1,
) -> TextTransformerEncoder:
    if input_dtype != "int64" or vocab_size is None:
        raise ConfigError(
            f"encoder 'transformer' needs int64 token ids and a vocab_size (got dtype {input_dtype}, "
            f"vocab_size {vocab_size}); use encoder 'mlp' for precomputed features"
        )
    if dim % heads:
        raise ConfigError(f"encoder 'transformer': dim {dim} must be divisible by heads {heads}")
    return TextTransformerEncoder(
        vocab_size=vocab_size, dim=dim, layers=layers, heads=heads, dropout=dropout
    )
