"""Encoder "hf": a Hugging Face AutoModel loaded from a local directory (never downloaded).

Input ids must come from the model's own tokenizer (PAD id 0, as BERT-style vocabularies use);
the output width is the model's hidden size.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from mmfurnace.data.batch import PAD_ID
from mmfurnace.errors import ConfigError, MissingDependencyError
from mmfurnace.models.layers import attendable, check_rank, masked_mean
from mmfurnace.models.outputs import EncoderOutput
from mmfurnace.models.registry import ENCODERS

_HOW = (
    "put the Hugging Face model files (config.json and model.safetensors or pytorch_model.bin) "
    "in a local folder, e.g. `huggingface-cli download sentence-transformers/all-MiniLM-L6-v2 "
    "--local-dir models/minilm` on a machine with network, and set model.encoders.text.path to it"
)


def load_local_model(path: str | Path | None) -> nn.Module:
    """Load ``transformers.AutoModel`` from ``path`` with ``local_files_only=True``."""
    if path is None:
        raise ConfigError(f"encoder 'hf' needs a path to a local model folder; {_HOW}")
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"encoder 'hf': no config.json in {path}; {_HOW}")
    try:
        from transformers import AutoModel
    except ImportError:
        raise MissingDependencyError(
            "encoder 'hf' needs the transformers package: pip install 'mmfurnace[hf]'"
        ) from None
    return AutoModel.from_pretrained(str(path), local_files_only=True)


class HFEncoder(nn.Module):
    """Wraps a loaded transformers model: last hidden state as the sequence, masked mean pooled."""

    def __init__(self, *, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.out_dim = int(model.config.hidden_size)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        if enabled:
            self.model.gradient_checkpointing_enable()
        else:
            self.model.gradient_checkpointing_disable()

    def forward(self, x: Tensor, padding: Tensor | None = None) -> EncoderOutput:
        """x (batch, tokens) int64 ids, padding (batch, tokens) True=real -> (batch, tokens, hidden)."""
        check_rank("hf", x, (2,), "(batch, tokens) int64 token ids")
        if padding is None:
            padding = x != PAD_ID
        hidden = self.model(
            input_ids=x, attention_mask=attendable(padding).long()
        ).last_hidden_state
        return EncoderOutput(hidden, masked_mean(hidden, padding), padding)


@ENCODERS.register("hf")
def hf(*, path: str | Path | None = None) -> HFEncoder:
    return HFEncoder(model=load_local_model(path))
