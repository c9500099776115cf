from __future__ import annotations

import pytest
import torch

from mmfurnace.errors import ConfigError, InputError
from mmfurnace.models import ENCODERS, EncoderOutput

B = 3
CASES = {
    # name: (builder kwargs, input, padding, expected seq length)
    "lenet": (
        dict(input_shape=(1, 12, 12)),
        lambda: torch.randn(B, 1, 12, 12),
        None,
        4,
    ),  # 12->6->3->2
    "resnet": (
        dict(input_shape=(3, 12, 12)),
        lambda: torch.randn(B, 3, 12, 12),
        None,
        9,
    ),  # 12->6->3
    "cnn1d": (dict(input_shape=(None, 8)), lambda: torch.randn(B, 10, 8), True, 3),  # 10->5->3
    "cnn2d": (dict(input_shape=(None, 8)), lambda: torch.randn(B, 10, 8), True, 3),
    "transformer": (dict(vocab_size=50, heads=2), lambda: torch.randint(1, 50, (B, 7)), True, 7),
    "mlp": (dict(input_shape=(4096,)), lambda: torch.randn(B, 4096), None, 1),
    "mlp-seq": (dict(input_shape=(None, 30)), lambda: torch.randn(B, 5, 30), True, 5),
    "mlp-image": (dict(input_shape=(1, 12, 12)), lambda: torch.randn(B, 1, 12, 12), None, 1),
}


def build(name: str, **kwargs: object) -> torch.nn.Module:
    return ENCODERS[name.split("-")[0]](dim=16, layers=2, dropout=0.0, **kwargs).eval()


def ragged(x: torch.Tensor) -> torch.Tensor:
    lengths = torch.tensor([x.shape[1], x.shape[1] - 1, 2])
    return torch.arange(x.shape[1])[None] < lengths[:, None]


@pytest.mark.parametrize("name", sorted(CASES))
def test_encoder_output_shapes(name: str) -> None:
    kwargs, make, pad, seq = CASES[name]
    encoder = build(name, **kwargs)
    x = make()
    padding = ragged(x) if pad else None
    out = encoder(x, padding)
    assert isinstance(out, EncoderOutput)
    assert encoder.out_dim == 16
    assert out.sequence.shape == (B, seq, 16)
    assert out.pooled.shape == (B, 16)
    if pad:
        assert out.padding.shape == (B, seq)
        assert out.padding.dtype == torch.bool
        assert out.padding[:, 0].all()
    assert torch.isfinite(out.sequence).all()
    assert torch.isfinite(out.pooled).all()


@pytest.mark.parametrize("name", ["cnn1d", "cnn2d", "transformer", "mlp-seq"])
def test_padding_content_and_length_do_not_change_real_outputs(name: str) -> None:
    """Row 1 has 4 real steps; padding it with garbage, or not at all, gives the same pooled vector."""
    kwargs, make, _, _ = CASES[name]
    encoder = build(name, **kwargs)
    x = make()
    short = x[1:2, :4]
    padded = x[1:2].clone()
    mask = torch.zeros(1, x.shape[1], dtype=torch.bool)
    mask[:, :4] = True
    if padded.dtype == torch.int64:
        padded[:, 4:] = torch.randint(1, 50, padded[:, 4:].shape)
    else:
        padded[:, 4:] = 100.0 * torch.randn_like(padded[:, 4:])
    with torch.no_grad():
        ref = encoder(short, torch.ones(1, 4, dtype=torch.bool))
        out = encoder(padded, mask)
    torch.testing.assert_close(out.pooled, ref.pooled, rtol=1e-5, atol=1e-5)
    n = ref.sequence.shape[1]
    torch.testing.assert_close(out.sequence[:, :n], ref.sequence, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["transformer", "cnn1d"])
def test_row_without_real_tokens_stays_finite_with_finite_grads(name: str) -> None:
    kwargs, make, _, _ = CASES[name]
    encoder = build(name, **kwargs).train()
    x = make()
    padding = torch.ones(x.shape[:2], dtype=torch.bool)
    padding[0] = False  # an absent sample: no real token at all
    out = encoder(x, padding)
    assert torch.isfinite(out.sequence).all()
    torch.testing.assert_close(out.pooled[0], torch.zeros(16), rtol=0, atol=0)
    out.pooled.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", sorted(CASES))
def test_grad_checkpointing_gives_same_gradients(name: str) -> None:
    kwargs, make, pad, _ = CASES[name]
    encoder = build(name, **kwargs).train()  # dropout is 0: train mode is deterministic
    x = make()
    padding = ragged(x) if pad else None

    def grads() -> list[torch.Tensor]:
        encoder.zero_grad()
        out = encoder(x, padding)
        (out.pooled.square().sum() + out.sequence.sum()).backward()
        return [p.grad.clone() for p in encoder.parameters() if p.grad is not None]

    plain = grads()
    encoder.set_grad_checkpointing(True)
    assert encoder.grad_checkpointing
    checkpointed = grads()
    assert len(plain) == len(checkpointed) > 0
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_wrong_input_rank_is_an_input_error() -> None:
    with pytest.raises(InputError, match="lenet.*channels, height, width"):
        build("lenet", input_shape=(1, 12, 12))(torch.randn(B, 12, 12))
    with pytest.raises(InputError, match="int64 token ids"):
        build("transformer", vocab_size=50, heads=2)(torch.randn(B, 7))


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("lenet", dict(input_shape=(4096,)), "use encoder 'mlp'"),
        ("transformer", dict(input_dtype="float32", vocab_size=None), "use encoder 'mlp'"),
        ("transformer", dict(vocab_size=50, heads=3), "divisible by heads"),
        ("cnn1d", dict(input_shape=(1, 28, 28)), r"\(frames, features\)"),
    ],
)
def test_encoder_builders_reject_unfit_inputs(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ENCODERS[name](dim=16, **kwargs)


def test_mlp_on_an_image_is_the_mlp_on_its_flattened_pixels() -> None:
    image = build("mlp", input_shape=(1, 12, 12))
    flat = build("mlp", input_shape=(144,))
    flat.load_state_dict(image.state_dict())
    x = torch.randn(B, 1, 12, 12)
    torch.testing.assert_close(image(x).pooled, flat(x.flatten(1)).pooled)
    with pytest.raises(InputError, match=r"mlp.*\(batch, channels, height, width\)"):
        image(x.flatten(1))
    with pytest.raises(InputError, match=r"mlp.*\(batch, features\)"):
        flat(x)
    with pytest.raises(ConfigError, match=r"\(channels, height, width\)"):
        build("mlp", input_shape=(None, 12, 12))
