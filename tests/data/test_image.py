"""Image pipeline: decoding errors, conversion, resizing and normalisation."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mmfurnace.data.image import ImagePreprocessor, decode_image
from mmfurnace.errors import InputError


def png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def gradient() -> np.ndarray:
    """(12, 16) uint8 with a distinct value in every pixel."""
    return (np.arange(12 * 16).reshape(12, 16) + 20).astype(np.uint8)


def test_png_file_without_resize_is_scaled_and_normalised(
    tmp_path: Path, gradient: np.ndarray
) -> None:
    path = tmp_path / "digit.png"
    path.write_bytes(png_bytes(gradient))
    out = ImagePreprocessor(size=(12, 16))(path)
    expected = (torch.from_numpy(gradient).float() / 255.0 - 0.5) / 0.5
    assert out.dtype == torch.float32
    assert out.shape == (1, 12, 16)
    torch.testing.assert_close(out[0], expected, rtol=0, atol=1e-6)


def test_downsampling_matches_antialiased_bilinear() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (56, 44), dtype=np.uint8)
    out = ImagePreprocessor(size=(28, 22), mean=(0.0,), std=(1.0,))(png_bytes(image))
    # torch's antialiased bilinear reproduces Pillow's resampling filter.
    reference = F.interpolate(
        torch.from_numpy(image / 255.0).float()[None, None],
        size=(28, 22),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )[0]
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)


def test_upsampling_float_array_is_plain_bilinear() -> None:
    image = np.random.default_rng(1).random((10, 12)).astype(np.float32)
    out = ImagePreprocessor(size=(25, 31), mean=(0.0,), std=(1.0,))(image)
    reference = F.interpolate(
        torch.from_numpy(image)[None, None], size=(25, 31), mode="bilinear", align_corners=False
    )[0]
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)


def test_rgb_channels_use_per_channel_mean_and_std() -> None:
    solid = np.zeros((6, 6, 3), dtype=np.uint8)
    solid[...] = (255, 51, 0)
    prep = ImagePreprocessor(size=(4, 4), channels=3, mean=(0.5, 0.2, 0.0), std=(0.5, 0.1, 0.25))
    out = prep(png_bytes(solid))
    assert out.shape == (3, 4, 4)
    expected = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 4, 4)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_rgb_to_grayscale_agrees_for_files_and_arrays() -> None:
    solid = np.zeros((5, 5, 3), dtype=np.uint8)
    solid[...] = (10, 200, 50)
    prep = ImagePreprocessor(size=(5, 5), mean=(0.0,), std=(1.0,))
    luma = (0.299 * 10 + 0.587 * 200 + 0.114 * 50) / 255.0
    from_file = prep(png_bytes(solid))
    from_array = prep(solid)
    # Pillow rounds the luma to an integer; the array path keeps it exact.
    torch.testing.assert_close(
        from_file, torch.full((1, 5, 5), round(luma * 255) / 255), rtol=0, atol=1e-6
    )
    torch.testing.assert_close(from_array, torch.full((1, 5, 5), luma), rtol=0, atol=1e-6)


def test_gray_array_and_palette_image_become_rgb(gradient: np.ndarray) -> None:
    prep = ImagePreprocessor(size=(12, 16), channels=3, mean=(0.0,), std=(1.0,))
    out = prep(gradient)
    assert out.shape == (3, 12, 16)
    torch.testing.assert_close(out[2], torch.from_numpy(gradient).float() / 255, rtol=0, atol=1e-6)
    palette = Image.fromarray(gradient).convert("P")
    torch.testing.assert_close(prep(palette), out, rtol=0, atol=1e-6)


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    deep = np.array([[0, 32768], [65535, 16384]], dtype=np.uint16)
    out = ImagePreprocessor(size=(2, 2), mean=(0.0,), std=(1.0,))(png_bytes(deep))
    torch.testing.assert_close(out[0], torch.from_numpy(deep / 65535.0).float(), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- bad input


def test_truncated_png_names_the_file(tmp_path: Path) -> None:
    noise = np.random.default_rng(3).integers(0, 256, (64, 64), dtype=np.uint8)
    data = png_bytes(noise)  # noise does not compress: ~4 KiB of pixel data
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.png: corrupt or truncated"):
        decode_image(path)
    with pytest.raises(InputError, match=r"cut\.png"):
        ImagePreprocessor()(path)


def test_truncated_jpeg_bytes_name_the_source() -> None:
    noise = np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = png_bytes(noise, fmt="JPEG")
    with pytest.raises(InputError, match=r"upload-3\.jpg: corrupt or truncated"):
        decode_image(data[: len(data) // 2], source="upload-3.jpg")


def test_not_an_image_and_missing_file(tmp_path: Path) -> None:
    junk = tmp_path / "notes.png"
    junk.write_bytes(b"this is text, not pixels" * 10)
    with pytest.raises(InputError, match=r"notes\.png: not a recognised image format"):
        decode_image(junk)
    with pytest.raises(InputError, match=r"absent\.png: cannot read image file"):
        decode_image(tmp_path / "absent.png")


@pytest.mark.parametrize(
    ("array", "problem"),
    [
        (np.zeros((2, 3, 4, 5), np.uint8), r"shape \(2, 3, 4, 5\)"),
        (np.zeros(7, np.uint8), r"shape \(7,\)"),
        (np.zeros((4, 4, 2), np.uint8), r"shape \(4, 4, 2\)"),
        (np.full((4, 4), 255.0), r"\[0, 1\].*divide"),
        (np.full((4, 4), np.nan), "NaN"),
        (np.zeros((4, 4), np.int64), "dtype"),
    ],
)
def test_bad_arrays_are_rejected_with_the_problem(array: np.ndarray, problem: str) -> None:
    with pytest.raises(InputError, match=rf"frame-9: .*{problem}"):
        ImagePreprocessor()(array, source="frame-9")


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"channels": 2}, "channels must be 1 or 3"),
        ({"channels": 3, "mean": (0.1, 0.2), "std": (1.0, 1.0)}, "1 or 3 values"),
        ({"mean": (0.5,), "std": (0.5, 0.5)}, "1 or 1 values"),
        ({"std": (0.0,)}, "std must be positive"),
        ({"size": (0, 28)}, "size"),
    ],
)
def test_bad_settings_are_rejected(kwargs: dict, problem: str) -> None:
    with pytest.raises(InputError, match=problem):
        ImagePreprocessor(**kwargs)


def test_settings_round_trip() -> None:
    prep = ImagePreprocessor(size=(32, 24), channels=3, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))
    settings = prep.to_dict()
    assert settings == {
        "size": [32, 24],
        "channels": 3,
        "mean": [0.4, 0.5, 0.6],
        "std": [0.2, 0.3, 0.4],
    }
    image = np.random.default_rng(2).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    rebuilt = ImagePreprocessor(**{**settings, "size": tuple(settings["size"])})
    torch.testing.assert_close(rebuilt(image), prep(image), rtol=0, atol=0)


def test_transparent_pixels_are_composited_on_white() -> None:
    # A cut-out photo: opaque red square on a transparent background whose stored colour is
    # black. A viewer shows white there; so must the preprocessor (files and arrays alike).
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[2:6, 2:6] = (255, 0, 0, 255)
    rgba[0, 0] = (0, 0, 0, 128)  # half transparent black over white -> mid grey
    prep = ImagePreprocessor(size=(8, 8), channels=3, mean=(0.0,), std=(1.0,))
    for source in (png_bytes(rgba), rgba):
        out = prep(source)
        torch.testing.assert_close(out[:, 7, 7], torch.ones(3), rtol=0, atol=1e-6)
        torch.testing.assert_close(out[:, 3, 3], torch.tensor([1.0, 0.0, 0.0]), rtol=0, atol=1e-6)
        torch.testing.assert_close(out[:, 0, 0], torch.full((3,), 127 / 255), rtol=0, atol=2e-3)
    gray = ImagePreprocessor(size=(8, 8), mean=(0.0,), std=(1.0,))(png_bytes(rgba))
    assert float(gray[0, 7, 7]) == pytest.approx(1.0)


def test_pretrained_rgb_224_path_gives_efficientnet_normalisation(gradient: np.ndarray) -> None:
    # configs/pretrained.yaml: 224x224 RGB, (x - 127) / 128 on 0..255 pixels.
    prep = ImagePreprocessor(size=(224, 224), channels=3, mean=(0.4980392,), std=(0.5019608,))
    black_white = np.zeros((20, 20), dtype=np.uint8)
    black_white[:, 10:] = 255
    out = prep(png_bytes(black_white))
    assert out.shape == (3, 224, 224)
    torch.testing.assert_close(out[:, 0, 0], torch.full((3,), -127 / 128), rtol=0, atol=1e-5)
    torch.testing.assert_close(out[:, 0, -1], torch.full((3,), 128 / 128), rtol=0, atol=1e-5)
