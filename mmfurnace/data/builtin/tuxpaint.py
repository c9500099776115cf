"""tuxpaint: real cut-out photos and drawings with human descriptions and recorded speech.

Built from Debian's ``tuxpaint-stamps-default`` (GPL-2), read in place. One sample per stamp;
label = the stamp's top-level category (16 classes). Modalities:

* image: the PNG (or, for SVG-only stamps, the SVG rasterized with resvg; ``svg="skip"``
  leaves those images out), cropped to its visible pixels, composited on white and padded to
  a centred square, at most ``image_max_side`` pixels;
* text: the description in ``text_language`` (``en``: the first line of ``name.txt``);
* audio: the spoken description in ``speech_language`` (``name_desc_<lang>.ogg``), copied.

A modality a stamp does not have is left out of its manifest line: real missing-modality
data. Corrupt files are skipped (that modality goes missing) and counted in ``build.json``; a
stamp left with no modality is dropped and counted. Splits are stratified per category with
a fixed seed, keeping stamps that share a base name (variants) in one split.

Layout under ``out_dir/raw``: ``manifest.jsonl``, ``classes.json``, ``build.json``,
``provenance.jsonl`` (source files and group per sample), ``images/<id>.png``,
``audio/<id>.<ogg|wav>``.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
from pydantic import Field, model_validator

from mmfurnace.data.audio import load_wav
from mmfurnace.data.builtin import tuxpaint_stamps as ts
from mmfurnace.data.builtin.staging import Skipped, build_raw, write_json, write_jsonl
from mmfurnace.errors import InputError
from mmfurnace.typed_config import StrictModel

NAME = "tuxpaint"
FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
ATTRIBUTION = "Tux Paint stamps (tuxpaint-stamps-default, New Breed Software and contributors), GPL-2"

Progress = Callable[[str, int, int], None]


class TuxpaintOptions(StrictModel):
    """How tuxpaint is built; the defaults are the dataset (see docs/tuxpaint.md)."""

    stamps: Path = ts.STAMPS
    text_language: str = ts.ENGLISH
    speech_language: str = "fr"  # the language with the most spoken descriptions (928)
    svg: Literal["rasterize", "skip"] = "rasterize"
    image_max_side: int = Field(320, ge=32, le=2048)
    valid_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    # Cross-validation builds: stratified group folds (the seed fixes them); fold ``fold`` is
    # the test split, the next fold the valid split, the rest train (the fractions unused).
    folds: int | None = Field(None, ge=3, le=20)
    fold: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _fractions(self) -> TuxpaintOptions:
        if self.valid_fraction + self.test_fraction >= 0.8:
            raise ValueError("valid_fraction + test_fraction must leave at least 20% for train")
        if self.folds is None and self.fold:
            raise ValueError("fold is set but folds is not: set folds (e.g. -o folds=5)")
        if self.folds is not None and self.fold >= self.folds:
            raise ValueError(f"fold must be below folds ({self.folds}), got {self.fold}")
        return self


def build_tuxpaint_raw(
    out_dir: Path,
    *,
    options: TuxpaintOptions | None = None,
    seed: int = 0,
    limit_per_class: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Build ``out_dir/raw`` from the installed stamps; returns the manifest's path.

    seed: fixes the split. limit_per_class: only the first N stamps of each category (tests).
    overwrite: replace an existing ``out_dir/raw``; otherwise its presence is an error.
    The build is atomic (see :func:`~mmfurnace.data.builtin.staging.build_raw`).
    """
    opts = options or TuxpaintOptions()
    if limit_per_class is not None and limit_per_class < 1:
        raise InputError(f"limit_per_class must be >= 1, got {limit_per_class}")
    if seed < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    return build_raw(
        out_dir,
        lambda tmp: _build_into(tmp, opts, seed=seed, limit=limit_per_class, progress=progress),
        overwrite=overwrite,
    )


def _build_into(
    root: Path, opts: TuxpaintOptions, *, seed: int, limit: int | None, progress: Progress | None
) -> dict[str, object]:
    skipped = Skipped()
    stamps = _limit(ts.scan_stamps(opts.stamps, skipped), limit)
    if not stamps:
        raise InputError(f"no stamps found under {opts.stamps}: {ts.INSTALL_HINT}")
    (root / "images").mkdir()
    (root / "audio").mkdir()
    rows: list[dict[str, object]] = []
    kept: list[ts.Stamp] = []
    for n, stamp in enumerate(stamps):
        row = _sample(root, stamp, f"{len(rows):04d}", opts, skipped)
        if row is not None:
            rows.append(row)
            kept.append(stamp)
        if progress is not None and (n + 1 == len(stamps) or (n + 1) % 50 == 0):
            progress("stamps", n + 1, len(stamps))
    if not rows:
        raise InputError(f"no stamp under {opts.stamps} has any usable modality")
    classes = sorted({s.category for s in kept})
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    splits = _splits(kept, opts, rng)
    manifest, provenance = [], []
    for row, stamp, split in zip(rows, kept, splits, strict=True):
        sources = row.pop("sources")
        manifest.append({"id": row["id"], "split": split, **row, "label": stamp.category})
        provenance.append({"id": row["id"], "stamp": stamp.key, "group": ts.group_key(stamp),
                           **sources})  # fmt: skip
    write_jsonl(root / "manifest.jsonl", manifest)
    write_jsonl(root / "provenance.jsonl", provenance)
    write_json(root / "classes.json", classes)
    return _record(opts, seed, limit, manifest, provenance, len(stamps), skipped)


