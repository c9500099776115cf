"""The shared decoders (training and serving use the same ones) name hostile files: garbage
EXIF in an image, WAV sample formats libsndfile would not decode as declared — from bytes and
from paths, as a data reader passes them."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from mmfurnace.data.audio import AudioPreprocessor, load_wav
from mmfurnace.data.image import ImagePreprocessor
from mmfurnace.errors import InputError, UnsupportedFormat


def png_with_exif(exif: bytes) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(buf, format="PNG")
    png = buf.getvalue()
    chunk = struct.pack(">I", len(exif)) + b"eXIf" + exif + struct.pack(">I", zlib.crc32(b"eXIf" + exif) & 0xFFFFFFFF)
    return png[:33] + chunk + png[33:]  # right after IHDR


def wav(bits: int, fmt: int = 1, extra_chunk: bytes = b"") -> bytes:
    block = max(1, (bits + 7) // 8)
    fmt_chunk = struct.pack("<HHIIHH", fmt, 1, 16000, 16000 * block, block, bits)
    data = bytes(range(1, 256)) * 16
    body = b"WAVE" + extra_chunk + b"fmt " + struct.pack("<I", 16) + fmt_chunk + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize("exif", [b"garbage!garbage!", b"Exif\x00\x00garbage"])
def test_garbage_exif_is_an_input_error_naming_the_file(tmp_path, exif) -> None:
    pre = ImagePreprocessor(size=(8, 8))
    with pytest.raises(InputError, match=r"x\.png: corrupt EXIF metadata"):
        pre(png_with_exif(exif), source="x.png")
    path = tmp_path / "sample.png"
    path.write_bytes(png_with_exif(exif))
    with pytest.raises(InputError, match="corrupt EXIF"):
        pre(path, source=str(path))


def test_harmless_exif_still_decodes() -> None:
    out = ImagePreprocessor(size=(8, 8), mean=(0.0,), std=(1.0,))(png_with_exif(b"MM\x00*\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00"))
    np.testing.assert_allclose(out.numpy().reshape(64), np.arange(64) / 255.0, atol=1e-6)


@pytest.mark.parametrize("bits", [7, 12, 17, 20])
def test_odd_pcm_bit_depths_are_refused_from_bytes_and_paths(tmp_path, bits) -> None:
    with pytest.raises(UnsupportedFormat, match=f"{bits} bits per sample"):
        load_wav(wav(bits), target_rate=16000, source="clip.wav")
    path = tmp_path / "clip.wav"
    path.write_bytes(wav(bits))
    with pytest.raises(UnsupportedFormat, match=f"{path}: WAV sample format of {bits} bits"):
        AudioPreprocessor(max_seconds=None)(path)


def test_fmt_chunk_found_after_other_chunks_and_common_formats_pass(tmp_path) -> None:
    odd_list = b"LIST" + struct.pack("<I", 5) + b"abcde" + b"\0"  # odd size: word-aligned
    with pytest.raises(UnsupportedFormat):
        load_wav(wav(12, extra_chunk=odd_list), target_rate=16000)
    assert load_wav(wav(8, extra_chunk=odd_list), target_rate=16000).shape == (255 * 16,)
    for subtype in ("PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW", "ALAW"):
        buf = io.BytesIO()
        sf.write(buf, 0.5 * np.sin(np.arange(1600) / 5.0), 16000, format="WAV", subtype=subtype)
        assert load_wav(buf.getvalue(), target_rate=16000).shape == (1600,), subtype
    with pytest.raises(InputError, match="no fmt chunk"):
        load_wav(b"RIFF\x04\x00\x00\x00WAVE", target_rate=16000)
    with pytest.raises(InputError, match="truncated"):
        load_wav(b"RIFF\x10\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00", target_rate=16000)
