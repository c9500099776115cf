"""Text preprocessing with a fast (Rust) WordPiece tokenizer from Hugging Face ``tokenizers``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from torch import Tensor

from mmfurnace.data.batch import PAD_ID
from mmfurnace.errors import InputError

# Order fixes the ids: [PAD] must be 0 (PAD_ID) so collated padding is the pad token.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CLS_ID, SEP_ID = 2, 3
TOKENIZER_FILE = "tokenizer.json"


def build_wordpiece_tokenizer(
    texts: Iterable[str], *, vocab_size: int = 1000, lowercase: bool = True
) -> Tokenizer:
    """Train a BERT-style WordPiece tokenizer on ``texts``; encodings are [CLS] ... [SEP]."""
    # Skip blank lines so they neither count as data nor hide an empty corpus.
    corpus = [t for t in texts if t and t.strip()]
    if not corpus:
        raise InputError("cannot build a tokenizer: the dataset has no non-empty text")
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
    assert ids == list(range(len(SPECIAL_TOKENS))), ids
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)],
    )
    return tokenizer


PRETRAINED_PREFIX = "pretrained:"  # data.text.tokenizer=pretrained:minilm


def tokenizer_file(path: str | Path) -> Path:
    """The tokenizer.json that ``path`` names: the file itself, the tokenizer.json inside a
    directory (a local HF model folder), or ``pretrained:NAME``, the tokenizer of pretrained
    weights installed as a package (mmfurnace.pretrained, e.g. ``pretrained:minilm``)."""
    text = str(path)
    if text.startswith(PRETRAINED_PREFIX):
        from mmfurnace.pretrained import locate

        path = locate(text.removeprefix(PRETRAINED_PREFIX))
    path = Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        hint = (
            " (only fast tokenizers saved as tokenizer.json are supported)" if path.is_dir() else ""
        )
        raise InputError(f"{file}: tokenizer file not found{hint}")
    return file


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load the tokenizer.json that ``path`` names (see :func:`tokenizer_file`)."""
    file = tokenizer_file(path)
    try:
        return Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception on parse errors
        raise InputError(f"{file}: not a valid tokenizer.json ({exc})") from exc


class TextPreprocessor:
    """Text -> (tokens,) int64 ids, truncated to ``max_length`` (special tokens included).

    The tokenizer passed in is not modified: truncation is set on a private copy.
    """

    def __init__(self, tokenizer: Tokenizer, *, max_length: int = 32) -> None:
        processor = tokenizer.post_processor
        specials = processor.num_special_tokens_to_add(False) if processor is not None else 0
        if max_length <= specials:
            raise InputError(
                f"text max_length must exceed the {specials} special tokens added, got {max_length}"
            )
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self._encoder = Tokenizer.from_str(tokenizer.to_str())
        self._encoder.no_padding()
        # Truncation leaves room for the post-processor's tokens, so [SEP] stays last.
        self._encoder.enable_truncation(self.max_length)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def __call__(self, text: str | bytes, *, source: str | None = None) -> Tensor:
        """Token ids (tokens,) int64, 1 <= tokens <= max_length, not padded."""
        text = _as_text(text, source or "<text>")
        return torch.tensor(self._encoder.encode(text).ids, dtype=torch.int64)

    def encode_batch(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """(ids, attention_mask), both (batch, max_length): ids int64 padded with PAD_ID, mask bool."""
        if isinstance(texts, str):
            raise InputError("encode_batch expects a sequence of texts, got a single string")
        checked = [_as_text(t, f"text[{i}]") for i, t in enumerate(texts)]
        ids = torch.full((len(checked), self.max_length), PAD_ID, dtype=torch.int64)
        mask = torch.zeros((len(checked), self.max_length), dtype=torch.bool)
        for row, encoding in enumerate(self._encoder.encode_batch(checked)):
            n = len(encoding.ids)
            ids[row, :n] = torch.tensor(encoding.ids, dtype=torch.int64)
            mask[row, :n] = True
        return ids, mask

    def save(self, path: str | Path) -> Path:
        """Write the tokenizer as tokenizer.json (into ``path`` if it is a directory)."""
        path = Path(path)
        file = path / TOKENIZER_FILE if path.is_dir() else path
        file.parent.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(file))
        return file

    def to_dict(self) -> dict[str, object]:
        return {
            "max_length": self.max_length,
            "vocab_size": self.vocab_size,
            "pad_id": PAD_ID,
            "special_tokens": {t: self.tokenizer.token_to_id(t) for t in SPECIAL_TOKENS},
        }


def _as_text(text: str | bytes, name: str) -> str:
    if isinstance(text, bytes | bytearray):
        try:
            # utf-8-sig: files saved by Windows editors start with a byte-order mark.
            text = bytes(text).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"{name}: text is not valid UTF-8 (bad byte at offset {exc.start})"
            ) from exc
    if not isinstance(text, str):
        raise InputError(f"{name}: expected str or UTF-8 bytes, got {type(text).__name__}")
    if not text.strip():
        raise InputError(f"{name}: empty text (nothing but whitespace)")
    return text
