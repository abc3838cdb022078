"""Fixtures of the encoder tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from encoder_fixtures import SMALL_VOCAB
from transformers import LxmertTokenizer

from encoder.tokenizer import load_tokenizer


@pytest.fixture(scope="session")
def tokenizer() -> LxmertTokenizer:
    return load_tokenizer()


@pytest.fixture(scope="session")
def small_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> LxmertTokenizer:
    """A WordPiece tokenizer over SMALL_VOCAB, so that tiny models stay tiny."""
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(SMALL_VOCAB) + "\n", encoding="utf-8")
    return load_tokenizer(path)


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    # Tiny models gain nothing from intra-op threads, and on a busy 2-core machine the
    # spinning OpenMP workers made a 20-step test 15x slower.
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
