"""A JSONL manifest for users' own data, decoded from the raw files on every access.

One JSON object per line (blank lines are skipped)::

    {"id": "s1", "split": "train", "image": "imgs/a.png", "audio": "wav/a.wav",
     "text": "a caption", "label": 3}

Fields:
    id      optional string, unique in the file; defaults to ``line<N>``.
    split   required, one of ``train``, ``valid``, ``test``.
    image   optional path to an image file; relative paths are relative to the manifest's folder.
    audio   optional path to a wav/flac/ogg file; same rule.
    text    optional non-empty string.
    label   a class: an int >= 0 or a class-name string (single-label), or
    labels  a list of them (multi-label). Exactly one of ``label``/``labels`` per line, and
            every line of a file uses the same one and the same kind (ints or strings).

A modality may be absent (left out, or ``null``): a missing modality is data. A line must have
at least one modality.

How classes are named. With ``class_names`` given, string labels must be among them and int
labels index them. Without it: int labels ``0..K-1`` get the names ``"0".."K-1"`` where K-1 is
the largest label in the whole file; string labels become the sorted set of distinct strings
in the whole file (all splits, so every split agrees on the numbering).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmfurnace.data.batch import Sample
from mmfurnace.data.info import TOKENIZER_KEY, DatasetInfo, tokenizer_fingerprint
from mmfurnace.errors import InputError
from mmfurnace.modalities import MODALITIES, SEQUENCE_MODALITIES

SPLITS = ("train", "valid", "test")
FILE_FIELDS = ("image", "audio")
FIELDS = ("id", "split", "image", "audio", "text", "label", "labels")

Label = int | str


@dataclass(frozen=True)
class ManifestRecord:
    """One validated manifest line. ``image``/``audio`` are resolved, existing paths."""

    id: str
    split: str
    line: int
    image: Path | None = None
    audio: Path | None = None
    text: str | None = None
    label: Label | None = None
    labels: tuple[Label, ...] | None = None

    def has(self, modality: str) -> bool:
        return getattr(self, modality) is not None


def read_manifest(path: Path) -> list[ManifestRecord]:
    """Read and validate every line of a JSONL manifest.

    Raises InputError naming ``file:line`` and the field for bad JSON, non-UTF-8 bytes, a
    missing or unknown field, a value of the wrong type, a file that does not exist, and
    labels that mix kinds across lines.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read manifest ({err.strerror or err})") from None
    records: list[ManifestRecord] = []
    seen_ids: dict[str, int] = {}
    for number, line_bytes in enumerate(raw.split(b"\n"), start=1):
        where = f"{path}:{number}"
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InputError(
                f"{where}: not UTF-8 (byte 0x{line_bytes[err.start]:02x} at column "
                f"{err.start + 1}); save the manifest as UTF-8"
            ) from None
        if not line.strip():
            continue
        record = _parse_line(line, where, number, path.parent)
        if record.id in seen_ids:
            raise InputError(
                f"{where}: field 'id': {record.id!r} already used on line {seen_ids[record.id]}"
            )
        seen_ids[record.id] = number
        records.append(record)
    if not records:
        raise InputError(f"{path}: manifest has no records")
    _check_consistent_labels(path, records)
    return records


def _parse_line(line: str, where: str, number: int, base: Path) -> ManifestRecord:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise InputError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise InputError(
            f"{where}: unknown field {unknown[0]!r}; allowed fields: {', '.join(FIELDS)}"
        )
    rid = obj.get("id", f"line{number}")
    if not isinstance(rid, (str, int)) or isinstance(rid, bool) or rid == "":
        raise InputError(f"{where}: field 'id' must be a non-empty string, got {rid!r}")
    split = obj.get("split")
    if split is None:
        raise InputError(f"{where}: field 'split' is missing; use one of {', '.join(SPLITS)}")
    if split not in SPLITS:
        raise InputError(f"{where}: field 'split' is {split!r}; use one of {', '.join(SPLITS)}")
    files = {f: _resolve_file(obj.get(f), f, where, base) for f in FILE_FIELDS}
    text = obj.get("text")
    if text is not None and (not isinstance(text, str) or not text.strip()):
        raise InputError(
            f"{where}: field 'text' must be a non-empty string (leave it out when there is no "
            f"text), got {text!r}"
        )
    if files["image"] is None and files["audio"] is None and text is None:
        raise InputError(f"{where}: no modality; give at least one of image, audio, text")
    label, labels = _parse_label(obj, where)
    return ManifestRecord(
        id=str(rid), split=split, line=number, text=text, label=label, labels=labels, **files
    )


