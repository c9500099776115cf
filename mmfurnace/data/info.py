"""What a model needs to know about a dataset to be built for it."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

from mmfurnace.errors import InputError


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset.

    input_shapes: modality -> per-sample shape without the variable axis for sequences,
        e.g. {"image": (1, 28, 28), "audio": (None, 20), "text": (None,)}; None marks a
        variable-length axis.
    input_dtypes: modality -> "float32" or "int64" (token ids).
    vocab_size: size of the text vocabulary when text is token ids, else None.
    """

    modalities: tuple[str, ...]
    num_classes: int
    multilabel: bool
    class_names: tuple[str, ...]
    input_shapes: dict[str, tuple[int | None, ...]]
    input_dtypes: dict[str, str]
    vocab_size: int | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, object]) -> DatasetInfo:
        raw = dict(raw)
        raw["modalities"] = tuple(raw["modalities"])  # type: ignore[arg-type]
        raw["class_names"] = tuple(raw["class_names"])  # type: ignore[arg-type]
        raw["input_shapes"] = {k: tuple(v) for k, v in raw["input_shapes"].items()}  # type: ignore[union-attr]
        return cls(**raw)  # type: ignore[arg-type]


TOKENIZER_KEY = "tokenizer_sha256"  # in DatasetInfo.extra: which vocabulary made the token ids


def tokenizer_fingerprint(tokenizer_json: str) -> str:
    """sha256 of a tokenizer's JSON (``Tokenizer.to_str()``)."""
    return hashlib.sha256(tokenizer_json.encode("utf-8")).hexdigest()


def check_same_data(trained: DatasetInfo, data: DatasetInfo, *, where: str) -> None:
    """InputError when ``data`` is not what a model trained on ``trained`` can read: other
    classes, or text token ids from another vocabulary (e.g. another build of a dataset whose
    WordPiece vocabulary was retrained) -- which would run without error and score near chance
    on text. A side without a fingerprint (data packed by an older version) is not checked."""
    if tuple(trained.class_names) != tuple(data.class_names):
        raise InputError(
            f"{where}: the model was trained on classes {list(trained.class_names)}, this data has "
            f"{list(data.class_names)}"
        )
    ours, theirs = trained.extra.get(TOKENIZER_KEY), data.extra.get(TOKENIZER_KEY)
    if "text" in data.modalities and ours and theirs and ours != theirs:
        raise InputError(
            f"{where}: its text was tokenized with another vocabulary (tokenizer {str(theirs)[:12]}) "
            f"than the model was trained with ({str(ours)[:12]}); this is another build of the "
            "dataset: point data.root at the data the model was trained on, or retrain"
        )
