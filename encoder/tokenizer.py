"""Questions and captions to LXMERT token ids with the shipped bert-base-uncased vocabulary.

No hub access: the WordPiece vocabulary ships in ``encoder/data`` and is handed to the
tokenizer as a dict (transformers 5's ``LxmertTokenizer(vocab_file=...)`` silently ignores the
file, which would give a 5-token vocabulary).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

# transformers 5 resolves this alias of BertTokenizer lazily, which type checkers cannot see.
from transformers import LxmertTokenizer  # type: ignore[attr-defined]

#: The bert-base-uncased WordPiece vocabulary LXMERT was trained with (30522 lines).
VOCAB_PATH: Path = Path(__file__).resolve().parent / "data" / "bert-base-uncased-vocab.txt"


def read_vocab(path: Path | str = VOCAB_PATH) -> dict[str, int]:
    """Token -> id for a WordPiece vocabulary file (one token per line, id = line number)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"vocabulary file {path} not found; pass vocab_path= a bert-style vocab.txt"
        )
    tokens = path.read_text(encoding="utf-8").split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    vocab = {token: index for index, token in enumerate(tokens)}
    missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t not in vocab]
    if missing:
        raise ValueError(f"vocabulary file {path} lacks the special tokens {missing}")
    return vocab


def load_tokenizer(vocab_path: Path | str = VOCAB_PATH) -> LxmertTokenizer:
    """An uncased LXMERT (BERT WordPiece) tokenizer over ``vocab_path``, built without the hub."""
    return LxmertTokenizer(vocab=read_vocab(vocab_path), do_lower_case=True)


@dataclass(frozen=True)
class TextInputs:
    """Tokenised text for LXMERT, padded to the longest sequence of the batch.

    Attributes:
        input_ids: int64 ``[B, T]``, ``[CLS] tokens [SEP]`` then ``[PAD]`` (id 0).
        attention_mask: int64 ``[B, T]``, 1 for real tokens, 0 for padding.
        token_type_ids: int64 ``[B, T]``, all 0 (one segment).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor

    def to(self, device: torch.device | str) -> TextInputs:
        """A copy on ``device``."""
        return TextInputs(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            token_type_ids=self.token_type_ids.to(device),
        )


def encode_text(
    tokenizer: LxmertTokenizer, texts: Sequence[str], *, max_length: int = 20
) -> TextInputs:
    """Lower-case, WordPiece, ``[CLS] text [SEP]``, truncate to ``max_length``, pad to batch.

    Args:
        tokenizer: from :func:`load_tokenizer`.
        texts: B questions or captions.
        max_length: tokens per text including ``[CLS]`` and ``[SEP]`` (LXMERT: 20).
    """
    if isinstance(texts, str):
        raise TypeError("encode_text takes a sequence of strings, not one string")
    if len(texts) == 0:
        raise ValueError("encode_text needs at least one text")
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings, got {type(text).__name__}")
    # encode() per text and our own padding: the same ids as the tokenizer's batch call with
    # padding="longest" (tested), at a third of its cost, which matters next to a small model.
    sequences = [
        tokenizer.encode(text.strip(), truncation=True, max_length=max_length) for text in texts
    ]
    longest = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(texts), longest), tokenizer.pad_token_id, dtype=torch.int64)
    attention_mask = torch.zeros((len(texts), longest), dtype=torch.int64)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        attention_mask[row, : len(ids)] = 1
    return TextInputs(
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_type_ids=torch.zeros_like(input_ids),
    )