def _resolve_file(value: Any, field: str, where: str, base: Path) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InputError(f"{where}: field {field!r} must be a file path string, got {value!r}")
    path = Path(value) if Path(value).is_absolute() else base / value
    if not path.is_file():
        raise InputError(f"{where}: field {field!r}: file not found: {path}")
    return path


def _parse_label(obj: dict[str, Any], where: str) -> tuple[Label | None, tuple[Label, ...] | None]:
    if "label" in obj and "labels" in obj:
        raise InputError(f"{where}: give 'label' (one class) or 'labels' (a list), not both")
    if "label" in obj:
        return _check_label(obj["label"], "label", where), None
    if "labels" in obj:
        value = obj["labels"]
        if not isinstance(value, list):
            raise InputError(f"{where}: field 'labels' must be a list, got {value!r}")
        labels = tuple(_check_label(v, "labels", where) for v in value)
        if len({type(v) for v in labels}) > 1:
            raise InputError(f"{where}: field 'labels' mixes ints and strings")
        return None, labels
    raise InputError(f"{where}: field 'label' is missing (or give 'labels' for multi-label)")


def _check_label(value: Any, field: str, where: str) -> Label:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InputError(f"{where}: field {field!r} must be an int or a class name, got {value!r}")
    if isinstance(value, int) and value < 0:
        raise InputError(f"{where}: field {field!r} must be >= 0, got {value}")
    if isinstance(value, str) and not value:
        raise InputError(f"{where}: field {field!r} is an empty class name")
    return value


def _label_kind(record: ManifestRecord) -> tuple[str, type | None]:
    if record.labels is not None:
        return "labels", type(record.labels[0]) if record.labels else None
    return "label", type(record.label)


def _check_consistent_labels(path: Path, records: Sequence[ManifestRecord]) -> None:
    first_field, first_type = _label_kind(records[0])
    for r in records:
        field, kind = _label_kind(r)
        if field != first_field:
            raise InputError(
                f"{path}:{r.line}: uses {field!r} but line {records[0].line} uses "
                f"{first_field!r}; a manifest is either single-label or multi-label"
            )
        if kind is not None and first_type is not None and kind is not first_type:
            raise InputError(
                f"{path}:{r.line}: field {field!r} is {kind.__name__} but earlier labels are "
                f"{first_type.__name__}; use class indices or class names, not both"
            )
        if first_type is None:
            first_type = kind


def resolve_classes(
    path: Path, records: Sequence[ManifestRecord], class_names: Sequence[str] | None = None
) -> tuple[str, ...]:
    """Class names for the records, following the rule in the module docstring."""
    values: list[Label] = []
    for r in records:
        values.extend(r.labels if r.labels is not None else [r.label])  # type: ignore[list-item]
    if class_names is not None:
        names = tuple(class_names)
        for r in records:
            for v in r.labels if r.labels is not None else [r.label]:
                ok = v in names if isinstance(v, str) else v < len(names)  # type: ignore[operator]
                if not ok:
                    raise InputError(
                        f"{path}:{r.line}: label {v!r} is not one of the {len(names)} class "
                        f"names ({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})"
                    )
        return names
    if any(isinstance(v, str) for v in values):
        return tuple(sorted({str(v) for v in values}))
    top = max((int(v) for v in values), default=-1)  # type: ignore[arg-type]
    if top < 0:
        raise InputError(f"{path}: no labels in any record")
    return tuple(str(k) for k in range(top + 1))


