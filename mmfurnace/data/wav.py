"""Decoding audio files to mono waveforms, and band-limited resampling, in torch."""

from __future__ import annotations

import io
import math
import numbers
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from mmfurnace.errors import InputError, UnsupportedFormat

# Resampling ratios beyond this are almost always a wrong header or a wrong argument.
MAX_RESAMPLE_RATIO = 48.0
# A (new, 1, width) filter bank larger than this means the two rates share no useful
# common divisor (e.g. 44101 -> 16000); refuse instead of allocating gigabytes.
_MAX_KERNEL_ELEMENTS = 50_000_000


def load_wav(data: bytes | str | Path, *, target_rate: int, source: str | None = None) -> Tensor:
    """Decode an audio file to a mono waveform at ``target_rate``.

    Returns (samples,) float32 in [-1, 1]. Stereo is averaged to mono. Raises
    InputError naming ``source`` (or the path) for unreadable, empty, non-finite or
    silent audio and for sample rates that cannot be resampled.
    """
    name = _source_name(data, source)
    if isinstance(data, str | Path) and not Path(data).is_file():
        # libsndfile reports a missing file only as "System error".
        raise InputError(f"{name}: audio file not found")
    try:
        if isinstance(data, bytes | bytearray):
            check_wav_format(io.BytesIO(data), name)
        else:
            with open(data, "rb") as f:
                check_wav_format(f, name)
    except OSError as exc:
        raise InputError(f"{name}: cannot read audio file ({exc.strerror or exc})") from exc
    try:
        handle: Any = io.BytesIO(data) if isinstance(data, bytes | bytearray) else str(data)
        frames, rate = sf.read(handle, dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises several unrelated types
        raise InputError(f"{name}: cannot decode audio ({exc})") from exc
    waveform = torch.from_numpy(np.ascontiguousarray(frames.mean(axis=1, dtype=np.float32)))
    return prepare_waveform(waveform, int(rate), target_rate, name)


# WAVE format tag -> the bits per sample whose samples are unambiguous. libsndfile reads plain
# PCM by its container (whole bytes) and ignores the declared bit depth: 7/12/17-bit samples
# come back as 8/16/24-bit ones, right only if the writer left-justified them (the spec; many
# writers do not, and their audio comes out 2**k times too quiet). WAVE_FORMAT_EXTENSIBLE
# (0xFFFE) declares container and valid bits apart and is decoded as declared.
_WAV_BITS: dict[int, tuple[int, ...]] = {
    0x0001: (8, 16, 24, 32),  # PCM
    0x0003: (32, 64),  # IEEE float
    0x0006: (8,),  # A-law
    0x0007: (8,),  # u-law
}


def check_wav_format(f: BinaryIO, name: str) -> None:
    """Raise UnsupportedFormat when the RIFF/WAVE file ``f`` (positioned at its start) holds
    a sample format that libsndfile would not decode as declared (see ``_WAV_BITS``), and
    InputError when its header is truncated; other containers (FLAC, OGG) pass untouched."""
    head = f.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
        return
    while True:
        chunk = f.read(8)
        if len(chunk) < 8:
            raise InputError(f"{name}: WAV file has no fmt chunk")
        kind, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if kind == b"fmt ":
            fmt = f.read(16)
            if size < 16 or len(fmt) < 16:
                raise InputError(f"{name}: WAV fmt chunk is truncated ({size} bytes)")
            tag, _, _, _, _, bits = struct.unpack("<HHIIHH", fmt)
            allowed = _WAV_BITS.get(tag)
            if allowed is not None and bits not in allowed:
                raise UnsupportedFormat(
                    f"{name}: WAV sample format of {bits} bits per sample (format tag {tag:#06x}) "
                    "is not decoded reliably; send 8/16/24/32-bit PCM, 32/64-bit float, A-law "
                    "or u-law (or WAVE_FORMAT_EXTENSIBLE)"
                )
            return
        f.seek(size + (size & 1), io.SEEK_CUR)  # chunks are word-aligned


def _source_name(data: object, source: str | None) -> str:
    if source is not None:
        return source
    if isinstance(data, str | Path):
        return str(data)
    return "<audio bytes>"


def prepare_waveform(waveform: Tensor, rate: int, target_rate: int, name: str) -> Tensor:
    """Validate a (samples,) waveform and bring it to ``target_rate`` as float32 in [-1, 1]."""
    if waveform.numel() == 0:
        raise InputError(f"{name}: audio has zero samples")
    if not bool(torch.isfinite(waveform).all()):
        raise InputError(f"{name}: audio contains NaN or infinite samples")
    if not bool(waveform.ne(0).any()):
        raise InputError(f"{name}: audio is silent (every sample is zero)")
    if rate != target_rate:
        try:
            waveform = resample(waveform, rate, target_rate)
        except InputError as exc:
            raise InputError(f"{name}: {exc}") from exc
    # Float files may hold values past full scale and sinc resampling can overshoot
    # slightly; the contract downstream is [-1, 1].
    return waveform.to(torch.float32).clamp_(-1.0, 1.0)


# ---------------------------------------------------------------------------- resample


def resample(waveform: Tensor, orig_rate: int, new_rate: int) -> Tensor:
    """Band-limited resampling over the last axis (windowed sinc, Hann window).

    (..., samples) -> (..., ceil(samples * new_rate / orig_rate)). Same algorithm as
    torchaudio's ``sinc_interp_hann`` (lowpass_filter_width=6, rolloff=0.99): reduce
    the rates by their gcd, build one filter per output phase, apply with a strided
    conv1d. Runs on the waveform's device.
    """
    _check_rates(orig_rate, new_rate)
    orig_rate, new_rate = int(orig_rate), int(new_rate)
    if orig_rate == new_rate:
        return waveform
    if not waveform.is_floating_point():
        raise InputError(f"resample needs a floating-point waveform, got {waveform.dtype}")
    gcd = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // gcd, new_rate // gcd
    kernel, width = _sinc_kernel(orig, new, device=waveform.device, dtype=waveform.dtype)
    shape = waveform.shape
    flat = waveform.reshape(-1, shape[-1])
    length = flat.shape[-1]
    padded = torch.nn.functional.pad(flat, (width, width + orig))
    out = torch.nn.functional.conv1d(padded[:, None], kernel, stride=orig)
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)
    target = -(-new * length // orig)  # exact integer ceil
    return out[:, :target].reshape(*shape[:-1], -1)


def _check_rates(orig_rate: int, new_rate: int) -> None:
    for label, rate in (("source", orig_rate), ("target", new_rate)):
        if not (
            isinstance(rate, numbers.Real)
            and math.isfinite(rate)
            and rate > 0
            and rate == int(rate)
        ):
            raise InputError(f"{label} sample rate must be a positive integer, got {rate}")
    ratio = max(orig_rate / new_rate, new_rate / orig_rate)
    if ratio > MAX_RESAMPLE_RATIO:
        raise InputError(
            f"cannot resample {orig_rate} Hz -> {new_rate} Hz: ratio {ratio:.1f} exceeds "
            f"{MAX_RESAMPLE_RATIO:g}; check the file's sample rate"
        )
    gcd = math.gcd(int(orig_rate), int(new_rate))
    orig, new = int(orig_rate) // gcd, int(new_rate) // gcd
    if new * (orig + 2 * math.ceil(6 * orig / (min(orig, new) * 0.99))) > _MAX_KERNEL_ELEMENTS:
        raise InputError(
            f"cannot resample {orig_rate} Hz -> {new_rate} Hz: the rates share no usable "
            "common divisor"
        )


def _sinc_kernel(
    orig: int, new: int, *, device: torch.device, dtype: torch.dtype, lowpass_width: int = 6
) -> tuple[Tensor, int]:
    """Filter bank (new, 1, 2 * width + orig) and its half-width, for gcd-reduced rates."""
    # Cut below the lower Nyquist frequency so the transition band does not alias.
    base = min(orig, new) * 0.99
    width = math.ceil(lowpass_width * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64, device=device) / orig
    t = torch.arange(0, -new, -1, dtype=torch.float64, device=device)[:, None] / new + idx
    t = (t * base).clamp(-lowpass_width, lowpass_width)
    window = torch.cos(t * math.pi / lowpass_width / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    kernel = sinc * window * (base / orig)
    return kernel[:, None, :].to(dtype), width


def as_waveform(audio: Tensor | np.ndarray, name: str) -> Tensor:
    """A (samples,) float tensor from a tensor or array; integer PCM is scaled to [-1, 1]."""
    if isinstance(audio, np.ndarray):
        if audio.dtype == np.int16:
            audio = audio.astype(np.float32) / 32768.0
        elif audio.dtype == np.int32:
            audio = audio.astype(np.float32) / 2147483648.0
        elif not np.issubdtype(audio.dtype, np.floating):
            raise InputError(f"{name}: waveform dtype {audio.dtype} is not float, int16 or int32")
        audio = torch.from_numpy(np.ascontiguousarray(audio))
    if not isinstance(audio, Tensor):
        raise InputError(f"{name}: expected a path, bytes, tensor or array, got {type(audio)}")
    if audio.dim() != 1:
        raise InputError(f"{name}: waveform must be 1-D (samples,), got shape {tuple(audio.shape)}")
    if not audio.is_floating_point():
        raise InputError(f"{name}: waveform tensor must be floating point, got {audio.dtype}")
    return audio
