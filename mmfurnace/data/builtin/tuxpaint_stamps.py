"""Reading Tux Paint's stamp collection as Debian's ``tuxpaint-stamps-default`` installs it.

``/usr/share/tuxpaint/stamps/<category>/[subfolders/]<name>.<ext>``: a stamp is an image
(``name.png`` and/or ``name.svg``; RGBA cut-outs) with, beside it, ``name.txt`` (line 1 the
English description, then ``<lang>.utf8=<text>`` lines), spoken descriptions
``name_desc.ogg`` (English) and ``name_desc_<lang>.ogg`` (a few stamps ship ``.wav``),
a sound effect ``name.ogg`` (not speech: unused), ``name.dat`` (drawing flags: unused) and
sometimes ``name_mirror.png`` (the image Tux Paint shows when the stamp is flipped: a view of
the same stamp, not a stamp of its own). GPL-2; the package is read in place, never copied
into the project.
"""

from __future__ import annotations

import io
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mmfurnace.data.builtin.staging import Skipped
from mmfurnace.data.image import decode_image
from mmfurnace.errors import InputError, MissingDependencyError

STAMPS = Path("/usr/share/tuxpaint/stamps")
INSTALL_HINT = (
    "install Debian's tuxpaint-stamps-default (`apt-get install --no-install-recommends "
    "tuxpaint-stamps-default`, or `make system-deps`), or point stamps at a copy of the "
    "stamps folder"
)
ENGLISH = "en"
IMAGE_KINDS = ("png", "svg")
SPEECH = re.compile(r"^(?P<name>.+?)_desc(?:_(?P<lang>[A-Za-z]{2,3}(?:_[A-Za-z]{2})?(?:@\w+)?))?"
                    r"\.(?P<ext>ogg|wav)$")  # fmt: skip
MIRROR_SUFFIX = "_mirror"
TRANSLATION = re.compile(r"^(?P<lang>[A-Za-z_@]+)\.utf8=(?P<text>.*)$")


@dataclass
class Stamp:
    """One stamp: its category (top-level folder), folder relative to the stamps root, name,
    and the files found for it (any may be missing)."""

    category: str
    folder: str
    name: str
    images: dict[str, Path] = field(default_factory=dict)  # "png"/"svg" -> path
    description: Path | None = None
    speech: dict[str, Path] = field(default_factory=dict)  # language -> path

    @property
    def key(self) -> str:
        return f"{self.folder}/{self.name}"


def stamps_root(root: Path) -> Path:
    """``root`` when it holds stamp category folders, else a clear error saying how to get it."""
    root = Path(root)
    if not root.is_dir() or not any(p.is_dir() for p in root.iterdir()):
        raise MissingDependencyError(f"Tux Paint stamps not found at {root}: {INSTALL_HINT}")
    return root


def scan_stamps(root: Path, skipped: Skipped) -> list[Stamp]:
    """Every stamp under ``root``, sorted by folder and name.

    Files directly in ``root`` have no category: they are skipped and counted. A description
    or speech file without an image beside it still makes a stamp (one whose image is
    missing); the builder decides what to keep.
    """
    root = stamps_root(root)
    stamps: dict[tuple[str, str], Stamp] = {}

    def stamp(folder: Path, name: str) -> Stamp:
        rel = folder.relative_to(root).as_posix()
        if (rel, name) not in stamps:
            stamps[(rel, name)] = Stamp(category=rel.split("/")[0], folder=rel, name=name)
        return stamps[(rel, name)]

    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.parent == root:
            if path.suffix.lower() in (".png", ".svg", ".txt", ".ogg", ".wav"):
                skipped.add("stamp file outside any category folder", path)
            continue
        speech = SPEECH.match(path.name)
        suffix = path.suffix.lower().lstrip(".")
        if speech is not None:
            stamp(path.parent, speech["name"]).speech[speech["lang"] or ENGLISH] = path
        elif suffix in IMAGE_KINDS and not path.stem.endswith(MIRROR_SUFFIX):
            stamp(path.parent, path.stem).images[suffix] = path
        elif suffix == "txt":
            stamp(path.parent, path.stem).description = path
    return sorted(stamps.values(), key=lambda s: (s.folder, s.name))


