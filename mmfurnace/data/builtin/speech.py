"""Spoken digits synthesized offline with espeak-ng (a Debian package, not a Python one).

Each clip is one digit spoken by one espeak-ng voice: a language (which says the numeral
in that language) plus a voice variant (timbre), at a given speed (words per minute) and
pitch (0-99). Clips come back as float32 mono at 16 kHz with silence trimmed.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from mmfurnace.errors import InputError, MissingDependencyError

SAMPLE_RATE = 16000

# Languages that speak the numeral: the English accents say the English word, the others
# their own language's word. Six of ten are English so that English dominates; the
# German/French/Spanish/Italian words make each class sound several different ways.
SPEECH_LANGUAGES: tuple[str, ...] = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-029",
    "en-gb-x-rp",
    "en-us-nyc",
    "de",
    "fr-fr",
    "es",
    "it",
)

# espeak-ng voice variants (files under espeak-ng-data/voices/!v), disjoint per split so
# that valid/test audio is spoken in timbres the training set never heard.
VOICE_VARIANTS: dict[str, tuple[str, ...]] = {
    "train": (
        "m1", "m2", "m3", "m4", "m5", "m6", "f1", "f2", "f3", "klatt",
        "klatt2", "klatt4", "croak", "whisper", "Alex", "Annie", "Andy", "adam", "anika",
        "benjamin",
    ),
    "valid": ("m7", "f4", "klatt3", "Lee", "linda"),
    "test": ("m8", "f5", "klatt6", "david", "steph"),
}  # fmt: skip


@dataclass(frozen=True)
class Voice:
    """One way of speaking: ``espeak-ng -v {language}+{variant} -s {speed} -p {pitch}``."""

    language: str
    variant: str
    speed: int
    pitch: int

    @property
    def name(self) -> str:
        return f"{self.language}+{self.variant}"


def find_espeak() -> str:
    """Path of the espeak-ng executable, or a clear error saying how to install it."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise MissingDependencyError(
            "espeak-ng was not found on PATH; the digits-av audio is synthesized with it. "
            "Install it with `apt-get install espeak-ng` (Debian/Ubuntu) or `make system-deps`."
        )
    return path


def espeak_version(exe: str) -> str:
    """The version line espeak-ng prints, e.g. 'eSpeak NG text-to-speech: 1.51 ...'."""
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip().split("  Data at:")[0]


def synthesize(exe: str, text: str, voice: Voice) -> np.ndarray:
    """Speak ``text``; returns (samples,) float32 at 16 kHz, leading/trailing silence trimmed."""
    cmd = [exe, "-v", voice.name, "-s", str(voice.speed), "-p", str(voice.pitch), "--stdout", text]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0 or len(proc.stdout) < 64:
        raise InputError(
            f"espeak-ng failed for voice {voice.name!r} saying {text!r} "
            f"(exit {proc.returncode}): {proc.stderr.decode(errors='replace').strip()}"
        )
    pcm, rate = _parse_wav(proc.stdout)
    return _trim_silence(_resample(pcm, rate, SAMPLE_RATE), voice)


def synthesize_many(
    exe: str,
    jobs: Sequence[tuple[str, Voice]],
    *,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> list[np.ndarray]:
    """Run ``synthesize`` for every (text, voice), at most ``workers`` espeak-ng processes
    at a time; results are in the order of ``jobs``."""
    results: list[np.ndarray] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, clip in enumerate(pool.map(lambda job: synthesize(exe, *job), jobs)):
            results.append(clip)
            if progress is not None and (i + 1 == len(jobs) or (i + 1) % 100 == 0):
                progress(i + 1, len(jobs))
    return results


def _parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    # espeak-ng --stdout writes a streaming header whose sizes are placeholders, so the
    # data chunk is read to the end of the bytes instead of trusting its length.
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise InputError("espeak-ng did not write a WAV stream")
    pos, rate, bits = 12, 0, 0
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if chunk == b"fmt ":
            _, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[pos + 8 : pos + 24])
            if channels != 1 or bits != 16:
                raise InputError(
                    f"espeak-ng wrote {channels} channels of {bits} bits; expected mono 16-bit"
                )
        elif chunk == b"data":
            raw = data[pos + 8 :]
            pcm = np.frombuffer(raw[: len(raw) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
            return pcm, rate
        pos += 8 + size
    raise InputError("espeak-ng's WAV stream has no data chunk")


def _resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Band-limited resampling by truncating (or zero-padding) the spectrum. Exact for a
    clip that starts and ends in silence, as espeak-ng's do, and needs only numpy."""
    if rate == target:
        return audio.astype(np.float32)
    n_out = round(len(audio) * target / rate)
    spectrum = np.fft.rfft(audio.astype(np.float64))
    return (np.fft.irfft(spectrum, n_out) * (n_out / len(audio))).astype(np.float32)


def _trim_silence(audio: np.ndarray, voice: Voice) -> np.ndarray:
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak <= 1e-4:
        raise InputError(f"espeak-ng produced silence for voice {voice.name!r}")
    loud = np.flatnonzero(np.abs(audio) > 0.02 * peak)
    return audio[loud[0] : loud[-1] + 1]