class ManifestDataset(Dataset):
    """Samples of a JSONL manifest, decoding the raw files on every ``__getitem__``.

    ``preprocessors`` maps modality -> callable ``pre(value, source=str) -> Tensor`` (value is
    the file path for image/audio, the string for text); it also chooses the modalities: a
    record's modality with no preprocessor is ignored. ``split`` None keeps every record.
    Labels: () int64 class index, or (classes,) float32 multi-hot when the manifest uses
    ``labels``.
    """

    def __init__(
        self,
        path: Path,
        *,
        preprocessors: Mapping[str, Callable[..., Tensor]],
        split: str | None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.path = Path(path)
        unknown = sorted(set(preprocessors) - set(MODALITIES))
        if unknown:
            raise InputError(f"unknown modality {unknown[0]!r}; known: {', '.join(MODALITIES)}")
        if not preprocessors:
            raise InputError(f"{self.path}: no preprocessors given, so no modality to load")
        if split is not None and split not in SPLITS:
            raise InputError(f"split {split!r}; use one of {', '.join(SPLITS)}")
        self.preprocessors = dict(preprocessors)
        self.modalities = sorted(preprocessors)
        self.all_records = read_manifest(self.path)
        self.class_names = resolve_classes(self.path, self.all_records, class_names)
        self._class_index = {c: k for k, c in enumerate(self.class_names)}
        self.multilabel = self.all_records[0].labels is not None
        self.records = [r for r in self.all_records if split is None or r.split == split]
        self.split = split
        self._info: DatasetInfo | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Sample:
        record = self.records[i]
        inputs: dict[str, Tensor] = {}
        for m in self.modalities:
            value = getattr(record, m)
            if value is None:
                continue
            source = str(value) if m in FILE_FIELDS else f"{self.path}:{record.line} text"
            inputs[m] = self.preprocessors[m](value, source=source)
        return Sample(inputs=inputs, label=self._label(record), meta={"id": record.id})

    def _label(self, record: ManifestRecord) -> Tensor:
        if record.labels is None:
            return torch.tensor(self._index(record.label), dtype=torch.int64)  # type: ignore[arg-type]
        target = torch.zeros(len(self.class_names), dtype=torch.float32)
        for v in record.labels:
            target[self._index(v)] = 1.0
        return target

    def _index(self, value: Label) -> int:
        return self._class_index[value] if isinstance(value, str) else int(value)

    @property
    def info(self) -> DatasetInfo:
        """Shapes come from preprocessing the first record that has each modality (once)."""
        if self._info is None:
            self._info = self._describe()
        return self._info

    def _describe(self) -> DatasetInfo:
        shapes: dict[str, tuple[int | None, ...]] = {}
        dtypes: dict[str, str] = {}
        for m in self.modalities:
            first = next((r for r in self.all_records if r.has(m)), None)
            if first is None:
                raise InputError(
                    f"{self.path}: no record has {m!r}; drop it from the modalities to use"
                )
            value = getattr(first, m)
            source = str(value) if m in FILE_FIELDS else f"{self.path}:{first.line} text"
            tensor = self.preprocessors[m](value, source=source)
            shape: tuple[int | None, ...] = tuple(int(d) for d in tensor.shape)
            if m in SEQUENCE_MODALITIES:
                shape = (None, *shape[1:])
            shapes[m] = shape
            dtypes[m] = str(tensor.dtype).removeprefix("torch.")
        vocab = _vocab_size(self.preprocessors.get("text"))
        return DatasetInfo(
            modalities=tuple(self.modalities),
            num_classes=len(self.class_names),
            multilabel=self.multilabel,
            class_names=self.class_names,
            input_shapes=shapes,
            input_dtypes=dtypes,
            vocab_size=vocab if "text" in self.modalities else None,
            extra={"source": "manifest", "manifest": str(self.path), **_tokenizer_extra(self.preprocessors.get("text"))},
        )


def _tokenizer_extra(pre: object) -> dict[str, str]:
    tokenizer = getattr(pre, "tokenizer", None)
    if tokenizer is None or not hasattr(tokenizer, "to_str"):
        return {}
    return {TOKENIZER_KEY: tokenizer_fingerprint(tokenizer.to_str())}


def _vocab_size(pre: object) -> int | None:
    if pre is None:
        return None
    size = getattr(pre, "vocab_size", None)
    if isinstance(size, int):
        return size
    tokenizer = getattr(pre, "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "get_vocab_size"):
        return int(tokenizer.get_vocab_size())
    return None
