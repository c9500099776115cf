"""Building one feature-cache entry (see models/feature_cache.py): run a frozen encoder over
every split, once per distinct input, and write each sample's sequence as a packed cache."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from mmfurnace.data.batch import Sample, collate_samples
from mmfurnace.data.cache import PackedDataset, write_packed
from mmfurnace.data.info import DatasetInfo
from mmfurnace.data.subset import ModalityView
from mmfurnace.errors import ConfigError
from mmfurnace.models.layers import masked_mean
from mmfurnace.models.outputs import EncoderOutput

FORMAT = 1  # bump when what an entry holds changes: old entries then stop matching


@torch.no_grad()
def build_entry(
    entry: Path,
    encoder: nn.Module,
    splits: Mapping[str, Dataset],
    digests: Mapping[str, list[str | None]],
    modality: str,
    device: torch.device,
    batch_size: int,
    key: str,
    progress: Callable[[str, int, int], None] | None,
) -> int:
    """Write ``entry``: a packed cache of ``modality``'s encoder sequence (tokens, dim) for
    every sample of every split, in order, labels copied (``digests``: the per-sample input
    hashes of :func:`~mmfurnace.models.feature_cache.input_digests`). Returns how many inputs
    the encoder ran on: an input that occurs again is encoded once."""
    base = next(iter(splits.values())).info  # type: ignore[attr-defined]
    dim = int(encoder.out_dim)
    info = DatasetInfo(
        modalities=(modality,),
        num_classes=base.num_classes,
        multilabel=base.multilabel,
        class_names=base.class_names,
        input_shapes={modality: (None, dim)},
        input_dtypes={modality: "float32"},
        extra={"feature_cache": {"format": FORMAT, "key": key, "modality": modality,
                                 "encoder": type(encoder).__name__}},
    )
    names = [name for name, ds in splits.items() for _ in range(len(ds))]  # type: ignore[arg-type]
    encoder = encoder.to(device)
    reuse = _Reuse(d for name in splits for d in digests[name])
    done = 0

    def stream() -> Iterator[Sample]:
        nonlocal done
        for name, ds in splits.items():
            for sample in _encode(encoder, ds, digests[name], modality, device, batch_size, reuse):
                done += 1
                if progress is not None:
                    progress(modality, done, len(names))
                yield sample

    write_packed(entry, stream(), info=info, splits=names)
    return reuse.encoded


class _Reuse:
    """Features of inputs that occur again later (digits-av pairs each image with several
    clips; AV-MNIST-style sets reuse clips), kept until their last use so the encoder runs
    once per distinct input. At most ``cap`` bytes are kept; past it repeats are re-encoded."""

    def __init__(self, digests: Iterable[str | None], cap: int = 512 << 20) -> None:
        self.left = Counter(d for d in digests if d is not None)
        self.kept: dict[str, Tensor] = {}
        self.bytes, self.cap, self.encoded = 0, cap, 0

    def used(self, digest: str, features: Tensor) -> None:
        self.left[digest] -= 1
        if self.left[digest] == 0:
            dropped = self.kept.pop(digest, None)
            self.bytes -= 0 if dropped is None else dropped.nbytes
        elif digest not in self.kept and self.bytes + features.nbytes <= self.cap:
            self.kept[digest] = features
            self.bytes += features.nbytes


def _encode(
    encoder: nn.Module,
    dataset: Dataset,
    digests: list[str | None],
    modality: str,
    device: torch.device,
    batch_size: int,
    reuse: _Reuse,
) -> Iterator[Sample]:
    """Samples holding each row's encoder sequence (real tokens only), or nothing when the
    modality is absent; labels copied. Inputs already encoded (``reuse``) are not run again."""
    view = only_modalities(dataset, [modality])
    for start in range(0, len(view), batch_size):  # type: ignore[arg-type]
        rows = range(start, min(start + batch_size, len(view)))  # type: ignore[arg-type]
        samples = [view[i] for i in rows]
        fresh: dict[str, Tensor] = {}
        todo = {}  # digest -> the sample to encode it from (first of the chunk)
        for i, sample in zip(rows, samples, strict=True):
            d = digests[i]
            if d is not None and d not in reuse.kept and d not in todo:
                todo[d] = sample
        if todo:
            fresh = _run(encoder, list(todo), list(todo.values()), modality, device)
            reuse.encoded += len(todo)
        for i, sample in zip(rows, samples, strict=True):
            d = digests[i]
            if d is None:
                yield Sample(inputs={}, label=sample.label)
                continue
            features = fresh[d] if d in fresh else reuse.kept[d]
            reuse.used(d, features)
            yield Sample(inputs={modality: features}, label=sample.label)


def _run(
    encoder: nn.Module, digests: list[str], samples: list[Sample], modality: str,
    device: torch.device,
) -> dict[str, Tensor]:
    """digest -> the encoder sequence (real tokens, dim) of each sample's input."""
    batch = collate_samples(samples, [modality])
    x = batch.inputs[modality].to(device)
    mask = batch.valid.get(modality)
    out = encoder(x, None if mask is None else mask.to(device))
    _check_pooled(encoder, out, batch.present[modality].to(device))
    sequence = out.sequence.float().cpu()
    valid = None if out.valid is None else out.valid.cpu()
    features = {}
    for row, digest in enumerate(digests):
        tokens = sequence.shape[1] if valid is None else _prefix(valid[row], encoder)
        features[digest] = sequence[row, :tokens].clone()
    return features


def _prefix(real: Tensor, encoder: nn.Module) -> int:
    n = int(real.sum())
    if not bool(real[:n].all()):
        raise ConfigError(
            f"{type(encoder).__name__}: its output valid mask is not a prefix of real tokens, so "
            "its outputs cannot be cached; set train.feature_cache=false"
        )
    return n


def _check_pooled(encoder: nn.Module, out: EncoderOutput, present: Tensor) -> None:
    """The cache keeps sequences only; the pooled vector must be their masked mean."""
    rows = present.nonzero().flatten()
    expected = masked_mean(out.sequence[rows], None if out.valid is None else out.valid[rows])
    if not torch.allclose(out.pooled[rows], expected, rtol=1e-4, atol=1e-5):
        raise ConfigError(
            f"{type(encoder).__name__}: its pooled output is not the masked mean of its "
            "sequence, so its outputs cannot be cached; set train.feature_cache=false"
        )


def only_modalities(dataset: Dataset, keep: list[str]) -> Dataset:
    """``dataset`` yielding only ``keep``: a packed split re-opened with just those arrays (so
    the cached modalities' inputs are never read), anything else filtered per sample."""
    inner = dataset.dataset if isinstance(dataset, ModalityView) else dataset
    if isinstance(inner, PackedDataset):
        return PackedDataset(inner.root, inner.split, modalities=keep)
    return ModalityView(dataset, keep)
