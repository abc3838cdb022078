"""load_encoder: a checkpoint directory with its own answers and vocabulary, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from encoder_fixtures import SMALL_VOCAB, make_regions, tiny_config

from encoder.build import load_encoder
from encoder.config import EncoderConfig
from encoder.model import build_model

ANSWERS = ["yes", "no", "red", "blue", "two"]


def _checkpoint(tmp_path: Path, *, answers: list[str] = ANSWERS) -> Path:
    directory = tmp_path / "tiny-lxmert"
    build_model(tiny_config(), head="qa").save_pretrained(directory)
    (directory / "label2ans.json").write_text(json.dumps(answers), encoding="utf-8")
    (directory / "vocab.txt").write_text("\n".join(SMALL_VOCAB) + "\n", encoding="utf-8")
    return directory


def test_answers_from_a_checkpoint_directory(tmp_path: Path) -> None:
    encoder = load_encoder(_checkpoint(tmp_path))
    assert encoder.answers is not None and encoder.answers.answers == tuple(ANSWERS)
    assert len(encoder.tokenizer) == len(SMALL_VOCAB)
    regions = [make_regions("a", 4, seed=1), make_regions("b", 6, seed=2)]
    questions = ["what color is the ball?", "how many cubes are there?"]
    result = encoder.answer(regions, questions, k=5)
    with torch.no_grad():
        logits = encoder.model(**encoder.model_inputs(regions, questions)).question_answering_score
    for row, answers in enumerate(result):
        probs = torch.softmax(logits[row], dim=-1)
        assert [a.label for a in answers] == torch.argsort(probs, descending=True).tolist()
        assert [a.answer for a in answers] == [ANSWERS[a.label] for a in answers]
        assert sum(a.probability for a in answers) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="one RegionFeatures per question"):
        encoder.answer(regions[:1], questions)


def test_config_answer_set_and_errors(tmp_path: Path) -> None:
    directory = _checkpoint(tmp_path, answers=ANSWERS[:3])
    with pytest.raises(ValueError, match="num_qa_labels=5"):
        load_encoder(directory)
    explicit = tmp_path / "answers.json"
    explicit.write_text(json.dumps(list("abcde")), encoding="utf-8")
    encoder = load_encoder(EncoderConfig(checkpoint=str(directory), answer_set=str(explicit)))
    assert encoder.answers is not None and encoder.answers.answers == tuple("abcde")
    base = load_encoder(EncoderConfig(checkpoint=str(directory), head="base"))
    assert base.answers is None
    with pytest.raises(ValueError, match="no QA head"):
        base.answer([make_regions("a", 2, seed=3)], ["is it red?"])
