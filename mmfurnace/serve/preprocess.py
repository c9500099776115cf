"""Raw request inputs -> model input arrays, in a worker pool (threads or processes).

Threads vs processes — measured by ``benchmarks/serve_load.py`` on the 2-core CPU box this
project is developed on, digits-av samples (28x28 PNG, 1 s 16 kHz WAV -> MFCC, short text),
2 workers, torch at 1 intra-op thread, the demo's cross-attention model:
  * quiet machine (load average < 1), aiohttp load generator: the pool alone, 64 rows in
    flight, pools taking turns: threads 520 rows/s, processes 990 rows/s (1.5 s start-up);
    over HTTP at 64 clients, variants (b)/(c)/(d): threads 226/261/172 req/s, processes
    369/390/308 req/s;
  * an earlier run on a loaded machine (load average 7-9, httpx load generator) had threads
    ahead: pool 734 vs 667 rows/s, HTTP (d) 50-63 vs 24-26 req/s.
Processes are the default, because they measured faster where the benchmark is meant to run
(a machine not busy with other work). The likely reason: the decoders release the GIL only in
parts (the Python around Pillow, libsndfile, torch and the tokenizer holds it), and the event
loop, the batchers and uvicorn share that interpreter, while a worker process has its own and
its pickling of bytes in and arrays out is cheap next to an MFCC. On a machine saturated by
other work, threads cost less (no extra interpreters): ``preprocess_mode: thread``.

A row's raw inputs are: image -> encoded file bytes, audio -> audio file bytes, text -> str or
UTF-8 bytes; a preprocessed numpy array passes through untouched. Outputs per modality:
image (channels, height, width) float32, audio (frames, features) float32, text (tokens,) int64.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmfurnace.data.info import DatasetInfo
from mmfurnace.errors import ConfigError, InputError
from mmfurnace.serve.media import guarded


@dataclass(frozen=True)
class PreprocessSettings:
    """Plain, picklable preprocessing settings (what a worker process needs to rebuild them).

    image / audio / text: the ``data.image`` / ``data.audio`` / ``data.text`` sections as
    dicts (None: raw input of that modality is not accepted); tokenizer_json: the tokenizer
    serialised as a string (``Tokenizer.to_str()``).
    """

    image: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    tokenizer_json: str | None = None

    @classmethod
    def from_data_settings(
        cls, data: Mapping[str, Any] | None, modalities: list[str], tokenizer: Any | None = None
    ) -> PreprocessSettings:
        """From a data-config dict (``DataConfig.model_dump()`` or export.json's
        ``preprocessing``). Missing sections fall back to the data-config defaults."""
        from mmfurnace.data.config import DataConfig

        raw = dict(data or {})
        defaults = DataConfig().model_dump(mode="json")
        section = {m: {**defaults[m], **(raw.get(m) or {})} for m in ("image", "audio", "text")}
        token_json = tokenizer.to_str() if tokenizer is not None else None
        return cls(
            image=section["image"] if "image" in modalities else None,
            audio=section["audio"] if "audio" in modalities else None,
            text=section["text"] if "text" in modalities and token_json is not None else None,
            tokenizer_json=token_json,
        )


class Preprocessor:
    """Turns one row of raw inputs into model arrays (see the module docstring)."""

    def __init__(self, settings: PreprocessSettings) -> None:
        self.settings = settings
        self._fns: dict[str, Any] = {}
        if settings.image is not None:
            from mmfurnace.data.image import ImagePreprocessor

            c = settings.image
            self._fns["image"] = ImagePreprocessor(
                size=tuple(c["size"]), channels=c["channels"], mean=tuple(c["mean"]), std=tuple(c["std"])
            )
        if settings.audio is not None:
            from mmfurnace.data.audio import AudioPreprocessor

            a = settings.audio
            self._fns["audio"] = AudioPreprocessor(
                sample_rate=a["sample_rate"], features=a["features"], n_mfcc=a["n_mfcc"],
                n_mels=a["n_mels"], n_fft=a["n_fft"], hop_length=a["hop_length"],
                max_seconds=a["max_seconds"],
            )
        if settings.text is not None:
            from tokenizers import Tokenizer

            from mmfurnace.data.text import TextPreprocessor

            assert settings.tokenizer_json is not None
            tokenizer = Tokenizer.from_str(settings.tokenizer_json)
            self._fns["text"] = TextPreprocessor(tokenizer, max_length=settings.text["max_length"])

    @property
    def raw_modalities(self) -> list[str]:
        """Modalities accepted as raw files / text."""
        return sorted(self._fns)

    def output_shape(self, modality: str) -> tuple[int | None, ...]:
        """Per-sample shape this preprocessor produces (None on a variable axis)."""
        fn = self._fns[modality]
        if modality == "image":
            return (fn.channels, *fn.size)
        if modality == "audio":
            return (None, fn.feature_dim)
        return (None,)

    def max_steps(self, modality: str) -> int | None:
        """Longest sequence this preprocessor produces for a sequence modality."""
        fn = self._fns.get(modality)
        if modality == "text" and fn is not None:
            return int(fn.max_length)
        if modality == "audio" and fn is not None:
            return fn.max_frames
        return None

    def needs_work(self, row: Mapping[str, Any]) -> bool:
        return any(not isinstance(v, np.ndarray) for v in row.values())

    def __call__(self, row: Mapping[str, Any]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for m, value in row.items():
            if isinstance(value, np.ndarray):
                out[m] = value
                continue
            out[m] = guarded(m, self._fn(m), value).numpy()
        return out

    def _fn(self, m: str) -> Any:
        fn = self._fns.get(m)
        if fn is None:
            raise InputError(
                f"{m}: this server cannot preprocess raw {m} (no settings or tokenizer for it in "
                "the export); send the preprocessed tensor instead"
            )
        return fn

    def preprocess_batch(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, np.ndarray] | InputError]:
        """Several rows at once: each row's arrays, or the InputError that row raised.

        Images and text are done row by row; audio files are decoded row by row and their
        features (MFCC / log-mel) computed in one batched call over the zero-padded
        waveforms (measured 0.16 vs 0.28 ms per clip at 32 rows), then cut back to each
        clip's own frames. Centred frames with zero padding see the same samples either
        way, and padding frames never raise a clip's maximum (the dB floor's reference), so
        every row equals what ``__call__`` gives it (to float rounding).
        """
        out: list[dict[str, np.ndarray] | InputError] = []
        waves: list[tuple[int, Any]] = []
        for i, row in enumerate(rows):
            try:
                arrays: dict[str, np.ndarray] = {}
                for m, value in row.items():
                    if isinstance(value, np.ndarray):
                        arrays[m] = value
                    elif m == "audio":
                        waves.append((i, guarded(m, self._waveform, value)))
                    else:
                        arrays[m] = guarded(m, self._fn(m), value).numpy()
                out.append(arrays)
            except InputError as exc:
                out.append(exc)
        if waves:
            for (i, _), features in zip(waves, self._audio_features([w for _, w in waves]), strict=True):
                row_out = out[i]
                if isinstance(row_out, dict):
                    row_out["audio"] = features
        return out

    def _waveform(self, value: Any, *, source: str) -> Any:
        from mmfurnace.data.audio import load_wav

        fn = self._fn("audio")
        wave = load_wav(value, target_rate=fn.sample_rate, source=source)
        return wave if fn.max_samples is None else wave[: fn.max_samples]

    def _audio_features(self, waves: list[Any]) -> list[np.ndarray]:
        import torch

        fn = self._fn("audio")
        padded = torch.zeros(len(waves), max(w.shape[0] for w in waves))
        for k, w in enumerate(waves):
            padded[k, : w.shape[0]] = w
        features = fn.features_batch(padded).numpy()
        return [features[k, : w.shape[0] // fn.hop_length + 1] for k, w in enumerate(waves)]

    def check_against(self, info: DatasetInfo, modalities: list[str]) -> None:
        """Raise ConfigError when preprocessing would produce inputs the model cannot take."""
        for m in self.raw_modalities:
            if m not in modalities:
                continue
            got, want = self.output_shape(m), tuple(info.input_shapes[m])
            if got != want:
                raise ConfigError(
                    f"preprocessing of {m} produces per-sample shape {got}, the model takes {want}; "
                    "the export's preprocessing settings do not match its model"
                )
        if "text" in self._fns and "text" in modalities and info.vocab_size is not None:
            vocab = self._fns["text"].vocab_size
            if vocab > info.vocab_size:
                raise ConfigError(
                    f"tokenizer has {vocab} ids but the model's text vocabulary is {info.vocab_size}; "
                    "it is not the tokenizer the model was trained with"
                )


# A worker process builds its Preprocessor once (pool initializer) and reuses it.
_WORKER: Preprocessor | None = None


def _init_worker(settings: PreprocessSettings) -> None:
    global _WORKER
    import torch

    torch.set_num_threads(1)  # this process's own setting: one core per worker
    _WORKER = Preprocessor(settings)


def _run_in_worker(row: Mapping[str, Any]) -> dict[str, np.ndarray]:
    assert _WORKER is not None, "worker initializer did not run"
    return _WORKER(row)


def _ping() -> bool:
    return _WORKER is not None


class PreprocessPool:
    """Runs a :class:`Preprocessor` over rows in ``workers`` threads or processes."""

    def __init__(self, settings: PreprocessSettings, *, workers: int, mode: str = "thread") -> None:
        if workers <= 0:
            raise ConfigError(f"preprocess workers must be positive, got {workers}")
        if mode not in ("thread", "process"):
            raise ConfigError(f"preprocess mode must be 'thread' or 'process', got {mode!r}")
        self.preprocessor = Preprocessor(settings)  # also validates settings in this process
        self.workers = workers
        self.mode = mode
        self._pool: Executor | None = None

    def start(self) -> None:
        if self._pool is not None:
            return
        if self.mode == "thread":
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="mmf-preprocess")
            return
        # spawn, not fork: the server process has running threads (event loop, executors).
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=_init_worker,
            initargs=(self.preprocessor.settings,),
        )
        # Start every worker now, not on the first requests.
        for future in [pool.submit(_ping) for _ in range(self.workers)]:
            future.result(timeout=120)
        self._pool = pool

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    async def run(self, row: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Preprocess one row; rows holding only arrays skip the pool."""
        if not self.preprocessor.needs_work(row):
            return dict(row)
        if self._pool is None:
            raise RuntimeError("preprocess pool is not started")
        fn = self.preprocessor if self.mode == "thread" else _run_in_worker
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, dict(row))
