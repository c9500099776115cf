"""ChannelNorm: a layer norm over the channel axis at each position, whatever the rank."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmfurnace.models.layers import ChannelNorm


@pytest.mark.parametrize("shape", [(3, 4, 7, 5), (3, 16, 6, 6), (3, 8, 11)])
def test_channel_norm_is_a_layer_norm_over_channels_per_position(shape) -> None:
    torch.manual_seed(0)
    norm = ChannelNorm(shape[1])
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(shape) * 3 + 1
    channels_last = x.movedim(1, -1)
    expected = F.layer_norm(channels_last, (shape[1],), norm.weight, norm.bias, norm.eps).movedim(-1, 1)
    torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-5)
    # a change at one position of one row reaches nothing else
    y = x.clone()
    y[0, :, 0] += torch.randn_like(y[0, :, 0]) * 5.0  # not a constant: the norm ignores shifts
    changed = (norm(y) - norm(x)).abs().amax(dim=1) > 0
    assert changed[0, 0].all()
    assert int(changed.sum()) == changed[0, 0].numel()


def test_channel_norm_gradients_match_layer_norm() -> None:
    torch.manual_seed(1)
    norm = ChannelNorm(4)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    (norm(x) * torch.arange(4.0).view(1, 4, 1, 1)).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    ref = F.layer_norm(x2.movedim(1, -1), (4,), norm.weight, norm.bias, norm.eps).movedim(-1, 1)
    (ref * torch.arange(4.0).view(1, 4, 1, 1)).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)
