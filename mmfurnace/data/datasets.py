"""Build a split's dataset from the data config, by name through the ``DATASETS`` registry.

Every dataset built here yields :class:`~mmfurnace.data.batch.Sample` and has
``.info: DatasetInfo``. ``cfg.modalities`` selects modalities; a reader keeps the ones it
has (AV-MNIST has no text), and asking for none it has is an error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

from torch.utils.data import Dataset

from mmfurnace.data.avmnist import AVMNIST, AVMNIST_MODALITIES
from mmfurnace.data.batch import Batch
from mmfurnace.data.cache import PackedDataset, read_header
from mmfurnace.data.config import DataConfig
from mmfurnace.data.manifest import ManifestDataset, read_manifest
from mmfurnace.data.mmimdb import MMIMDB_MODALITIES, MMIMDb
from mmfurnace.errors import ConfigError, InputError
from mmfurnace.registry import Registry

DatasetBuilder = Callable[[DataConfig, str], Dataset]
DATASETS: Registry[DatasetBuilder] = Registry("dataset")
TOKENIZER_FILE = "tokenizer.json"
PACKED_PREPROCESSING = "preprocessing.json"  # written beside the packed arrays (data.prepare)


def build_dataset(cfg: DataConfig, split: str) -> Dataset:
    """The ``split`` ("train", "valid", "test") of the dataset ``cfg.dataset`` names."""
    return DATASETS[cfg.dataset](cfg, split)


def _keep(cfg: DataConfig, available: Sequence[str]) -> list[str]:
    keep = sorted(set(cfg.modalities) & set(available))
    if not keep:
        raise ConfigError(
            f"data.modalities {list(cfg.modalities)}: dataset {cfg.dataset!r} has only "
            f"{', '.join(sorted(available))}"
        )
    return keep


def packed_root(root: Path) -> Path:
    """``root/packed`` when it exists (a built dataset folder), else ``root`` itself."""
    return root / "packed" if (root / "packed").is_dir() else root


@DATASETS.register("packed")
def _packed(cfg: DataConfig, split: str) -> Dataset:
    root = packed_root(cfg.root)
    available = list(read_header(root)["arrays"])
    keep = _keep(cfg, available)
    check_packed_preprocessing(cfg, root, keep)
    return PackedDataset(root, split, modalities=keep)


def check_packed_preprocessing(cfg: DataConfig, root: Path, modalities: Sequence[str]) -> None:
    """Raise ConfigError when the packed cache at ``root`` was built with other image/audio
    settings (or text length) than ``cfg`` asks for: training would read the cache's, while
    the export records ``cfg``'s for serving — a model served other inputs than it learned on."""
    import json

    saved_file = root / PACKED_PREPROCESSING
    if not saved_file.is_file():  # a cache from before the file was written: nothing to compare
        return
    saved = json.loads(saved_file.read_text(encoding="utf-8"))
    wanted = build_preprocessors(cfg, [m for m in modalities if m in ("image", "audio")], manifest=root)
    diffs = [f"data.{m}.{key}: {value!r} in the config, {saved[m].get(key)!r} in the cache"
             for m, p in wanted.items() if m in saved
             for key, value in p.to_dict().items() if _differs(value, saved[m].get(key))]
    if "text" in modalities and "text" in saved and saved["text"].get("max_length") != cfg.text.max_length:
        diffs.append(f"data.text.max_length: {cfg.text.max_length} in the config, "
                     f"{saved['text'].get('max_length')} in the cache")
    if diffs:
        raise ConfigError(
            f"{root} was packed with other preprocessing than this config: {'; '.join(diffs)}. "
            f"Rebuild it with this config (mmfurnace data build NAME --out {Path(root).parent} "
            f"--config CONFIG --force), or point data.root at a build made with it"
        )


def _differs(a: object, b: object) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) > 1e-6 * max(1.0, abs(float(a)))
    return a != b


# Built-in datasets (``mmfurnace data build NAME``) are read from their packed cache.
for _builtin in ("digits-av", "fsdd-mnist", "tuxpaint"):
    DATASETS.register(_builtin)(_packed)


@DATASETS.register("avmnist")
def _avmnist(cfg: DataConfig, split: str) -> Dataset:
    return AVMNIST(
        cfg.root,
        split,
        valid_start=cfg.valid_start,
        modalities=_keep(cfg, AVMNIST_MODALITIES),
        image_mean=cfg.image.mean[0],
        image_std=cfg.image.std[0],
    )


