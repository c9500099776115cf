"""AV-MNIST reader on tiny files in MultiBench's layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mmfurnace.config import load_run_config
from mmfurnace.data.avmnist import AVMNIST
from mmfurnace.data.config import DataConfig
from mmfurnace.data.datasets import build_dataset
from mmfurnace.errors import ConfigError, InputError


def write_avmnist(root: Path, n_train: int = 10, n_test: int = 4, dtype: str = "float32") -> dict:
    """Write the six .npy files with values 0..255 the way MultiBench ships them."""
    rng = np.random.default_rng(0)
    arrays = {}
    for part, n in (("train", n_train), ("test", n_test)):
        image = rng.integers(0, 256, size=(n, 784)).astype(dtype)
        audio = rng.integers(0, 256, size=(n, 112, 112)).astype(dtype)
        labels = rng.integers(0, 10, size=(n,))
        (root / "image").mkdir(parents=True, exist_ok=True)
        (root / "audio").mkdir(parents=True, exist_ok=True)
        np.save(root / "image" / f"{part}_data.npy", image)
        np.save(root / "audio" / f"{part}_data.npy", audio)
        np.save(root / f"{part}_labels.npy", labels)
        arrays[part] = (image, audio, labels)
    return arrays


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_splits_and_multibench_scaling(tmp_path: Path, dtype: str) -> None:
    """image_mean 0, image_std 1 and audio_norm "none" give MultiBench's own x / 255."""
    arrays = write_avmnist(tmp_path, dtype=dtype)
    plain = dict(valid_start=7, image_mean=0.0, image_std=1.0, audio_norm="none")
    train = AVMNIST(tmp_path, "train", **plain)
    valid = AVMNIST(tmp_path, "valid", **plain)
    test = AVMNIST(tmp_path, "test", **plain)
    assert (len(train), len(valid), len(test)) == (7, 3, 4)

    image, audio, labels = arrays["train"]
    sample = valid[1]  # row 8 of the train files
    assert sample.inputs["image"].shape == (1, 28, 28)
    assert sample.inputs["image"].dtype == torch.float32
    expected_image = torch.from_numpy(image[8].astype(np.float32).reshape(1, 28, 28) / 255)
    torch.testing.assert_close(sample.inputs["image"], expected_image)
    assert sample.inputs["audio"].shape == (112, 112)
    torch.testing.assert_close(
        sample.inputs["audio"], torch.from_numpy(audio[8].astype(np.float32) / 255)
    )
    assert sample.label.item() == labels[8]
    assert sample.label.dtype == torch.int64
    assert float(sample.inputs["image"].max()) <= 1.0

    assert test[3].label.item() == arrays["test"][2][3]
    assert train.info.num_classes == 10
    assert train.info.input_shapes["image"] == (1, 28, 28)


def test_default_scaling_normalises_images_and_standardises_audio_bands(tmp_path: Path) -> None:
    """Defaults: image (x/255 - 0.5) / 0.5; audio x/255 standardised per mel band with the
    mean/std of the train rows (not the valid or test rows)."""
    arrays = write_avmnist(tmp_path, n_train=10, n_test=4)
    image, audio, _ = arrays["train"]
    audio = audio.astype(np.float64) / 255
    audio[:, :, 5] = 0.25  # a band that never varies: centred, not divided by ~0
    np.save(tmp_path / "audio" / "train_data.npy", (audio * 255).astype(np.float32))
    mean = audio[:7].reshape(-1, 112).mean(0)
    std = audio[:7].reshape(-1, 112).std(0)
    std[5] = 1.0

    valid = AVMNIST(tmp_path, "valid", valid_start=7)
    sample = valid[0]  # train-file row 7
    torch.testing.assert_close(
        sample.inputs["image"],
        torch.from_numpy((image[7].astype(np.float32).reshape(1, 28, 28) / 255 - 0.5) / 0.5),
    )
    torch.testing.assert_close(
        sample.inputs["audio"], torch.from_numpy(((audio[7] - mean) / std).astype(np.float32)),
        rtol=1e-5, atol=1e-5,
    )
    assert float(sample.inputs["audio"][:, 5].abs().max()) < 1e-5
    train = AVMNIST(tmp_path, "train", valid_start=7)
    bands = torch.stack([train[i].inputs["audio"] for i in range(len(train))]).reshape(-1, 112)
    torch.testing.assert_close(bands.mean(0), torch.zeros(112), rtol=0, atol=1e-4)
    test = AVMNIST(tmp_path, "test", valid_start=7)  # test rows use the train statistics
    torch.testing.assert_close(
        test[2].inputs["audio"],
        torch.from_numpy(((arrays["test"][1][2] / 255 - mean) / std).astype(np.float32)),
        rtol=1e-5, atol=1e-5,
    )
    assert train.info.extra["audio_norm"] == "bands"


