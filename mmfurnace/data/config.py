"""Config of the data section: which dataset, how each modality is preprocessed, how it loads."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mmfurnace.modalities import Modality
from mmfurnace.typed_config import FieldError, StrictModel


class ImagePrepConfig(StrictModel):
    size: tuple[int, int] = (28, 28)
    channels: Literal[1, 3] = 1
    mean: list[float] = Field(default_factory=lambda: [0.5])
    std: list[float] = Field(default_factory=lambda: [0.5])


class AudioPrepConfig(StrictModel):
    sample_rate: int = Field(16000, gt=0)
    # speech_mel: the fixed front-end of the pretrained speech_embedding encoder (16 kHz,
    # 32 mel bins; n_mfcc, n_mels, n_fft and hop_length do not apply to it)
    features: Literal["mfcc", "logmel", "speech_mel"] = "mfcc"
    n_mfcc: int = Field(20, gt=0)
    n_mels: int = Field(40, gt=0)
    n_fft: int = Field(512, gt=0)
    hop_length: int = Field(160, gt=0)
    max_seconds: float | None = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _speech_mel_rate(self) -> AudioPrepConfig:
        if self.features == "speech_mel" and self.sample_rate != 16000:
            raise ValueError(
                f"features 'speech_mel' need sample_rate 16000 (speech_embedding's rate), "
                f"got {self.sample_rate}"
            )
        return self


class TextPrepConfig(StrictModel):
    max_length: int = Field(32, gt=2)
    vocab_size: int = Field(1000, gt=10)
    lowercase: bool = True
    # a tokenizer.json, a folder holding one, or pretrained:NAME (e.g. pretrained:minilm, the
    # tokenizer of the minilm encoder)
    tokenizer: Path | None = None


class DataConfig(StrictModel):
    dataset: str = Field("digits-av", description="a dataset registered in mmfurnace.data.datasets.DATASETS")
    root: Path = Path("data/digits-av")
    modalities: list[Modality] = Field(default_factory=lambda: ["audio", "image", "text"])
    batch_size: int = Field(64, gt=0)
    num_workers: int = Field(0, ge=0)
    prefetch_factor: int = Field(2, gt=0)
    pin_memory: bool | None = None  # None: on when training on a GPU
    image: ImagePrepConfig = Field(default_factory=ImagePrepConfig)
    audio: AudioPrepConfig = Field(default_factory=AudioPrepConfig)
    text: TextPrepConfig = Field(default_factory=TextPrepConfig)
    valid_start: int | None = Field(
        None, gt=0, description="avmnist: first row of the train files that is validation "
        "(default: the row mmfurnace's writer recorded in layout.json, else MultiBench's 55,000)"
    )


    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        # the registry is the one list of names: a dataset registered anywhere is accepted
        from mmfurnace.data.datasets import DATASETS  # imports the readers, which import this

        DATASETS[name]  # raises ConfigError (a ValueError) listing the known names
        return name

    @model_validator(mode="after")
    def _options_the_dataset_reads(self) -> DataConfig:
        # Published layouts ship preprocessed arrays: a preprocessing option they cannot apply
        # is an error, not a silent no-op.
        if self.valid_start is not None and self.dataset != "avmnist":
            raise FieldError(
                ("valid_start",),
                f"applies to dataset 'avmnist' only; {self.dataset!r} has its own valid split",
            )
        honoured = FIXED_LAYOUT_OPTIONS.get(self.dataset)
        if honoured is None:
            return self
        for section in ("image", "audio", "text"):
            prep = getattr(self, section)
            defaults = type(prep)()
            # Values, not "was it set": a saved config lists every key with its value.
            changed = [k for k in type(prep).model_fields if getattr(prep, k) != getattr(defaults, k)]
            ignored = sorted(
                key for key in changed
                if key not in honoured.get(section, {})
                or honoured[section][key] not in (None, _plain(getattr(prep, key)))
            )
            if ignored:
                raise FieldError(
                    (section, ignored[0]),
                    f"dataset {self.dataset!r} ships preprocessed {section} arrays, so this "
                    f"option does not apply ({_applies(honoured.get(section, {}))})",
                )
        return self


# Preprocessing options each published-layout reader honours: option -> None (any value) or
# the only value that describes its arrays. Any other option moved off its default is rejected.
FIXED_LAYOUT_OPTIONS: dict[str, dict[str, dict[str, object]]] = {
    "avmnist": {"image": {"mean": None, "std": None, "size": (28, 28), "channels": 1}},
    "mmimdb": {},
}


def _plain(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


def _applies(options: dict[str, object]) -> str:
    if not options:
        return "none does"
    return "those that do: " + ", ".join(
        k if v is None else f"{k} = {list(v) if isinstance(v, tuple) else v}"
        for k, v in options.items()
    )
