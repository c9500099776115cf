"""Audio preprocessing: a recording (file, bytes or waveform) to features, all in torch.

Decoding and resampling live in :mod:`mmfurnace.data.wav`, the log-mel and MFCC features in
:mod:`mmfurnace.data.audio_features`; both are re-exported here, the import path users know.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mmfurnace.data.audio_features import log_mel_spectrogram, mel_filterbank, mfcc
from mmfurnace.data.wav import (
    MAX_RESAMPLE_RATIO,
    as_waveform,
    check_wav_format,
    load_wav,
    prepare_waveform,
    resample,
)
from mmfurnace.errors import InputError

__all__ = ["FEATURES", "MAX_RESAMPLE_RATIO", "AudioPreprocessor", "check_wav_format", "load_wav",
           "log_mel_spectrogram", "mel_filterbank", "mfcc", "resample"]


FEATURES = ("logmel", "mfcc", "speech_mel")


class AudioPreprocessor:
    """Audio -> (frames, features) float32, the input of an audio encoder.

    Decodes (or takes a waveform), resamples to ``sample_rate``, keeps at most
    ``max_seconds`` and computes MFCC (``features="mfcc"``, n_mfcc per frame),
    log-mel (``features="logmel"``, n_mels per frame) or the fixed front-end of the
    pretrained ``speech_embedding`` encoder (``features="speech_mel"``: 16 kHz only, 32 bins,
    at least 76 frames; n_mfcc/n_mels/n_fft/hop_length are the model's, see
    :mod:`mmfurnace.data.speech_mel`).
    """

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        features: str = "mfcc",
        n_mfcc: int = 20,
        n_mels: int = 40,
        n_fft: int = 512,
        hop_length: int = 160,
        max_seconds: float | None = 2.0,
    ) -> None:
        if features not in FEATURES:
            raise InputError(f"unknown audio features {features!r}; known: {', '.join(FEATURES)}")
        for label, value in (
            ("sample_rate", sample_rate),
            ("n_mfcc", n_mfcc),
            ("n_mels", n_mels),
            ("n_fft", n_fft),
            ("hop_length", hop_length),
        ):
            if int(value) != value or value <= 0:
                raise InputError(f"audio {label} must be a positive integer, got {value}")
        if features == "mfcc" and n_mfcc > n_mels:
            raise InputError(f"n_mfcc ({n_mfcc}) cannot exceed n_mels ({n_mels})")
        if max_seconds is not None and max_seconds <= 0:
            raise InputError(f"max_seconds must be positive or None, got {max_seconds}")
        if features == "speech_mel":
            from mmfurnace.data import speech_mel as sm

            if sample_rate != sm.SAMPLE_RATE:
                raise InputError(
                    f"audio features 'speech_mel' need sample_rate {sm.SAMPLE_RATE} (the rate "
                    f"speech_embedding was trained at), got {sample_rate}"
                )
            # Its front-end is fixed; record the values it really uses.
            n_mels, n_fft, hop_length = sm.N_MELS, sm.N_FFT, sm.HOP_LENGTH
        self.sample_rate = int(sample_rate)
        self.features = features
        self.n_mfcc = int(n_mfcc)
        self.n_mels = int(n_mels)
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.max_seconds = max_seconds

    @property
    def feature_dim(self) -> int:
        return self.n_mfcc if self.features == "mfcc" else self.n_mels

    @property
    def max_samples(self) -> int | None:
        if self.max_seconds is None:
            return None
        return max(1, round(self.max_seconds * self.sample_rate))

    @property
    def max_frames(self) -> int | None:
        """The most frames one clip can give (None without ``max_seconds``)."""
        if self.max_samples is None:
            return None
        if self.features == "speech_mel":
            from mmfurnace.data.speech_mel import speech_mel_frames

            return speech_mel_frames(self.max_samples)
        return self.max_samples // self.hop_length + 1

    def __call__(
        self,
        audio: bytes | str | Path | Tensor | np.ndarray,
        *,
        sample_rate: int | None = None,
        source: str | None = None,
    ) -> Tensor:
        """Features (frames, feature_dim) float32 for one recording.

        A file (path or bytes) carries its own rate; a (samples,) waveform is taken to
        be at ``sample_rate`` (default: this preprocessor's rate) and resampled if needed.
        """
        if isinstance(audio, bytes | bytearray | str | Path):
            waveform = load_wav(audio, target_rate=self.sample_rate, source=source)
        else:
            name = source or "<waveform>"
            waveform = as_waveform(audio, name)
            rate = self.sample_rate if sample_rate is None else sample_rate
            waveform = prepare_waveform(waveform, rate, self.sample_rate, name)
        return self.features_batch(waveform[None])[0]

    def features_batch(self, waveforms: Tensor) -> Tensor:
        """(batch, samples) at ``sample_rate`` -> (batch, frames, feature_dim), on their device."""
        if waveforms.dim() != 2:
            raise InputError(
                f"features_batch expects (batch, samples), got shape {tuple(waveforms.shape)}"
            )
        if waveforms.shape[1] == 0:
            raise InputError("features_batch got waveforms with zero samples")
        if self.max_samples is not None:
            waveforms = waveforms[:, : self.max_samples]
        if self.features == "speech_mel":
            from mmfurnace.data.speech_mel import speech_mel

            return speech_mel(waveforms)
        common = {
            "sample_rate": self.sample_rate,
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
            "n_mels": self.n_mels,
        }
        if self.features == "mfcc":
            out = mfcc(waveforms, n_mfcc=self.n_mfcc, **common)
        else:
            out = log_mel_spectrogram(waveforms, **common)
        return out.to(torch.float32)

    def to_dict(self) -> dict[str, object]:
        return {
            "sample_rate": self.sample_rate,
            "features": self.features,
            "n_mfcc": self.n_mfcc,
            "n_mels": self.n_mels,
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
            "max_seconds": self.max_seconds,
        }


