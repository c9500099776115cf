"""The frozen-feature cache: a wholly frozen encoder's outputs, computed once per dataset and
reused by every epoch and every later run that asks for the same thing.

A frozen encoder (``model.encoders.<m>.freeze: true``, no ``unfreeze_top``) runs in eval mode
with no trainable weight, so its output is a fixed function of its input. Training fusion on
top of EfficientNet or MiniLM on a CPU then costs what the fusion costs, not what the
backbone costs. The recipe (``train.feature_cache``, on by default) does::

    cache = cache_features(model, splits, cache_dir=..., device=...)
    splits, net = cache.datasets(splits), cache.view(model)  # train ``net``; save ``model``

An entry is one packed cache (data/cache.py) per (modality, encoder, dataset) at
``<cache_dir>/<modality>-<encoder>-<key>/``, holding each sample's encoder *sequence*
(tokens, dim) for every split; the pooled vector is its masked mean, as the ``EncoderOutput``
contract says (checked when the entry is built). ``key`` is a sha256 of

- the encoder: its class, its ``repr`` (architecture settings) and every tensor of its
  ``state_dict`` (so other weights -- another checkpoint, a warm start -- is another entry);
- the data: every split's name and, sample by sample, that modality's preprocessed input
  tensor (dtype, shape, bytes), so any change of preprocessing (size, normalisation,
  tokenizer, sample rate), of files, order or split is another entry.

Hashing reads the inputs once per run but never runs the encoder. Building runs the encoder
once per distinct input (digits-av pairs each image with several clips: 150 images for 370
samples). Entries are written atomically; delete ``cache_dir`` to reclaim the space.

What the cache does with the rest of training:

- Modality dropout and missing modalities work unchanged: the fusion and the losses see the
  presence mask exactly as without the cache (an absent row's features are zeros instead of
  the encoder's output on zeros; every fusion and loss ignores absent rows either way).
- Augmentation: mmfurnace's pipeline has none; the cache stores features of the inputs as
  preprocessed. A random per-epoch transform of a cached modality could not be cached: train
  such a modality with ``freeze: false`` or ``unfreeze_top`` (no cache then).
- Features are computed in FP32 whatever ``train.precision`` is.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from mmfurnace.data.batch import Sample
from mmfurnace.data.cache import PackedDataset, read_header
from mmfurnace.data.info import DatasetInfo
from mmfurnace.errors import InputError
from mmfurnace.models.classifier import MultimodalClassifier
from mmfurnace.models.feature_build import FORMAT, build_entry, only_modalities
from mmfurnace.models.freeze import is_frozen
from mmfurnace.models.layers import masked_mean
from mmfurnace.models.outputs import EncoderOutput


class PrecomputedEncoder(nn.Module):
    """Stands in for a frozen encoder when its outputs come from the cache: takes the cached
    sequence (batch, tokens, dim) and its valid mask (batch, tokens) (None: all real) and returns
    them with the masked-mean pooled vector, as the encoder would have."""

    def __init__(self, *, out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        pass  # nothing to recompute

    def forward(self, x: Tensor, valid: Tensor | None = None) -> EncoderOutput:
        if x.dim() != 3 or x.shape[-1] != self.out_dim:
            raise InputError(
                f"cached features must be (batch, tokens, {self.out_dim}), got {tuple(x.shape)}"
            )
        return EncoderOutput(x, masked_mean(x, valid), valid)


@dataclass
class FeatureCache:
    """Which modalities are served from which cache entry; ``stats`` per modality:
    {"entry", "hit", "fingerprint_s" (hashing the inputs), "build_s", "encoded" (distinct
    inputs the encoder ran on; 0 on a hit), "samples"}."""

    entries: dict[str, Path] = field(default_factory=dict)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)

    def view(self, model: MultimodalClassifier) -> MultimodalClassifier:
        """``model`` with each cached modality's encoder replaced by a PrecomputedEncoder
        (sharing every other module and parameter); ``model`` itself when nothing is cached."""
        if not self.entries:
            return model
        return model.with_encoders(
            {m: PrecomputedEncoder(out_dim=int(model.encoders[m].out_dim)) for m in self.entries}
        )

    def datasets(self, splits: Mapping[str, Dataset]) -> dict[str, Dataset]:
        """Each split with the cached modalities' inputs replaced by their features."""
        if not self.entries:
            return dict(splits)
        return {
            name: FeatureView(ds, {m: PackedDataset(e, name) for m, e in self.entries.items()})
            for name, ds in splits.items()
        }