def test_valid_start_comes_from_config_or_layout_file(tmp_path: Path) -> None:
    write_avmnist(tmp_path, n_train=10, n_test=4)
    cfg = DataConfig(dataset="avmnist", root=tmp_path, valid_start=6)
    assert [len(build_dataset(cfg, s)) for s in ("train", "valid", "test")] == [6, 4, 4]
    (tmp_path / "layout.json").write_text('{"valid_start": 8}')
    cfg = DataConfig(dataset="avmnist", root=tmp_path)
    assert [len(build_dataset(cfg, s)) for s in ("train", "valid", "test")] == [8, 2, 4]
    (tmp_path / "layout.json").unlink()
    with pytest.raises(InputError, match=r"10 training rows.*set data\.valid_start"):
        build_dataset(cfg, "train")


def test_preprocessing_options_are_honoured_or_rejected(tmp_path: Path) -> None:
    arrays = write_avmnist(tmp_path, n_train=10, n_test=4)
    cfg = load_run_config(None, ["data.dataset=avmnist", f"data.root={tmp_path}",
                                 "data.valid_start=7", "data.image.mean=[0.1307]",
                                 "data.image.std=[0.3081]"])
    sample = build_dataset(cfg.data, "test")[0]
    expected = (arrays["test"][0][0].astype(np.float32).reshape(1, 28, 28) / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(sample.inputs["image"], torch.from_numpy(expected))
    for override, key in [("data.audio.n_mfcc=13", "data.audio.n_mfcc"),
                          ("data.image.size=[32,32]", "data.image.size"),
                          ("data.text.max_length=8", "data.text.max_length")]:
        with pytest.raises(ConfigError, match=rf"{key}: dataset 'avmnist' ships preprocessed"):
            load_run_config(None, ["data.dataset=avmnist", override])
    load_run_config(None, ["data.dataset=avmnist", "data.image.size=[28,28]"])  # describes it
    with pytest.raises(ConfigError, match=r"data\.valid_start: applies to dataset 'avmnist' only"):
        load_run_config(None, ["data.valid_start=7"])


def test_wrong_shape_names_file_and_expected_shape(tmp_path: Path) -> None:
    write_avmnist(tmp_path)
    np.save(tmp_path / "audio" / "train_data.npy", np.zeros((10, 112, 100), dtype=np.float32))
    with pytest.raises(
        InputError, match=r"audio/train_data\.npy: shape \(10, 112, 100\), expected \(N, 112, 112\)"
    ):
        AVMNIST(tmp_path, "train", valid_start=7)
    np.save(tmp_path / "image" / "test_data.npy", np.zeros((4, 780), dtype=np.float32))
    with pytest.raises(
        InputError, match=r"image/test_data\.npy: shape \(4, 780\), expected \(N, 784\)"
    ):
        AVMNIST(tmp_path, "test")


def test_missing_file_and_row_mismatch(tmp_path: Path) -> None:
    write_avmnist(tmp_path)
    np.save(tmp_path / "train_labels.npy", np.zeros(9, dtype=np.int64))
    with pytest.raises(InputError, match=r"train_labels\.npy: has 9 rows"):
        AVMNIST(tmp_path, "valid", valid_start=7)
    (tmp_path / "test_labels.npy").unlink()
    with pytest.raises(InputError, match=r"test_labels\.npy: AV-MNIST file not found"):
        AVMNIST(tmp_path, "test")
    write_avmnist(tmp_path)
    with pytest.raises(InputError, match="cannot start\\s+at row 55000"):
        AVMNIST(tmp_path, "valid")  # the published boundary does not fit 10 rows


def test_pickles_and_restricts_modalities(tmp_path: Path) -> None:
    write_avmnist(tmp_path)
    ds = AVMNIST(tmp_path, "train", valid_start=7, modalities=["image"])
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert sorted(clone[2].inputs) == ["image"]
    torch.testing.assert_close(clone[2].inputs["image"], ds[2].inputs["image"])


def test_build_dataset_keeps_the_modalities_it_has(tmp_path: Path) -> None:
    write_avmnist(tmp_path, n_train=10, n_test=3)
    cfg = DataConfig(dataset="avmnist", root=tmp_path, valid_start=7)  # modalities include text
    ds = build_dataset(cfg, "test")
    assert ds.info.modalities == ("audio", "image")
    with pytest.raises(ConfigError, match="has only audio, image"):
        build_dataset(
            DataConfig(dataset="avmnist", root=tmp_path, valid_start=7, modalities=["text"]),
            "test",
        )


def test_a_saved_avmnist_config_loads_again(tmp_path: Path) -> None:
    """A checkpoint stores every data key with its (default) value: that is not a user setting
    options that do not apply."""
    from mmfurnace.config import RunConfig
    from mmfurnace.typed_config import parse

    cfg = load_run_config(None, ["data.dataset=avmnist", "data.valid_start=7", "data.image.mean=[0.2]"])
    again = parse(RunConfig, cfg.model_dump(mode="json"), source="meta.json")
    assert again.data == cfg.data
