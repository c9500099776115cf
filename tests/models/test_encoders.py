from __future__ import annotations

import pytest
import torch

from mmfurnace.errors import ConfigError, InputError
from mmfurnace.models import ENCODERS, EncoderOutput

B = 3
CASES = {
    # name: (builder kwargs, input, valid mask, expected seq length)
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
    # a spectrogram seen as a one-channel image: 10 frames -> 5 -> 3 -> 2 (stem + 2 blocks)
    "lenet-spectrogram": (dict(input_shape=(None, 8)), lambda: torch.randn(B, 10, 8), True, 2),
    "transformer": (dict(vocab_size=50, heads=2), lambda: torch.randint(1, 50, (B, 7)), True, 7),
    "mlp": (dict(input_shape=(4096,)), lambda: torch.randn(B, 4096), None, 1),
    "mlp-seq": (dict(input_shape=(None, 30)), lambda: torch.randn(B, 5, 30), True, 5),
    "mlp-image": (dict(input_shape=(1, 12, 12)), lambda: torch.randn(B, 1, 12, 12), None, 1),
}


def build(name: str, **kwargs: object) -> torch.nn.Module:
    return ENCODERS[name.split("-")[0]](dim=16, layers=2, dropout=0.0, **kwargs).eval()


def test_lenet_builds_by_input_shape() -> None:
    from mmfurnace.models.encoders.lenet import LeNetEncoder, SpectrogramLeNet

    assert isinstance(build("lenet", input_shape=(1, 28, 28)), LeNetEncoder)
    assert isinstance(build("lenet", input_shape=(112, 112)), SpectrogramLeNet)  # AV-MNIST audio
    assert isinstance(build("lenet", input_shape=(None, 40)), SpectrogramLeNet)


def ragged(x: torch.Tensor) -> torch.Tensor:
    lengths = torch.tensor([x.shape[1], x.shape[1] - 1, 2])
    return torch.arange(x.shape[1])[None] < lengths[:, None]


@pytest.mark.parametrize("name", sorted(CASES))
def test_encoder_output_shapes(name: str) -> None:
    kwargs, make, pad, seq = CASES[name]
    encoder = build(name, **kwargs)
    x = make()
    valid = ragged(x) if pad else None
    out = encoder(x, valid)
    assert isinstance(out, EncoderOutput)
    assert encoder.out_dim == 16
    assert out.sequence.shape == (B, seq, 16)
    assert out.pooled.shape == (B, 16)
    if pad:
        assert out.valid.shape == (B, seq)
        assert out.valid.dtype == torch.bool
        assert out.valid[:, 0].all()
    assert torch.isfinite(out.sequence).all()
    assert torch.isfinite(out.pooled).all()


@pytest.mark.parametrize("name", ["cnn1d", "cnn2d", "lenet-spectrogram", "transformer", "mlp-seq"])
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


@pytest.mark.parametrize("name", ["transformer", "cnn1d", "lenet-spectrogram"])
def test_row_without_real_tokens_stays_finite_with_finite_grads(name: str) -> None:
    kwargs, make, _, _ = CASES[name]
    encoder = build(name, **kwargs).train()
    x = make()
    valid = torch.ones(x.shape[:2], dtype=torch.bool)
    valid[0] = False  # an absent sample: no real token at all
    out = encoder(x, valid)
    assert torch.isfinite(out.sequence).all()
    torch.testing.assert_close(out.pooled[0], torch.zeros(16), rtol=0, atol=0)
    out.pooled.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", sorted(CASES))
def test_grad_checkpointing_gives_same_gradients(name: str) -> None:
    kwargs, make, pad, _ = CASES[name]
    encoder = build(name, **kwargs).train()  # dropout is 0: train mode is deterministic
    x = make()
    valid = ragged(x) if pad else None

    def grads() -> list[torch.Tensor]:
        encoder.zero_grad()
        out = encoder(x, valid)
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
        ("lenet", dict(input_shape=(None, None)), r"spectrograms shaped \(frames, features\)"),
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


def test_masked_instance_norm_matches_instance_norm_over_real_frames() -> None:
    from mmfurnace.models.layers import MaskedInstanceNorm

    torch.manual_seed(0)
    norm = MaskedInstanceNorm(3)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        norm.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    x = 5 + 3 * torch.randn(2, 3, 6, 4)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    out = norm(x, mask)
    ref = torch.nn.functional.group_norm(x[1:, :, :4], 3, norm.weight, norm.bias, 1e-5)
    torch.testing.assert_close(out[1:, :, :4], ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:1], norm(x[:1]), rtol=1e-5, atol=1e-5)  # all real: fast path
    # each real channel map is centred and scaled by the affine alone
    real = (out[1, :, :4] - norm.bias.view(3, 1, 1)) / norm.weight.view(3, 1, 1)
    torch.testing.assert_close(real.mean(dim=(1, 2)), torch.zeros(3), rtol=0, atol=1e-5)
    # an uncentred input's offset and scale do not reach the output (what ChannelNorm missed)
    torch.testing.assert_close(norm(10 * x + 100, mask)[1, :, :4], out[1, :, :4], rtol=1e-4, atol=1e-4)


def test_spectrogram_lenet_learns_an_uncentred_input() -> None:
    """Four classes that differ only in which quarter of the bands carries a little extra
    energy above a large shared floor (a 0..1 spectrogram like AV-MNIST's audio / 255), at
    MultiBench's narrow LeNet width (6 channels). With ChannelNorm in these blocks the same
    training stayed at chance (0.25); with the masked instance norm it separates them."""
    torch.manual_seed(0)
    n, frames, bands = 96, 32, 32
    labels = torch.arange(n) % 4
    x = 0.6 + 0.2 * torch.rand(n, frames, bands)
    for c in range(4):
        x[labels == c, :, c * 8 : (c + 1) * 8] += 0.1
    encoder = ENCODERS["lenet"](input_shape=(frames, bands), dim=8, layers=4, channels=6, dropout=0.0)
    head = torch.nn.Linear(8, 4)
    opt = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=3e-3)
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(head(encoder(x).pooled), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    accuracy = (head(encoder(x).pooled).argmax(1) == labels).float().mean()
    assert accuracy == 1.0