@DATASETS.register("mmimdb")
def _mmimdb(cfg: DataConfig, split: str) -> Dataset:
    return MMIMDb(cfg.root, split, modalities=_keep(cfg, MMIMDB_MODALITIES))


@DATASETS.register("manifest")
def _manifest(cfg: DataConfig, split: str) -> Dataset:
    path = cfg.root
    if path.is_dir():
        path = path / "manifest.jsonl"
    records = read_manifest(path)
    available = [m for m in ("audio", "image", "text") if any(r.has(m) for r in records)]
    keep = _keep(cfg, available)
    preprocessors = build_preprocessors(cfg, keep, manifest=path)
    return ManifestDataset(path, preprocessors=preprocessors, split=split)


def build_preprocessors(
    cfg: DataConfig, modalities: Sequence[str], *, manifest: Path
) -> dict[str, Callable]:
    """One preprocessor per modality from ``cfg.image/audio/text``.

    The tokenizer is ``cfg.text.tokenizer`` when set, else ``tokenizer.json`` beside the
    manifest, else a WordPiece tokenizer trained on the manifest's train texts, once per
    process and manifest version, so every split built in this process gets the same one.
    Save it (``TextPreprocessor.save``) with a checkpoint: a new process trains a new one.
    """
    out: dict[str, Callable] = {}
    if "image" in modalities:
        from mmfurnace.data.image import ImagePreprocessor

        c = cfg.image
        out["image"] = ImagePreprocessor(
            size=tuple(c.size), channels=c.channels, mean=tuple(c.mean), std=tuple(c.std)
        )
    if "audio" in modalities:
        from mmfurnace.data.audio import AudioPreprocessor

        a = cfg.audio
        out["audio"] = AudioPreprocessor(
            sample_rate=a.sample_rate,
            features=a.features,
            n_mfcc=a.n_mfcc,
            n_mels=a.n_mels,
            n_fft=a.n_fft,
            hop_length=a.hop_length,
            max_seconds=a.max_seconds,
        )
    if "text" in modalities:
        from mmfurnace.data.text import TextPreprocessor

        out["text"] = TextPreprocessor(_tokenizer(cfg, manifest), max_length=cfg.text.max_length)
    return out


def _tokenizer(cfg: DataConfig, manifest: Path) -> object:
    from mmfurnace.data.text import load_tokenizer

    if cfg.text.tokenizer is not None:
        return load_tokenizer(cfg.text.tokenizer)
    beside = manifest.parent / TOKENIZER_FILE
    if beside.is_file():
        return load_tokenizer(beside)
    stat = manifest.stat()
    return _train_tokenizer(
        str(manifest.resolve()),
        stat.st_mtime_ns,
        stat.st_size,
        cfg.text.vocab_size,
        cfg.text.lowercase,
    )


@functools.lru_cache(maxsize=8)
def _train_tokenizer(
    manifest: str, mtime_ns: int, size: int, vocab_size: int, lowercase: bool
) -> object:
    """Train once per manifest version: WordPiece training is not deterministic between
    calls, so the train, valid and test splits must share one tokenizer, not train three.
    (``mtime_ns``/``size`` are in the key so an edited manifest trains a new one.)
    """
    from mmfurnace.data.text import build_wordpiece_tokenizer

    path = Path(manifest)
    texts = [r.text for r in read_manifest(path) if r.split == "train" and r.text]
    if not texts:
        raise InputError(
            f"{path}: no train text to build a tokenizer from; set data.text.tokenizer "
            f"or put a {TOKENIZER_FILE} beside the manifest"
        )
    return build_wordpiece_tokenizer(texts, vocab_size=vocab_size, lowercase=lowercase)


def first_batch(cfg: DataConfig, split: str, size: int, modalities: Sequence[str]) -> Batch:
    """The first ``size`` samples of ``split`` as one Batch (a fixed, real batch for parity
    checks and benchmarks)."""
    from mmfurnace.data.batch import collate_samples

    dataset = build_dataset(cfg, split)
    n = min(size, len(dataset))  # type: ignore[arg-type]
    if n == 0:
        raise InputError(f"split {split!r} of {cfg.root} is empty")
    return collate_samples([dataset[i] for i in range(n)], modalities)
