from __future__ import annotations

import math

import pytest
import torch

from mmfurnace.errors import ConfigError
from mmfurnace.models import FUSIONS, FusionOutput
from mmfurnace.models.fusion import LateFusion, TensorFusion
from mmfurnace.models.outputs import EncoderOutput
from tests.models.conftest import FEATURE_DIMS, MODALITY_SETS, make_features

NUM_CLASSES = 3
TOL = dict(rtol=1e-5, atol=1e-6)


def build(name: str, modalities: tuple[str, ...]) -> torch.nn.Module:
    fusion = FUSIONS[name](
        dims={m: FEATURE_DIMS[m] for m in modalities},
        num_classes=NUM_CLASSES,
        hidden_dim=16,
        heads=2,
        layers=2,
        rank=3,
        tensor_dim=4,
        dropout=0.0,
    )
    return fusion.eval()


def presence(batch: int, modalities: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Row 0: everything present; row 1: only the first modality; row 2: nothing present;
    other rows alternate so every modality is absent somewhere."""
    present = {}
    for k, m in enumerate(modalities):
        p = torch.tensor([(i + k) % 2 == 0 for i in range(batch)])
        p[0], p[1], p[2] = True, k == 0, False
        present[m] = p
    return present


@pytest.mark.parametrize("modalities", MODALITY_SETS, ids="+".join)
@pytest.mark.parametrize("name", FUSIONS.names())
def test_fusion_output_shapes(name: str, modalities: tuple[str, ...]) -> None:
    fusion = build(name, modalities)
    out = fusion(make_features(modalities), presence(5, modalities))
    assert isinstance(out, FusionOutput)
    assert out.fused.shape == (5, fusion.out_dim)
    assert torch.isfinite(out.fused).all()
    if name == "late":
        assert fusion.out_dim == NUM_CLASSES
        assert sorted(out.unimodal_logits) == list(modalities)
        assert all(v.shape == (5, NUM_CLASSES) for v in out.unimodal_logits.values())
    if out.weights is not None:
        assert out.weights.shape == (5, len(modalities))


@pytest.mark.parametrize("modalities", MODALITY_SETS[1:], ids="+".join)
@pytest.mark.parametrize("name", FUSIONS.names())
def test_absent_content_changes_nothing_and_gets_zero_gradient(
    name: str, modalities: tuple[str, ...]
) -> None:
    fusion = build(name, modalities)
    present = presence(5, modalities)
    features = make_features(modalities)
    out = fusion(features, present)
    leaves = [t for f in features.values() for t in (f.sequence, f.pooled)]
    grads = torch.autograd.grad(out.fused.square().sum(), leaves, allow_unused=True)

    perturbed = {}
    for m, f in features.items():
        absent = ~present[m]
        seq = f.sequence.detach().clone()
        pooled = f.pooled.detach().clone()
        seq[absent] = 1e3 * torch.randn_like(seq[absent])
        pooled[absent] = 1e3 * torch.randn_like(pooled[absent])
        perturbed[m] = EncoderOutput(seq, pooled, f.valid)
    torch.testing.assert_close(fusion(perturbed, present).fused, out.fused.detach(), **TOL)

    used_by_present_rows = 0.0
    for m, g_seq, g_pool in zip(features, grads[0::2], grads[1::2], strict=True):
        for g in (g_seq, g_pool):
            if g is None:
                continue
            absent = ~present[m]
            torch.testing.assert_close(g[absent], torch.zeros_like(g[absent]), rtol=0, atol=0)
            used_by_present_rows += g[~absent].abs().sum().item()
    assert used_by_present_rows > 0  # the gradient is not trivially zero everywhere


@pytest.mark.parametrize("name", FUSIONS.names())
def test_modality_missing_from_dict_equals_absent_in_every_row(name: str) -> None:
    modalities = ("audio", "image", "text")
    fusion = build(name, modalities)
    features = make_features(modalities)
    present = presence(5, modalities)
    without_text = {m: f for m, f in features.items() if m != "text"}
    all_absent = dict(present, text=torch.zeros(5, dtype=torch.bool))
    a = fusion(without_text, present)
    b = fusion(features, all_absent)
    torch.testing.assert_close(a.fused, b.fused, **TOL)
    if a.weights is not None:
        torch.testing.assert_close(a.weights, b.weights, **TOL)
        torch.testing.assert_close(a.weights[:, 2], torch.zeros(5), rtol=0, atol=0)


@pytest.mark.parametrize("name", FUSIONS.names())
def test_only_one_modality_in_batch(name: str) -> None:
    fusion = build(name, ("audio", "image", "text"))
    features = make_features(("image",))
    out = fusion(features, {"image": torch.ones(5, dtype=torch.bool)})
    assert out.fused.shape == (5, fusion.out_dim)
    assert torch.isfinite(out.fused).all()


def test_late_weights_renormalize_over_present_modalities() -> None:
    fusion = build("late", ("audio", "image", "text"))
    with torch.no_grad():
        fusion.weight_logits.copy_(
            torch.log(torch.tensor([1.0, 2.0, 3.0]))
        )  # softmax: 1/6, 2/6, 3/6
    present = {
        "audio": torch.tensor([True, True, False, False]),
        "image": torch.tensor([True, False, True, False]),
        "text": torch.tensor([True, True, False, False]),
    }
    features = make_features(("audio", "image", "text"), batch=4)
    out = fusion(features, present)
    expected = torch.tensor(
        [[1 / 6, 2 / 6, 3 / 6], [1 / 4, 0.0, 3 / 4], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    )
    torch.testing.assert_close(out.weights, expected, rtol=1e-6, atol=1e-7)
    u = out.unimodal_logits
    manual = torch.stack(
        [
            (u["audio"][0] + 2 * u["image"][0] + 3 * u["text"][0]) / 6,
            (u["audio"][1] + 3 * u["text"][1]) / 4,
            u["image"][2],
            torch.zeros(NUM_CLASSES),
        ]
    )
    torch.testing.assert_close(out.fused, manual, rtol=1e-5, atol=1e-6)


def test_gated_weights_are_a_distribution_over_present_modalities() -> None:
    fusion = build("gated", ("audio", "image", "text"))
    present = presence(6, ("audio", "image", "text"))
    out = fusion(make_features(("audio", "image", "text"), batch=6), present)
    mask = torch.stack([present[m] for m in ("audio", "image", "text")], 1)
    torch.testing.assert_close(out.weights[~mask], torch.zeros(int((~mask).sum())), rtol=0, atol=0)
    sums = out.weights.sum(1)
    torch.testing.assert_close(
        sums[mask.any(1)], torch.ones(int(mask.any(1).sum())), rtol=1e-6, atol=1e-6
    )


def test_tensor_fusion_absent_vector_is_one_then_zeros() -> None:
    """With image absent, the outer product equals the product over the present modalities
    placed in the image-slot-0 block: every term involving image vanishes."""
    fusion = TensorFusion(dims={"audio": 12, "image": 16}, hidden_dim=8, tensor_dim=3).eval()
    features = make_features(("audio", "image"), batch=2)
    present = {"audio": torch.tensor([True, True]), "image": torch.tensor([False, False])}
    captured = {}
    fusion.post.register_forward_hook(lambda mod, args, out: captured.setdefault("x", args[0]))
    fusion(features, present)
    product = captured["x"].reshape(2, 4, 4)  # (1 + audio 3) x (1 + image 3)
    z_audio = torch.cat([torch.ones(2, 1), fusion.proj["audio"](features["audio"].pooled)], 1)
    torch.testing.assert_close(product[:, :, 0], z_audio, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(product[:, :, 1:], torch.zeros(2, 4, 3), rtol=0, atol=0)


def test_late_fusion_produces_logits_and_weight_count() -> None:
    fusion = LateFusion(dims={"audio": 4, "image": 4}, num_classes=5, hidden_dim=4)
    assert fusion.produces_logits
    assert fusion.out_dim == 5
    torch.testing.assert_close(torch.softmax(fusion.weight_logits, 0), torch.full((2,), 0.5))
    assert math.isclose(
        sum(p.numel() for p in fusion.parameters()), 2 * (4 * 4 + 4 + 4 * 5 + 5) + 2
    )


def test_late_linear_heads_are_one_linear_layer_per_modality() -> None:
    modalities = ("audio", "image", "text")
    fusion = FUSIONS["late"](dims={m: FEATURE_DIMS[m] for m in modalities}, num_classes=NUM_CLASSES,
                             hidden_dim=16, dropout=0.5, late_head="linear").eval()
    assert sum(p.numel() for p in fusion.parameters()) == sum(
        (FEATURE_DIMS[m] + 1) * NUM_CLASSES for m in modalities) + len(modalities)
    features = make_features(modalities)
    present = presence(5, modalities)
    out = fusion(features, present)
    for m in modalities:  # eval: the input dropout is off, each head is W x + b
        fc, rows = fusion.heads[m].fc1, present[m]
        torch.testing.assert_close(out.unimodal_logits[m][rows],
                                   features[m].pooled[rows] @ fc.weight.T + fc.bias, **TOL)
    # an absent row's features reach neither the output nor the heads' gradients
    pooled = features["text"].pooled.detach().requires_grad_(True)
    features["text"] = EncoderOutput(features["text"].sequence, pooled, features["text"].valid)
    fusion(features, present).fused.sum().backward()
    absent = ~present["text"]
    assert absent.any()
    assert (pooled.grad[absent] == 0).all()
    assert (pooled.grad[~absent] != 0).any()


def test_late_fusion_rejects_an_unknown_head() -> None:
    with pytest.raises(ConfigError, match="late fusion head 'deep': use one of mlp, linear"):
        LateFusion(dims={"audio": 4}, num_classes=2, head="deep")


@pytest.mark.parametrize("layers", [1, 2])
def test_cross_attention_last_block_for_fusion_token_equals_full_layer(layers: int) -> None:
    # The last block runs for the fusion token only, its attention the mean of one attention
    # per modality; it must give what stock layers give for that token (values and gradients),
    # with padding and absent rows in the batch.
    from mmfurnace.models.fusion.cross_attention import CrossAttentionFusion

    torch.manual_seed(0)
    modalities = ("audio", "image", "text")
    fusion = CrossAttentionFusion(dims={m: FEATURE_DIMS[m] for m in modalities}, hidden_dim=16,
                                  heads=2, layers=layers, dropout=0.0).train()
    features, present = make_features(modalities), presence(5, modalities)

    def full_layers(feats: dict[str, EncoderOutput]) -> torch.Tensor:
        # the same inputs as forward builds, through stock layers
        batch = next(iter(feats.values())).sequence.shape[0]
        tokens, bias = [fusion.cls.expand(batch, -1, -1)], [torch.zeros(batch, 1)]
        for i, m in enumerate(fusion.modalities):
            seq, pad = feats[m].sequence, feats[m].valid
            real = (torch.ones(seq.shape[:2], dtype=torch.bool) if pad is None else pad)
            real = real & present[m].unsqueeze(1)
            tokens.append(fusion.proj[m](seq.masked_fill(~real.unsqueeze(-1), 0.0)) + fusion.type_embed[i])
            n = real.sum(1, keepdim=True).clamp(min=1).float()  # -log(n) each
            bias.append(torch.where(real, -torch.log(n), float("-inf")))
        x, key_mask = torch.cat(tokens, 1), torch.cat(bias, 1)
        *inner, last = fusion.blocks
        for block in inner:
            x = block(x, src_key_padding_mask=key_mask)
        # last block: a stock attention per modality (others' keys hidden), averaged
        h = last.norm1(x)
        starts = torch.cumsum(torch.tensor([1] + [b.shape[1] for b in bias[1:]]), 0).tolist()
        attended, has = [], []
        for lo, hi in zip(starts[:-1], starts[1:], strict=True):
            mask = torch.full_like(key_mask, float("-inf"))
            mask[:, :1], mask[:, lo:hi] = key_mask[:, :1], key_mask[:, lo:hi]
            attended.append(last.self_attn(h, h, h, key_padding_mask=mask)[0][:, :1])
            has.append((key_mask[:, lo:hi] > float("-inf")).any(1).float().view(-1, 1, 1))
        # the mean over the modalities the row has (none: the fusion token goes on alone)
        out = x[:, :1] + sum(a * w for a, w in zip(attended, has, strict=True)) / sum(has).clamp(min=1)
        out = out + last.linear2(last.activation(last.linear1(last.norm2(out))))
        return fusion.norm(out[:, 0])

    fast = fusion(features, present).fused
    reference = full_layers(features)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6)
    # a weighted sum: a plain sum of a LayerNorm output has gradients that cancel to ~0
    weights = torch.randn_like(fast)
    fast_grads = torch.autograd.grad((fast * weights).sum(), list(fusion.parameters()))
    ref_grads = torch.autograd.grad((reference * weights).sum(), list(fusion.parameters()))
    for got, want in zip(fast_grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_fusion_token_block_with_one_mask_is_the_stock_layer() -> None:
    from mmfurnace.models.fusion.cross_attention import fusion_token_block

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, 0.0, activation="gelu", batch_first=True,
                                             norm_first=True)
    x = torch.randn(4, 7, 16)
    mask = torch.zeros(4, 7).masked_fill(torch.rand(4, 7) > 0.7, float("-inf"))
    mask[:, 0] = 0.0
    torch.testing.assert_close(fusion_token_block(layer, x, mask.unsqueeze(0)),
                               layer(x, src_key_padding_mask=mask)[:, :1], rtol=1e-5, atol=1e-6)


def test_cross_attention_gives_each_modality_an_equal_share_at_equal_scores(monkeypatch) -> None:
    # 16 image tokens beside 2 audio tokens: the fusion token attends to each modality on its
    # own, and with equal scores the modality's tokens together get what the fusion token gets
    from mmfurnace.models.fusion import cross_attention
    from mmfurnace.models.fusion.cross_attention import CrossAttentionFusion

    fusion = CrossAttentionFusion(dims={"audio": 4, "image": 4}, hidden_dim=8, heads=2).eval()
    calls = []
    attend = cross_attention.attend_per_mask

    def record(attn, query, h, key_masks):
        calls.append(key_masks)
        return attend(attn, query, h, key_masks)

    monkeypatch.setattr(cross_attention, "attend_per_mask", record)
    feats = {"audio": EncoderOutput(torch.randn(3, 2, 4), torch.zeros(3, 4), None),
             "image": EncoderOutput(torch.randn(3, 16, 4), torch.zeros(3, 4), None)}
    fusion(feats, {"audio": torch.ones(3, dtype=torch.bool), "image": torch.ones(3, dtype=torch.bool)})
    assert len(calls) == 1  # one call ...
    assert calls[0].shape == (2, 3, 19)  # ... with one key mask per modality
    for mask, (lo, hi) in zip(calls[0], [(1, 3), (3, 19)], strict=True):
        weights = torch.softmax(mask, dim=1)  # the scores' prior
        torch.testing.assert_close(weights[:, 0], torch.full((3,), 0.5))
        torch.testing.assert_close(weights[:, lo:hi].sum(1), torch.full((3,), 0.5))


def test_attention_per_mask_is_one_stock_attention_per_mask() -> None:
    from mmfurnace.models.fusion.cross_attention import attend_per_mask

    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    h = torch.randn(3, 9, 16)
    masks = torch.zeros(2, 3, 9).masked_fill(torch.rand(2, 3, 9) > 0.6, float("-inf"))
    masks[:, :, 0] = 0.0
    got = attend_per_mask(attn, h[:, :1], h, masks)
    for g in range(2):
        want = attn(h[:, :1], h, h, key_padding_mask=masks[g], need_weights=False)[0]
        torch.testing.assert_close(got[:, g : g + 1], want, rtol=1e-5, atol=1e-6)


def test_cross_attention_checkpoint_from_before_modality_balance_loads_as_it_was_trained() -> None:
    from mmfurnace.models.fusion.cross_attention import CrossAttentionFusion

    torch.manual_seed(0)
    fusion = CrossAttentionFusion(dims={"audio": 4, "image": 4}, hidden_dim=8, heads=2).eval()
    old = {k: v for k, v in fusion.state_dict().items() if k != "modality_balance"}
    fusion.load_state_dict(old)
    assert float(fusion.modality_balance) == 0.0
    assert not fusion.balanced
    feats = {"audio": EncoderOutput(torch.randn(3, 2, 4), torch.zeros(3, 4), None),
             "image": EncoderOutput(torch.randn(3, 16, 4), torch.zeros(3, 4), None)}
    present = {"audio": torch.tensor([True, False, True]), "image": torch.ones(3, dtype=torch.bool)}
    got = fusion(feats, present).fused
    block = fusion.blocks[0]  # the attention those models had: a plain padding mask
    tokens = torch.cat([fusion.cls.expand(3, -1, -1)]
                       + [fusion.proj[m](feats[m].sequence * present[m][:, None, None]) + fusion.type_embed[i]
                          for i, m in enumerate(fusion.modalities)], 1)
    ignore = torch.cat([torch.zeros(3, 1, dtype=torch.bool), ~present["audio"][:, None].expand(3, 2),
                        torch.zeros(3, 16, dtype=torch.bool)], 1)
    want = fusion.norm(block(tokens, src_key_padding_mask=ignore)[:, 0])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_low_rank_tensor_factors_start_near_one_so_each_modality_learns_alone() -> None:
    # the constant row starts at 1: with the other modality absent (its factor = that row),
    # a modality's weights still get a gradient of their own size, not one scaled down by a
    # near-zero factor of the other
    from mmfurnace.models.fusion.low_rank_tensor import LowRankTensorFusion

    torch.manual_seed(0)
    fusion = LowRankTensorFusion(dims={m: FEATURE_DIMS[m] for m in ("audio", "image")}, hidden_dim=16, rank=4)
    for m in fusion.modalities:
        torch.testing.assert_close(fusion.factors[m][:, 0], torch.ones(4, 16))
    feats = make_features(("audio", "image"))
    only_image = {"audio": torch.zeros(5, dtype=torch.bool), "image": torch.ones(5, dtype=torch.bool)}
    both = {m: torch.ones(5, dtype=torch.bool) for m in ("audio", "image")}
    grads = []
    for present in (only_image, both):
        fusion.zero_grad()
        fusion(feats, present).fused.pow(2).sum().backward()
        grads.append(fusion.factors["image"].grad[:, 1:].norm())
    assert 0.5 < float(grads[0] / grads[1]) < 2.0


def test_cross_attention_pickled_before_modality_balance_still_runs() -> None:
    # an eager export pickles the module: one from before has neither the flag nor the buffer
    from mmfurnace.models.fusion.cross_attention import CrossAttentionFusion

    torch.manual_seed(0)
    fusion = CrossAttentionFusion(dims={"audio": 4, "image": 4}, hidden_dim=8, heads=2).eval()
    feats = {"audio": EncoderOutput(torch.randn(3, 2, 4), torch.zeros(3, 4), None),
             "image": EncoderOutput(torch.randn(3, 16, 4), torch.zeros(3, 4), None)}
    present = {"audio": torch.ones(3, dtype=torch.bool), "image": torch.ones(3, dtype=torch.bool)}
    fusion.load_state_dict({k: v for k, v in fusion.state_dict().items() if k != "modality_balance"})
    want = fusion(feats, present).fused
    del fusion.balanced
    del fusion._buffers["modality_balance"]
    torch.testing.assert_close(fusion(feats, present).fused, want)
