"""Image preprocessing: decode, convert to L/RGB, resize, scale to [0, 1], normalise."""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from mmfurnace.errors import InputError

# ITU-R 601-2 luma, the weights Pillow's convert("L") uses, so arrays and files agree.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def decode_image(data: bytes | str | Path, *, source: str | None = None) -> Image.Image:
    """Decode an image file fully (so truncation fails here, not later).

    Raises InputError naming ``source`` (or the path) for a missing, corrupt, truncated
    or unsupported file.
    """
    name = source or (str(data) if isinstance(data, str | Path) else "<image bytes>")
    if isinstance(data, str | Path):
        try:
            data = Path(data).read_bytes()
        except OSError as exc:
            raise InputError(f"{name}: cannot read image file ({exc.strerror or exc})") from exc
    try:
        with warnings.catch_warnings():
            # A decompression-bomb warning would otherwise leak; oversize is an error below.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except Image.UnidentifiedImageError as exc:
        raise InputError(f"{name}: not a recognised image format") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"{name}: image is too large to decode safely ({exc})") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # truncated / corrupt streams
        raise InputError(f"{name}: corrupt or truncated image ({exc})") from exc
    return image


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )


class ImagePreprocessor:
    """Image -> (channels, height, width) float32, normalised with ``mean``/``std``.

    ``size`` is (height, width); resizing is bilinear (Pillow, antialiased when shrinking),
    done on [0, 1] floats so uint8 files and float arrays go through the same path.
    """

    def __init__(
        self,
        *,
        size: tuple[int, int] = (28, 28),
        channels: int = 1,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
    ) -> None:
        if channels not in (1, 3):
            raise InputError(f"image channels must be 1 or 3, got {channels}")
        if len(size) != 2 or any(int(s) != s or s <= 0 for s in size):
            raise InputError(
                f"image size must be two positive integers (height, width), got {size}"
            )
        if len(mean) != len(std) or len(mean) not in (1, channels):
            raise InputError(
                f"image mean and std need 1 or {channels} values each, got {len(mean)} and {len(std)}"
            )
        if any(s <= 0 for s in std):
            raise InputError(f"image std must be positive, got {list(std)}")
        self.size = (int(size[0]), int(size[1]))
        self.channels = channels
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(
        self,
        image: bytes | str | Path | np.ndarray | Image.Image,
        *,
        source: str | None = None,
    ) -> Tensor:
        """Preprocess one image to (channels, height, width) float32."""
        if isinstance(image, bytes | bytearray | str | Path):
            image = decode_image(
                bytes(image) if isinstance(image, bytearray) else image, source=source
            )
        if isinstance(image, Image.Image):
            pixels = self._from_pil(image, source or "<image>")
        elif isinstance(image, np.ndarray):
            pixels = self._from_array(image, source or "<image array>")
        else:
            raise InputError(
                f"{source or '<image>'}: expected a path, bytes, array or PIL image, got {type(image)}"
            )
        resized = np.stack([self._resize(pixels[..., c]) for c in range(self.channels)])
        return (torch.from_numpy(resized) - self._mean) / self._std

    def _from_pil(self, image: Image.Image, name: str) -> np.ndarray:
        """(H, W, channels) float32 in [0, 1]."""
        # Phone photos are stored sideways with an EXIF rotation tag. Pillow parses the EXIF
        # block only here, and raises its own types on garbage (SyntaxError "not a TIFF file").
        try:
            image = ImageOps.exif_transpose(image)
        except (SyntaxError, ValueError, TypeError, KeyError, IndexError, OSError, struct.error,
                ZeroDivisionError, UnicodeError) as exc:
            raise InputError(f"{name}: corrupt EXIF metadata ({type(exc).__name__}: {exc})") from None
        mode = "L" if self.channels == 1 else "RGB"
        if image.mode in ("I", "I;16", "F") and mode == "L":
            # Pillow clips 16-bit and float images to 0..255 on convert("L"); scale instead.
            raw = np.asarray(image, dtype=np.float32)
            peak = 65535.0 if image.mode.startswith("I") else max(1.0, float(raw.max()))
            return np.clip(raw / peak, 0.0, 1.0)[..., None]
        if _has_alpha(image):
            # Transparent pixels keep whatever colour the file stores under them (often black):
            # show them as a viewer does, on white, which is also what cut-out photos
            # (e.g. Tux Paint stamps) are meant to be seen on.
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, rgba)
        pixels = np.asarray(image.convert(mode), dtype=np.float32) / 255.0
        return pixels.reshape(pixels.shape[0], pixels.shape[1], self.channels)

    def _from_array(self, array: np.ndarray, name: str) -> np.ndarray:
        """(H, W) or (H, W, C) uint8 / [0, 1] float -> (H, W, channels) float32 in [0, 1]."""
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
            raise InputError(
                f"{name}: image array must be (height, width) or (height, width, 1|3|4), "
                f"got shape {array.shape}"
            )
        if array.size == 0:
            raise InputError(f"{name}: image array is empty (shape {array.shape})")
        if array.dtype == np.uint8:
            pixels = array.astype(np.float32) / 255.0
        elif np.issubdtype(array.dtype, np.floating):
            pixels = array.astype(np.float32)
            if not np.isfinite(pixels).all():
                raise InputError(f"{name}: image array contains NaN or infinite values")
            lo, hi = float(pixels.min()), float(pixels.max())
            if lo < 0.0 or hi > 1.0:
                raise InputError(
                    f"{name}: float image values must lie in [0, 1], got [{lo:g}, {hi:g}]"
                    " (divide 0-255 data by 255)"
                )
        else:
            raise InputError(f"{name}: image array dtype must be uint8 or float, got {array.dtype}")
        if pixels.ndim == 2:
            pixels = pixels[..., None]
        if pixels.shape[2] == 4:  # composite on white, as for files with alpha
            alpha = pixels[..., 3:]
            pixels = pixels[..., :3] * alpha + (1.0 - alpha)
        if self.channels == 1 and pixels.shape[2] == 3:
            pixels = (pixels @ _LUMA)[..., None]
        elif self.channels == 3 and pixels.shape[2] == 1:
            pixels = np.repeat(pixels, 3, axis=2)
        return pixels

    def _resize(self, plane: np.ndarray) -> np.ndarray:
        """One (H, W) float32 plane -> (height, width)."""
        height, width = self.size
        if plane.shape == (height, width):
            return np.ascontiguousarray(plane, dtype=np.float32)
        # A 2-D float32 array becomes a mode "F" image: resized without rounding to uint8.
        resized = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32)).resize(
            (width, height), Image.Resampling.BILINEAR
        )
        return np.asarray(resized, dtype=np.float32)

    def to_dict(self) -> dict[str, object]:
        return {
            "size": list(self.size),
            "channels": self.channels,
            "mean": list(self.mean),
            "std": list(self.std),
        }