def read_description(path: Path, language: str) -> str | None:
    """The stamp's description in ``language`` ("en": the first line; others: the
    ``<language>.utf8=`` line), stripped; None when that language is missing or empty.
    Raises InputError for an undecodable file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read description ({err})") from None
    if language == ENGLISH:
        text = lines[0] if lines and not TRANSLATION.match(lines[0]) else ""
    else:
        found = (TRANSLATION.match(line) for line in lines[1:])
        text = next((m["text"] for m in found if m and m["lang"] == language), "")
    return text.strip() or None


def load_image(path: Path, *, max_side: int) -> Image.Image:
    """The stamp image as an RGB square: decoded (PNG) or rasterized (SVG), cropped to its
    visible pixels, composited on white, padded to a centred square, and shrunk so its side
    is at most ``max_side``. Raises InputError for a corrupt or empty image."""
    if path.suffix.lower() == ".svg":
        rgba = rasterize_svg(path, size=max_side)
    else:
        rgba = decode_image(path).convert("RGBA")
    box = rgba.getchannel("A").getbbox()
    if box is None:
        raise InputError(f"{path}: image is fully transparent")
    rgba = rgba.crop(box)
    side = max(rgba.size)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    square.alpha_composite(rgba, ((side - rgba.width) // 2, (side - rgba.height) // 2))
    image = square.convert("RGB")
    if side > max_side:
        image = image.resize((max_side, max_side), Image.Resampling.LANCZOS)
    return image


_ROOT_TAG = re.compile(r"<svg\b[^>]*>", re.S)
_SIZE_ATTR = re.compile(
    r"(\s(?:width|height)\s*=\s*[\"'])\s*([\d.]+)\s*(px|pt|pc|mm|cm|in)\s*([\"'])"
)
_PX_PER_UNIT = {"px": 1.0, "pt": 4 / 3, "pc": 16.0, "mm": 96 / 25.4, "cm": 96 / 2.54, "in": 96.0}


def rasterize_svg(path: Path, *, size: int) -> Image.Image:
    """Render an SVG with resvg (PyPI ``resvg-py``: a self-contained wheel, no system
    libraries) so that its longer side is about ``size`` pixels; returns RGBA."""
    try:
        import resvg_py
    except ImportError:
        raise MissingDependencyError(
            f"{path}: rendering SVG stamps needs resvg-py (`pip install resvg-py`, part of "
            "`make install`); or build with svg=skip to leave SVG-only stamps out"
        ) from None
    try:
        svg = _size_in_px(path.read_text(encoding="utf-8"))
        native = Image.open(io.BytesIO(resvg_py.svg_to_bytes(svg_string=svg,
                                                             skip_system_fonts=True)))
        zoom = size / max(native.size)
        png = resvg_py.svg_to_bytes(svg_string=svg, skip_system_fonts=True, zoom=zoom)
        image = Image.open(io.BytesIO(png))
        image.load()
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{path}: cannot render SVG ({err})") from None
    return image.convert("RGBA")


def _size_in_px(svg: str) -> str:
    # resvg rejects a root width/height in physical units ("400pt", "210mm": 38 of the 248
    # stamps) as "invalid size"; CSS fixes 1pt = 4/3 px etc., so rewrite them in px.
    match = _ROOT_TAG.search(svg)
    if match is None:
        raise ValueError("no <svg> element")
    tag = _SIZE_ATTR.sub(
        lambda m: f"{m[1]}{float(m[2]) * _PX_PER_UNIT[m[3]]:.3f}{m[4]}", match.group(0)
    )
    return svg[: match.start()] + tag + svg[match.end() :]


def group_key(stamp: Stamp) -> str:
    """Stamps likely to show the same thing share a key: the category plus the first word of
    the name ("rocket1".."rocket5", "spider_fly", "koala" and "cartoon/koala", "W_filled" and
    "w_outline"). A split keeps a group whole, so no variant of a test stamp is trained on."""
    words = [w for w in re.split(r"[-_\s\d]+", stamp.name.lower()) if w]
    return f"{stamp.category}/{words[0] if words else stamp.name.lower()}"


def group_split(
    stamps: list[Stamp], *, valid: float, test: float, rng: np.random.Generator
) -> list[str]:
    """Split name per stamp: per category, groups (:func:`group_key`), largest first and in
    random order among equals, go to whichever split is furthest below its share (valid and
    test get one group before anything else), so each category is stratified and each group
    stays in one split. A category with fewer than 3 groups goes to train whole."""
    out = [""] * len(stamps)
    for groups, total in _category_groups(stamps, rng):
        want = {"train": (1 - valid - test) * total, "valid": valid * total, "test": test * total}
        if len(groups) < 3:
            want = {"train": total, "valid": 0.0, "test": 0.0}
        have = dict.fromkeys(want, 0)
        for rows in groups:
            # Valid and test get their first group before train takes any share beyond one.
            split = max(want, key=lambda s: (have[s] == 0 and want[s] > 0, want[s] - have[s]))
            have[split] += len(rows)
            for i in rows:
                out[i] = split
    return out


def group_folds(stamps: list[Stamp], *, folds: int, rng: np.random.Generator) -> list[int]:
    """Fold index (0..folds-1) per stamp, for cross-validation: per category, groups
    (:func:`group_key`), largest first and in random order among equals, go to the fold with
    the fewest stamps of that category (then the fewest stamps overall, then the lowest
    index), so every fold is stratified and each group stays in one fold."""
    if folds < 2:
        raise InputError(f"cross-validation needs at least 2 folds, got {folds}")
    out = [0] * len(stamps)
    size = [0] * folds
    for groups, _ in _category_groups(stamps, rng):
        have = [0] * folds
        for rows in groups:
            fold = min(range(folds), key=lambda f: (have[f], size[f], f))
            have[fold] += len(rows)
            size[fold] += len(rows)
            for i in rows:
                out[i] = fold
    return out


def _category_groups(
    stamps: list[Stamp], rng: np.random.Generator
) -> Iterator[tuple[list[list[int]], int]]:
    """Per category (sorted): its groups' stamp indices, largest first (ties in ``rng``'s
    order), and its stamp count."""
    by_category: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, s in enumerate(stamps):
        by_category[s.category][group_key(s)].append(i)
    for category in sorted(by_category):
        groups = by_category[category]
        names = sorted(groups)
        shuffled = [names[j] for j in rng.permutation(len(names))]
        # Largest groups first (ties in random order), so the small ones even out the shares.
        ordered = sorted(shuffled, key=lambda g: -len(groups[g]))
        yield [groups[g] for g in ordered], sum(len(v) for v in groups.values())
