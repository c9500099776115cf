"""digits-av: a real, offline-built image + audio + text dataset of the digits 0-9.

Like AV-MNIST, the modalities are paired by label only: a handwritten digit image
(scikit-learn's UCI digits, degraded), a spoken digit (espeak-ng, with background noise)
and a typo'd number word. Each modality alone is weak on purpose; together they are not.

Layout written by ``build_digits_av_raw(out_dir)``::

    out_dir/raw/manifest.jsonl    {"id", "split", "image", "audio", "text", "label"} per line
    out_dir/raw/classes.json      ["zero", ..., "nine"]
    out_dir/raw/build.json        seed, sources, voices, SNRs, counts, versions
    out_dir/raw/provenance.jsonl  per sample: source image, voice, noise, SNR, text language
    out_dir/raw/images/NNNN.png   28x28 grayscale, one per source image
    out_dir/raw/audio/<id>.wav    16 kHz mono PCM-16, one per sample
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from mmfurnace.data.builtin import digit_images, noise, number_words, speech
from mmfurnace.data.builtin.staging import build_raw, write_json, write_jsonl
from mmfurnace.errors import InputError

CLASS_NAMES: tuple[str, ...] = number_words.NUMBER_WORDS["english"]
SPLITS: tuple[str, ...] = ("train", "valid", "test")
HELD_OUT_FRACTION = 0.15  # of each class's images, for valid and again for test
FORMAT_VERSION = 1

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Degradation:
    """How much each modality is degraded; the defaults are the tuned dataset.

    pca_components: principal components kept of the 8x8 digits (AV-MNIST keeps 25% energy).
    image_noise_std: std of Gaussian pixel noise on the [0, 1] 28x28 image.
    snr_db: SNRs drawn uniformly per audio sample.
    noise_kinds: background noises drawn uniformly per audio sample.
    speed_wpm / pitch: espeak-ng speed and pitch ranges (inclusive), drawn per clip.
    typo_rate: per-character typo probability range, drawn uniformly per text.
    """

    pca_components: int = 4
    image_noise_std: float = 0.35
    snr_db: tuple[float, ...] = (20.0, 15.0, 10.0, 5.0, 0.0, -5.0)
    noise_kinds: tuple[str, ...] = ("white", "pink", "babble")
    speed_wpm: tuple[int, int] = (120, 220)
    pitch: tuple[int, int] = (15, 85)
    typo_rate: tuple[float, float] = (0.25, 0.75)

    def __post_init__(self) -> None:
        if not 1 <= self.pca_components <= 64:
            raise InputError(f"pca_components must be in 1..64, got {self.pca_components}")
        unknown = set(self.noise_kinds) - set(noise.NOISES)
        if unknown or not self.noise_kinds:
            raise InputError(
                f"noise_kinds {sorted(unknown)} unknown; known: {sorted(noise.NOISES)}"
            )
        if not self.snr_db:
            raise InputError("snr_db must name at least one SNR")
        if self.image_noise_std < 0:
            raise InputError(f"image_noise_std must be >= 0, got {self.image_noise_std}")
        if not 80 <= self.speed_wpm[0] <= self.speed_wpm[1] <= 450:
            raise InputError(f"speed_wpm must be 80 <= low <= high <= 450, got {self.speed_wpm}")
        if not 0 <= self.pitch[0] <= self.pitch[1] <= 99:
            raise InputError(f"pitch must be 0 <= low <= high <= 99, got {self.pitch}")
        if not 0.0 <= self.typo_rate[0] <= self.typo_rate[1] <= 1.0:
            raise InputError(f"typo_rate must be 0 <= low <= high <= 1, got {self.typo_rate}")


def build_digits_av_raw(
    out_dir: Path,
    *,
    seed: int = 0,
    pairings_per_train_image: int = 3,
    progress: Progress | None = None,
    limit_per_class: int | None = None,
    workers: int = 2,
    overwrite: bool = False,
    degradation: Degradation | None = None,
) -> Path:
    """Build the raw digits-av files under ``out_dir/raw``; returns the manifest's path.

    seed: fixes splits, pairings, voices and noise (output is identical for a seed, given
        the same espeak-ng version).
    pairings_per_train_image: training samples per training image, each with a different
        audio clip, noise draw and text; valid/test images get one sample each.
    progress: called as progress(stage, done, total) for stages images, speech, audio.
    limit_per_class: use only the first N images of each class (N >= 3); for tests.
    workers: concurrent espeak-ng processes.
    overwrite: replace an existing ``out_dir/raw``; otherwise its presence is an error.

    The build happens in a staging folder that is swapped into place at the end
    (:func:`mmfurnace.io.atomic_dir`), so an interrupted build leaves no half-written dataset.
    """
    out_dir = Path(out_dir)
    deg = degradation or Degradation()
    if pairings_per_train_image < 1:
        raise InputError(f"pairings_per_train_image must be >= 1, got {pairings_per_train_image}")
    if limit_per_class is not None and limit_per_class < 3:
        raise InputError(
            f"limit_per_class must be >= 3 (one image per split), got {limit_per_class}"
        )
    if seed < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    final = out_dir / "raw"
    if final.exists() and not overwrite:
        raise InputError(f"{final} already exists; delete it or pass overwrite=True")
    exe = speech.find_espeak()

    return build_raw(
        out_dir,
        lambda tmp: _build_into(
            tmp, exe, seed=seed, pairings=pairings_per_train_image,
            limit=limit_per_class, workers=workers, deg=deg, progress=progress,
        ),  # fmt: skip
        overwrite=overwrite,
    )


def _build_into(
    root: Path, exe: str, *, seed: int, pairings: int, limit: int | None, workers: int,
    deg: Degradation, progress: Progress | None,
) -> dict[str, object]:  # fmt: skip
    # One stream per concern, so that e.g. a different espeak-ng (clip lengths, hence noise
    # draws) leaves the splits, images and texts unchanged.
    rng_split, rng_image, rng_voice, rng_mix, rng_text = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)
    )
    images, labels = digit_images.load_uci_digits()
    splits = _split_images(labels, rng_split, limit)
    energy = _write_images(root / "images", images, splits, rng_image, deg, progress)

    plan = [
        (split, int(idx), int(labels[idx]))
        for split in SPLITS
        for idx in splits[split]
        for _ in range(pairings if split == "train" else 1)
    ]
    voices, bank = _plan_speech_bank(plan, rng_voice, deg)
    jobs = [(str(label), voice) for label, voice in voices]
    clips = speech.synthesize_many(
        exe, jobs, workers=workers,
        progress=None if progress is None else (lambda d, t: progress("speech", d, t)),
    )  # fmt: skip

    (root / "audio").mkdir()
    manifest, provenance = [], []
    next_clip = {key: 0 for key in bank}
    split_clips = {s: [c for (sp, _), ids in bank.items() if sp == s for c in ids] for s in SPLITS}
    for n, (split, idx, label) in enumerate(plan):
        sample_id = f"{split}-{n:05d}"
        key = (split, label)
        clip_id = bank[key][next_clip[key] % len(bank[key])]
        next_clip[key] += 1
        audio_meta = _write_noisy_clip(
            root / "audio" / f"{sample_id}.wav", clips, clip_id, split_clips[split], rng_mix, deg
        )
        text, text_meta = number_words.noisy_number_text(label, rng_text, typo_rate=deg.typo_rate)
        manifest.append({
            "id": sample_id, "split": split, "image": f"images/{idx:04d}.png",
            "audio": f"audio/{sample_id}.wav", "text": text, "label": label,
        })  # fmt: skip
        voice = voices[clip_id][1]
        provenance.append({
            "id": sample_id, "source_image": idx, "voice": voice.name, "speed": voice.speed,
            "pitch": voice.pitch, **audio_meta, "text_language": text_meta["language"],
            "typo_rate": text_meta["typo_rate"],
        })  # fmt: skip
        if progress is not None and (n + 1 == len(plan) or (n + 1) % 200 == 0):
            progress("audio", n + 1, len(plan))

    write_jsonl(root / "manifest.jsonl", manifest)
    write_jsonl(root / "provenance.jsonl", provenance)
    write_json(root / "classes.json", list(CLASS_NAMES))
    return _build_record(exe, seed, pairings, limit, deg, energy, splits, plan, bank)


def _split_images(
    labels: np.ndarray, rng: np.random.Generator, limit: int | None
) -> dict[str, np.ndarray]:
    """Stratified split of image indices, done before any pairing: per class, 15% test,
    15% valid (at least one each), the rest train."""
    parts: dict[str, list[int]] = {s: [] for s in SPLITS}
    for label in range(len(CLASS_NAMES)):
        idx = np.flatnonzero(labels == label)[:limit]
        idx = idx[rng.permutation(len(idx))]
        held = max(1, round(HELD_OUT_FRACTION * len(idx)))
        parts["test"] += idx[:held].tolist()
        parts["valid"] += idx[held : 2 * held].tolist()
        parts["train"] += idx[2 * held :].tolist()
    return {s: np.array(sorted(v), dtype=np.int64) for s, v in parts.items()}


def _write_images(
    folder: Path, images: np.ndarray, splits: dict[str, np.ndarray], rng: np.random.Generator,
    deg: Degradation, progress: Progress | None,
) -> float:  # fmt: skip
    folder.mkdir()
    projected, energy = digit_images.pca_project(images, splits["train"], deg.pca_components)
    chosen = np.sort(np.concatenate([splits[s] for s in SPLITS]))
    for i, idx in enumerate(chosen):
        pixels = digit_images.degrade(projected[idx], rng, noise_std=deg.image_noise_std)
        digit_images.write_png(pixels, folder / f"{idx:04d}.png")
        if progress is not None and (i + 1 == len(chosen) or (i + 1) % 500 == 0):
            progress("images", i + 1, len(chosen))
    return energy


def _plan_speech_bank(
    plan: list[tuple[str, int, int]], rng: np.random.Generator, deg: Degradation
) -> tuple[list[tuple[int, speech.Voice]], dict[tuple[str, int], list[int]]]:
    """Which clips to synthesize: per (split, label), up to one clip per (language, variant)
    of the split's variants, as many as that split/label has samples. Returns the clips as
    (label, voice) and, per (split, label), the clip indices into that list."""
    needed: dict[tuple[str, int], int] = {}
    for split, _, label in plan:
        needed[(split, label)] = needed.get((split, label), 0) + 1
    voices: list[tuple[int, speech.Voice]] = []
    bank: dict[tuple[str, int], list[int]] = {}
    for split in SPLITS:
        combos = [
            (lang, v) for lang in speech.SPEECH_LANGUAGES for v in speech.VOICE_VARIANTS[split]
        ]
        for label in range(len(CLASS_NAMES)):
            count = min(len(combos), needed.get((split, label), 0))
            ids = []
            for c in rng.permutation(len(combos))[:count]:
                lang, variant = combos[c]
                speed = int(rng.integers(deg.speed_wpm[0], deg.speed_wpm[1] + 1))
                pitch = int(rng.integers(deg.pitch[0], deg.pitch[1] + 1))
                ids.append(len(voices))
                voices.append((label, speech.Voice(lang, variant, speed, pitch)))
            bank[(split, label)] = ids
    return voices, bank


def _write_noisy_clip(
    path: Path, clips: list[np.ndarray], clip_id: int, split_clip_ids: list[int],
    rng: np.random.Generator, deg: Degradation,
) -> dict[str, object]:  # fmt: skip
    kind = deg.noise_kinds[int(rng.integers(len(deg.noise_kinds)))]
    snr = float(deg.snr_db[int(rng.integers(len(deg.snr_db)))])
    others = [c for c in split_clip_ids if c != clip_id] or [clip_id]
    # Babble comes from other clips of the same split (any digit), so it carries no label
    # information and no held-out voice leaks into training audio.
    sources = [clips[c] for c in rng.choice(others, size=4)] if kind == "babble" else []
    lead, tail = rng.uniform(0.05, 0.3, size=2)
    audio = noise.mix(
        clips[clip_id], rng, kind=kind, snr_db=snr, lead_s=float(lead), tail_s=float(tail),
        babble_sources=sources, sample_rate=speech.SAMPLE_RATE,
    )  # fmt: skip
    sf.write(path, audio, speech.SAMPLE_RATE, subtype="PCM_16")
    return {"noise": kind, "snr_db": snr}


def _build_record(
    exe: str, seed: int, pairings: int, limit: int | None, deg: Degradation, energy: float,
    splits: dict[str, np.ndarray], plan: list[tuple[str, int, int]],
    bank: dict[tuple[str, int], list[int]],
) -> dict[str, object]:  # fmt: skip
    import sklearn

    return {
        "name": "digits-av",
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "pairings_per_train_image": pairings,
        "limit_per_class": limit,
        "sources": {
            "image": "UCI Optical Recognition of Handwritten Digits (Alpaydin & Kaynak), "
            "test set of 1,797 8x8 images as bundled in scikit-learn (sklearn.datasets.load_digits)",
            "audio": "espeak-ng speech synthesis of the numeral, mixed with white/pink/babble noise",
            "text": "synthetic: the label's number word from a hand-written table of "
            f"{len(number_words.LANGUAGES)} languages, with character typos and templates",
        },
        "degradation": asdict(deg),
        "image_pca_energy_kept": round(energy, 4),
        "voices": {
            s: {
                "languages": list(speech.SPEECH_LANGUAGES),
                "variants": list(speech.VOICE_VARIANTS[s]),
            }
            for s in SPLITS
        },
        "text_languages": list(number_words.LANGUAGES),
        "counts": {
            "images": {s: len(splits[s]) for s in SPLITS},
            "samples": {s: sum(1 for p in plan if p[0] == s) for s in SPLITS},
            "speech_clips": {
                s: sum(len(v) for (sp, _), v in bank.items() if sp == s) for s in SPLITS
            },
        },
        "versions": {
            "espeak-ng": speech.espeak_version(exe),
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
        },
        "proxy_accuracies": None,
    }

