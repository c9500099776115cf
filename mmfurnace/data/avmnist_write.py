"""Write a packed image + audio dataset in MultiBench's AV-MNIST layout.

So that the same files can be trained by mmfurnace (``data.dataset=avmnist``) and by
MultiBench's own AV-MNIST scripts. What MultiBench's ``get_dataloader`` expects:

    image/{train,test}_data.npy   (N, 784) float32 pixels 0..255 (it divides in place, so
                                  the image files must be float)
    audio/{train,test}_data.npy   (N, 112, 112) float32 spectrogram 0..255
    {train,test}_labels.npy       (N,) int64

Its loader also hard-codes 60,000 train rows (valid = rows 55,000..60,000) and 10,000 test
rows. A small source dataset reaches those sizes only by repeating rows: ``train_rows`` /
``valid_rows`` / ``test_rows`` set the sizes and each split's samples are tiled (a fresh
permutation per pass), so every source sample appears equally often, give or take one. With
``None`` a split keeps its own samples once (valid then starts at the source's train count,
``data.valid_start`` for mmfurnace).

Audio: the source must be packed as log-mel dB features (``data.audio.features=logmel``,
each clip floored ``top_db`` below its own maximum). Each clip is cropped or padded with
silence to 112 frames, its mel axis interpolated to 112 bands when it has another count, and
``[max - top_db, max]`` mapped to 0..255 (silence 0): a spectrogram image as AV-MNIST ships
it. Images are un-normalised with the packed dataset's mean/std back to 0..255.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmfurnace.data.avmnist import AUDIO_SHAPE, IMAGE_SIDE, LAYOUT_FILE, avmnist_files
from mmfurnace.data.cache import PackedDataset, read_header
from mmfurnace.errors import InputError

MULTIBENCH_ROWS = {"train": 55_000, "valid": 5_000, "test": 10_000}
TOP_DB = 80.0  # log_mel_spectrogram's floor below each clip's maximum


def spectrogram_to_avmnist(logmel: np.ndarray, *, top_db: float = TOP_DB) -> np.ndarray:
    """(frames, mels) log-mel dB -> (112, 112) float32 in 0..255.

    Frames past 112 are cut, missing ones are silence (0); mels are linearly interpolated
    to 112 bands. ``[max - top_db, max]`` maps to ``[0, 255]``.
    """
    if logmel.ndim != 2 or logmel.shape[0] == 0:
        raise InputError(f"audio features of shape {logmel.shape}; expected (frames, mels)")
    frames, mels = AUDIO_SHAPE
    x = torch.from_numpy(np.asarray(logmel, dtype=np.float32))
    if x.shape[1] != mels:
        x = F.interpolate(x[None], size=mels, mode="linear", align_corners=True)[0]
    peak = float(x.max())
    scaled = ((x - (peak - top_db)) / top_db).clamp(0.0, 1.0) * 255.0
    out = np.zeros(AUDIO_SHAPE, dtype=np.float32)
    n = min(frames, scaled.shape[0])
    out[:n] = scaled[:n].numpy()
    return out


def image_to_avmnist(image: np.ndarray, *, mean: float, std: float) -> np.ndarray:
    """(1, 28, 28) normalised image -> (784,) float32 pixels 0..255."""
    if image.shape != (1, IMAGE_SIDE, IMAGE_SIDE):
        raise InputError(
            f"image of shape {image.shape}; AV-MNIST needs (1, {IMAGE_SIDE}, {IMAGE_SIDE}) "
            "(pack with data.image.size=[28, 28] data.image.channels=1)"
        )
    pixels = (np.asarray(image, dtype=np.float32) * std + mean) * 255.0
    return np.clip(pixels, 0.0, 255.0).reshape(-1)


def tile_rows(n_source: int, n_rows: int | None, rng: np.random.Generator) -> np.ndarray:
    """Indices into a split of ``n_source`` samples giving ``n_rows`` rows (all once, in
    order, when None): whole shuffled passes, then part of one more, so counts differ by at
    most one."""
    if n_rows is None:
        return np.arange(n_source)
    passes = -(-n_rows // n_source)
    return np.concatenate([rng.permutation(n_source) for _ in range(passes)])[:n_rows]


def packed_to_avmnist(
    packed: Path,
    out: Path,
    *,
    rows: dict[str, int | None] | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``out`` in AV-MNIST's layout from the packed dataset ``packed``.

    rows: split -> number of rows ("train", "valid", "test"); default MultiBench's
          55,000 / 5,000 / 10,000 (repeating samples); None for a split keeps its samples
          once. Returns the layout summary, also saved as ``out/layout.json``:
          ``valid_start`` (the first valid row of the train files), the row and unique
          sample counts per split, the source.

    The files are written in a temporary folder beside ``out`` and renamed into place, so an
    interrupted write leaves no half-written dataset.
    """
    packed, out = Path(packed), Path(out)
    rows = dict(MULTIBENCH_ROWS if rows is None else rows)
    header = read_header(packed)
    _check_source(packed, header)
    prep = json.loads((packed / "preprocessing.json").read_text())
    mean, std = float(prep["image"]["mean"][0]), float(prep["image"]["std"][0])
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; pass overwrite=True to replace it")
    rng = np.random.default_rng(seed)
    sources = {s: PackedDataset(packed, s, modalities=["audio", "image"]) for s in MULTIBENCH_ROWS}
    picks = {s: tile_rows(len(d), rows.get(s), rng) for s, d in sources.items()}

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_part(tmp, "train", [(sources["train"], picks["train"]),
                                   (sources["valid"], picks["valid"])], mean, std)
        _write_part(tmp, "test", [(sources["test"], picks["test"])], mean, std)
        summary = {
            "source": str(packed),
            "valid_start": int(len(picks["train"])),
            "rows": {s: int(len(p)) for s, p in picks.items()},
            "unique_samples": {s: len(d) for s, d in sources.items()},
            "seed": seed,
            "audio": "log-mel dB, [max - 80 dB, max] -> 0..255, 112 frames x 112 mel bands",
        }
        (tmp / LAYOUT_FILE).write_text(json.dumps(summary, indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _check_source(packed: Path, header: dict[str, Any]) -> None:
    info = header["info"]
    missing = {"audio", "image"} - set(header["arrays"])
    if missing:
        raise InputError(f"{packed}: AV-MNIST needs image and audio; no {sorted(missing)} here")
    if info["num_classes"] > 10 or info["multilabel"]:
        raise InputError(f"{packed}: AV-MNIST labels are single digits 0..9")
    absent = set(MULTIBENCH_ROWS) - set(header["splits"])
    if absent:
        raise InputError(f"{packed}: needs train, valid and test splits; missing {sorted(absent)}")
    prep_file = packed / "preprocessing.json"
    if not prep_file.is_file():
        raise InputError(f"{prep_file}: not found; it says how the packed audio was computed")
    features = json.loads(prep_file.read_text()).get("audio", {}).get("features")
    if features != "logmel":
        raise InputError(
            f"{packed}: audio is packed as {features!r}; AV-MNIST's audio is a spectrogram, so "
            "pack it with data.audio.features=logmel"
        )


def _write_part(
    root: Path, part: str, pieces: Sequence[tuple[PackedDataset, np.ndarray]], mean: float, std: float
) -> None:
    """Stream the rows of ``pieces`` (dataset, sample indices) into ``part``'s three files;
    each distinct sample is converted once."""
    files = avmnist_files(root, part)
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    n = sum(len(idx) for _, idx in pieces)
    image = np.lib.format.open_memmap(files["image"], "w+", np.float32, (n, IMAGE_SIDE**2))
    audio = np.lib.format.open_memmap(files["audio"], "w+", np.float32, (n, *AUDIO_SHAPE))
    labels = np.empty(n, dtype=np.int64)
    row = 0
    for dataset, idx in pieces:
        converted = [_convert(dataset[int(i)], mean, std) for i in range(len(dataset))]
        for i in idx:
            image[row], audio[row], labels[row] = converted[int(i)]
            row += 1
    image.flush()
    audio.flush()
    del image, audio
    np.save(files["label"], labels)


def _convert(sample: Any, mean: float, std: float) -> tuple[np.ndarray, np.ndarray, int]:
    where = sample.meta.get("id", "?")
    if "image" not in sample.inputs or "audio" not in sample.inputs:
        raise InputError(f"sample {where}: AV-MNIST rows need both image and audio")
    return (
        image_to_avmnist(sample.inputs["image"].numpy(), mean=mean, std=std),
        spectrogram_to_avmnist(sample.inputs["audio"].numpy()),
        int(sample.label),
    )