def _splits(stamps: list[ts.Stamp], opts: TuxpaintOptions, rng: np.random.Generator) -> list[str]:
    if opts.folds is None:
        return ts.group_split(stamps, valid=opts.valid_fraction, test=opts.test_fraction, rng=rng)
    folds = ts.group_folds(stamps, folds=opts.folds, rng=rng)
    valid = (opts.fold + 1) % opts.folds
    return ["test" if f == opts.fold else "valid" if f == valid else "train" for f in folds]


def _limit(stamps: list[ts.Stamp], limit: int | None) -> list[ts.Stamp]:
    if limit is None:
        return stamps
    seen: Counter[str] = Counter()
    out = []
    for s in stamps:
        seen[s.category] += 1
        if seen[s.category] <= limit:
            out.append(s)
    return out


def _sample(
    root: Path, stamp: ts.Stamp, sample_id: str, opts: TuxpaintOptions, skipped: Skipped
) -> dict[str, object] | None:
    """Write one stamp's files; its manifest fields plus ``sources``, or None when no
    modality is left."""
    row: dict[str, object] = {"id": sample_id}
    sources: dict[str, object] = {}
    image = _image_source(stamp, opts, skipped)
    if image is not None:
        try:
            ts.load_image(image, max_side=opts.image_max_side).save(
                root / "images" / f"{sample_id}.png", format="PNG"
            )
            row["image"], sources["image"] = f"images/{sample_id}.png", str(image)
        except InputError as err:
            skipped.add(f"corrupt {image.suffix.lstrip('.').upper()} image", image, _why(err))
    if stamp.description is not None:
        try:
            text = ts.read_description(stamp.description, opts.text_language)
        except InputError as err:
            skipped.add("unreadable description", stamp.description, _why(err))
            text = None
        if text is not None:
            row["text"], sources["text"] = text, str(stamp.description)
    speech = stamp.speech.get(opts.speech_language)
    if speech is not None:
        target = root / "audio" / f"{sample_id}{speech.suffix.lower()}"
        try:
            _check_audio(speech)
            shutil.copyfile(speech, target)
            row["audio"], sources["audio"] = target.relative_to(root).as_posix(), str(speech)
        except InputError as err:
            skipped.add(f"corrupt {speech.suffix.lstrip('.').upper()} speech", speech, _why(err))
    if len(row) == 1:
        skipped.add("stamp with no usable modality in the chosen languages", stamp.key)
        return None
    row["sources"] = sources
    return row


def _image_source(stamp: ts.Stamp, opts: TuxpaintOptions, skipped: Skipped) -> Path | None:
    # The PNG when there is one (what the package ships as a bitmap); else the SVG.
    if "png" in stamp.images:
        return stamp.images["png"]
    if "svg" in stamp.images and opts.svg == "skip":
        skipped.add("SVG-only image left out (svg=skip)", stamp.images["svg"])
        return None
    return stamp.images.get("svg")


def _check_audio(path: Path) -> None:
    """Decode ``path`` fully at its own rate: InputError when it is corrupt or silent."""
    try:
        rate = sf.info(str(path)).samplerate
    except Exception as err:  # libsndfile raises several unrelated types
        raise InputError(f"{path}: cannot decode audio ({err})") from None
    load_wav(path, target_rate=rate)


def _why(err: Exception) -> str:
    return str(err).split(": ", 1)[-1]


def _record(
    opts: TuxpaintOptions, seed: int, limit: int | None, manifest: list[dict[str, object]],
    provenance: list[dict[str, object]], scanned: int, skipped: Skipped,
) -> dict[str, object]:  # fmt: skip
    per_split = {s: [r for r in manifest if r["split"] == s] for s in SPLITS}
    image_kinds = Counter(Path(str(p["image"])).suffix for p in provenance if "image" in p)
    return {
        "name": NAME,
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "limit_per_class": limit,
        "options": json.loads(opts.model_dump_json()),
        "source": f"tuxpaint-stamps-default at {opts.stamps}",
        "attribution": ATTRIBUTION,
        "counts": {
            "stamps_scanned": scanned,
            "samples": {s: len(rows) for s, rows in per_split.items()},
            "present": {
                s: {m: sum(1 for r in rows if m in r) for m in ("image", "text", "audio")}
                for s, rows in per_split.items()
            },
            "per_class": {
                s: dict(sorted(Counter(str(r["label"]) for r in rows).items()))
                for s, rows in per_split.items()
            },
            "image_sources": {k.lstrip("."): v for k, v in sorted(image_kinds.items())},
            "groups": {s: len({p["group"] for p, r in zip(provenance, manifest, strict=True)
                               if r["split"] == s}) for s in SPLITS},  # fmt: skip
        },
        "skipped": skipped.to_dict(),
        "versions": {"numpy": np.__version__, "soundfile": sf.__version__,
                     "package": _package_version()},  # fmt: skip
        "proxy_accuracies": None,
    }


def _package_version() -> str | None:
    """The installed tuxpaint-stamps-default version, from dpkg's status file (None elsewhere)."""
    try:
        status = Path("/var/lib/dpkg/status").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for block in status.split("\n\n"):
        if block.startswith("Package: tuxpaint-stamps-default\n"):
            for line in block.splitlines():
                if line.startswith("Version: "):
                    return line.split(": ", 1)[1]
    return None
