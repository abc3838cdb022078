"""Tokenisation with the shipped vocabulary, offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LxmertTokenizer

from encoder.tokenizer import VOCAB_PATH, encode_text, load_tokenizer, read_vocab


def test_reference_question_ids(tokenizer: LxmertTokenizer) -> None:
    text = encode_text(tokenizer, ["what color is the cat?"])
    assert text.input_ids.tolist() == [[101, 2054, 3609, 2003, 1996, 4937, 1029, 102]]
    assert text.attention_mask.tolist() == [[1] * 8]
    assert text.token_type_ids.tolist() == [[0] * 8]


def test_ids_are_vocabulary_line_numbers(tokenizer: LxmertTokenizer) -> None:
    # Independent of the tokenizer: the id of a whole word is its line in vocab.txt.
    lines = VOCAB_PATH.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 30522
    words = ["is", "there", "a", "dog", "on", "grass"]
    ids = encode_text(tokenizer, [" ".join(words)]).input_ids[0].tolist()
    assert ids == [lines.index("[CLS]"), *(lines.index(w) for w in words), lines.index("[SEP]")]


def test_lower_cases(tokenizer: LxmertTokenizer) -> None:
    upper = encode_text(tokenizer, ["WHAT Color is THE Cat?"]).input_ids
    lower = encode_text(tokenizer, ["what color is the cat?"]).input_ids
    assert upper.tolist() == lower.tolist()


def test_truncates_to_20_and_pads_to_batch(tokenizer: LxmertTokenizer) -> None:
    long = " ".join(["dog"] * 40)
    text = encode_text(tokenizer, ["a cat", long])
    assert tuple(text.input_ids.shape) == (2, 20)
    assert text.input_ids[1, 0] == 101 and text.input_ids[1, -1] == 102
    assert text.input_ids[0].tolist()[:4] == [101, 1037, 4937, 102]
    assert text.input_ids[0, 4:].eq(0).all()
    assert text.attention_mask[0].tolist() == [1] * 4 + [0] * 16
    assert text.attention_mask[1].eq(1).all()
    # Padding is to the longest of the batch, not to max_length.
    assert encode_text(tokenizer, ["a cat", "a dog"]).input_ids.shape[1] == 4


def test_same_as_the_tokenizers_own_padded_batch(tokenizer: LxmertTokenizer) -> None:
    texts = [
        "  What colour is the café's umbrella?  ",
        "",
        " ".join(["giraffe"] * 30),
        "Is there 1 dog-like thing, ¿or two?",
        "汉字 and naïve résumé",
    ]
    ours = encode_text(tokenizer, texts, max_length=12)
    theirs = tokenizer(
        [text.strip() for text in texts],
        padding="longest",
        truncation=True,
        max_length=12,
        return_tensors="pt",
        return_token_type_ids=True,
        return_attention_mask=True,
    )
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        assert getattr(ours, name).dtype == theirs[name].dtype == torch.int64, name
        assert torch.equal(getattr(ours, name), theirs[name]), name


def test_loads_with_hub_offline_and_empty_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    tok = load_tokenizer()
    assert len(tok) == 30522
    assert tok.mask_token_id == 103


def test_bad_inputs(tmp_path: Path, tokenizer: LxmertTokenizer) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.txt"):
        load_tokenizer(tmp_path / "missing.txt")
    broken = tmp_path / "vocab.txt"
    broken.write_text("hello\nworld\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\[PAD\]"):
        read_vocab(broken)
    with pytest.raises(TypeError):
        encode_text(tokenizer, "one string")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        encode_text(tokenizer, [])