class FeatureView(Dataset):
    """A split whose cached modalities yield encoder sequences (tokens, dim) instead of inputs.
    The other modalities come from ``base`` (reading only their arrays when it is packed).
    ``info`` stays the base's: it describes what the saved model takes."""

    def __init__(self, base: Dataset, features: Mapping[str, PackedDataset]) -> None:
        self.info: DatasetInfo = base.info  # type: ignore[attr-defined]
        self.features = dict(features)
        for ds in self.features.values():
            if len(ds) != len(base):  # type: ignore[arg-type]
                raise InputError(
                    f"feature cache {ds.root}: {len(ds)} samples, the split has {len(base)}"  # type: ignore[arg-type]
                )
        rest = [m for m in self.info.modalities if m not in self.features]
        self.rest = only_modalities(base, rest) if rest else None
        self._length = len(base)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> Sample:
        cached = [ds[index] for ds in self.features.values()]
        inputs: dict[str, Tensor] = {}
        for sample in cached:
            inputs.update(sample.inputs)
        if self.rest is not None:
            inputs.update(self.rest[index].inputs)
        return Sample(inputs=inputs, label=cached[0].label, meta=cached[0].meta)


def cache_features(
    model: MultimodalClassifier,
    splits: Mapping[str, Dataset],
    *,
    cache_dir: Path,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    build: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
) -> FeatureCache:
    """Find or build the cache entry of every wholly frozen encoder of ``model`` over
    ``splits`` (name -> dataset of Samples). ``build=False`` only looks entries up (other
    DDP ranks, after rank 0 built them): a missing one is an InputError. ``progress`` gets
    (modality, samples encoded, total) while building."""
    cache = FeatureCache()
    for m in model.modalities:
        encoder = model.encoders[m]
        if not is_frozen(encoder):
            continue
        started = time.perf_counter()
        digests = {name: input_digests(ds, m) for name, ds in splits.items()}
        key = _key(encoder, digests, m)
        fingerprint_s = time.perf_counter() - started
        entry = Path(cache_dir) / f"{m}-{type(encoder).__name__.lower()}-{key[:24]}"
        hit = _complete(entry, splits)
        build_s, encoded = 0.0, 0
        if not hit:
            if not build:
                raise InputError(f"feature cache entry {entry} is missing or incomplete")
            started = time.perf_counter()
            encoded = build_entry(entry, encoder, splits, digests, m, torch.device(device), batch_size,
                             key, progress)
            build_s = time.perf_counter() - started
        cache.entries[m] = entry
        cache.stats[m] = {"entry": str(entry), "hit": hit, "fingerprint_s": fingerprint_s,
                          "build_s": build_s, "encoded": encoded,
                          "samples": sum(len(d) for d in digests.values())}
    return cache


@contextlib.contextmanager
def feature_progress(enabled: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A ``progress`` callback for :func:`cache_features` that shows a bar per modality being
    encoded (the bar appears only if something is built); None when not ``enabled``."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bars = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), transient=False)
    tasks: dict[str, Any] = {}

    def report(modality: str, done: int, total: int) -> None:
        if not tasks:
            bars.start()
        if modality not in tasks:
            tasks[modality] = bars.add_task(f"caching {modality} features", total=total)
        bars.update(tasks[modality], completed=done)

    try:
        yield report
    finally:
        if tasks:
            bars.stop()


# --- keys ----------------------------------------------------------------------------------


def encoder_fingerprint(encoder: nn.Module) -> str:
    """sha256 of the encoder's class, repr and every state_dict tensor (name, dtype, shape,
    bytes)."""
    h = hashlib.sha256()
    kind = f"{type(encoder).__module__}.{type(encoder).__qualname__}"
    h.update(f"mmfurnace-features/{FORMAT}\n{kind}\n{encoder!r}\n".encode())
    for name, tensor in encoder.state_dict().items():
        _update(h, name, tensor)
    return h.hexdigest()


def input_digests(dataset: Dataset, modality: str) -> list[str | None]:
    """Per sample, in order: sha256 of its ``modality`` input (dtype, shape, bytes), or None
    where the modality is absent. Reads only that modality of a packed split."""
    view = only_modalities(dataset, [modality])
    digests: list[str | None] = []
    for i in range(len(view)):  # type: ignore[arg-type]
        x = view[i].inputs.get(modality)
        if x is None:
            digests.append(None)
        else:
            h = hashlib.sha256()
            _update(h, modality, x)
            digests.append(h.hexdigest())
    return digests


def _key(encoder: nn.Module, digests: Mapping[str, list[str | None]], modality: str) -> str:
    h = hashlib.sha256(encoder_fingerprint(encoder).encode())
    for name in sorted(digests):
        h.update(f"\n{modality}/{name}/{len(digests[name])}\n".encode())
        h.update("\n".join(d or "-" for d in digests[name]).encode())
    return h.hexdigest()


def _update(h: Any, name: str, tensor: Tensor) -> None:
    t = tensor.detach().cpu().contiguous()
    h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy())  # raw bytes, any dtype (bf16 too)


def _complete(entry: Path, splits: Mapping[str, Dataset]) -> bool:
    if not (entry / "info.json").is_file():
        return False
    try:
        counts = read_header(entry)["counts"]
    except InputError:
        return False
    return all(counts.get(name, 0) == len(ds) for name, ds in splits.items())  # type: ignore[arg-type]
