"""load_encoder: a checkpoint directory with its own answers and vocabulary, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from encoder_fixtures import SMALL_VOCAB, make_regions, tiny_config
from transformers import LxmertForPreTraining

from encoder.build import load_encoder
from encoder.config import PRESETS, EncoderConfig, config_for, get_preset
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


# -- presets: one lookup for names --------------------------------------------------------


def test_config_for_knows_every_preset_and_defaults_the_rest(tmp_path: Path) -> None:
    for name in PRESETS:
        assert config_for(name) is get_preset(name)
    assert config_for("shapes-lxmert") == EncoderConfig(checkpoint="shapes-lxmert", head="qa")
    # A directory, even one named like a preset, is a checkpoint with the default settings.
    assert config_for(tmp_path / "lxmert-base") == EncoderConfig(
        checkpoint=str(tmp_path / "lxmert-base")
    )
    assert config_for(tmp_path / "lxmert-base").head == "qa"
    assert config_for("other-name").checkpoint == "other-name"
    with pytest.raises(KeyError, match="known presets: lxmert-base, lxmert-gqa"):
        get_preset("lxmert-vq")
    with pytest.raises(TypeError):
        PRESETS["mine"] = EncoderConfig(checkpoint="x")  # type: ignore[index]


def test_build_model_and_load_encoder_take_the_head_from_the_same_preset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A "pretraining" checkpoint saved under the registry name lxmert-base: both entry points
    # must read head="pretraining" from the preset, not fall back to "qa".
    directory = tmp_path / "weights" / "lxmert-base"
    model = build_model(tiny_config(num_qa_labels=9500), head="pretraining")  # lxmert's table
    model.save_pretrained(directory)
    # The registry record names the hub's file, pytorch_model.bin.
    (directory / "model.safetensors").unlink()
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
    monkeypatch.setenv("LXMERT_PIPELINE_WEIGHTS", str(directory.parent))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert type(build_model("lxmert-base")) is LxmertForPreTraining
    encoder = load_encoder("lxmert-base")
    assert type(encoder.model) is LxmertForPreTraining
    assert encoder.config is get_preset("lxmert-base")


def test_the_shipped_shapes_model_loads_by_its_preset_name() -> None:
    encoder = load_encoder("shapes-lxmert")
    assert encoder.config == get_preset("shapes-lxmert")
    assert encoder.answers is not None and len(encoder.answers.answers) == 22
