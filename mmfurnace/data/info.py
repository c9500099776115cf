"""What a model needs to know about a dataset to be built for it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


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
