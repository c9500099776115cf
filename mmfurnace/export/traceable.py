"""Export-time substitutions that keep sequence axes dynamic when a model is traced.

The TorchScript-based ONNX exporter (and ``torch.jit.trace``) record
``nn.MultiheadAttention`` with the example's sequence length baked into a Reshape
(pytorch/pytorch#99701, #120075), and in eval mode MHA / TransformerEncoderLayer take a
fused fast path that has no ONNX symbolic. While :func:`traceable` is active, every
``nn.MultiheadAttention`` in the model runs :func:`_mha_forward` instead: the same maths,
written with shape queries that the tracer keeps symbolic. The parity check after export
(``check_parity``) is what proves the substitution exact.
"""

from __future__ import annotations

import contextlib
import math
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@contextlib.contextmanager
def traceable(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model`` traces with dynamic batch and sequence axes; restored after."""
    patched: list[nn.MultiheadAttention] = []
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        for module in model.modules():
            if isinstance(module, nn.MultiheadAttention) and _supported(module):
                module.forward = types.MethodType(_mha_forward, module)  # type: ignore[method-assign]
                patched.append(module)
        yield model
    finally:
        for module in patched:
            del module.forward  # back to the class's forward
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _supported(mha: nn.MultiheadAttention) -> bool:
    # bias_k / add_zero_attn append a key position; rare, and left to the stock forward.
    return mha.bias_k is None and mha.bias_v is None and not mha.add_zero_attn


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A torch-convention mask (bool True = masked out, or float added) as a float bias."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, float("-inf")
        )
    return mask.to(dtype)


def _mha_forward(
    self: nn.MultiheadAttention,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_padding_mask: Tensor | None = None,
    need_weights: bool = True,
    attn_mask: Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """``nn.MultiheadAttention.forward`` in eval mode, for batched inputs."""
    unbatched = query.dim() == 2
    if unbatched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    elif self.batch_first:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    # (seq, batch, dim) from here on, as in torch's functional implementation.
    if self._qkv_same_embed_dim:
        wq, wk, wv = self.in_proj_weight.chunk(3)
    else:
        wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
    bq = bk = bv = None
    if self.in_proj_bias is not None:
        bq, bk, bv = self.in_proj_bias.chunk(3)
    heads = self.num_heads
    q = _split_heads(F.linear(query, wq, bq), heads)  # (batch, heads, tgt, head_dim)
    k = _split_heads(F.linear(key, wk, bk), heads)  # (batch, heads, src, head_dim)
    v = _split_heads(F.linear(value, wv, bv), heads)
    scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
    if is_causal and attn_mask is None:
        attn_mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).triu(1)
    if attn_mask is not None:
        bias = _additive(attn_mask, scores.dtype)
        if bias.dim() == 3:  # (batch * heads, tgt, src)
            bias = bias.reshape(scores.size(0), heads, bias.size(-2), bias.size(-1))
        scores = scores + bias
    if key_padding_mask is not None:
        scores = scores + _additive(key_padding_mask, scores.dtype)[:, None, None, :]
    weights = torch.softmax(scores, dim=-1)
    if self.training and self.dropout > 0:
        weights = F.dropout(weights, p=self.dropout)
    out = torch.matmul(weights, v)  # (batch, heads, tgt, head_dim)
    out = out.permute(2, 0, 1, 3).flatten(2)  # (tgt, batch, dim)
    out = F.linear(out, self.out_proj.weight, self.out_proj.bias)
    if unbatched:
        out = out.squeeze(1)
    elif self.batch_first:
        out = out.transpose(0, 1)
    if not need_weights:
        return out, None
    if average_attn_weights:
        weights = weights.mean(dim=1)
    if unbatched:
        weights = weights.squeeze(0)
    return out, weights


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """(seq, batch, dim) -> (batch, heads, seq, dim // heads)."""
    return x.unflatten(-1, (heads, -1)).permute(1, 2, 0, 3)
