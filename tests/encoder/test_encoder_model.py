"""Building models, save/load round trip, offline registry errors, the soft-score loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from encoder_fixtures import NUM_ANSWERS, make_regions, tiny_config
from transformers import (
    LxmertForPreTraining,
    LxmertForQuestionAnswering,
    LxmertModel,
    LxmertTokenizer,
)

from encoder.answers import AnswerTable, top_k_answers
from encoder.inputs import build_visual_inputs
from encoder.losses import soft_score_loss
from encoder.model import build_model
from encoder.tokenizer import encode_text
from weights import CheckpointNotFoundError


def _inputs(tokenizer: LxmertTokenizer) -> dict[str, torch.Tensor]:
    text = encode_text(tokenizer, ["what color is the ball?", "how many cubes are there?"])
    visual = build_visual_inputs([make_regions("a", 4, seed=1), make_regions("b", 6, seed=2)])
    return {**text.__dict__, **visual.__dict__}


@pytest.mark.parametrize(
    ("head", "cls"),
    [
        ("qa", LxmertForQuestionAnswering),
        ("pretraining", LxmertForPreTraining),
        ("base", LxmertModel),
    ],
)
def test_builds_each_head_from_a_config(head: str, cls: type) -> None:
    model = build_model(tiny_config(), head=head)  # type: ignore[arg-type]
    assert type(model) is cls and not model.training


def test_save_pretrained_round_trip(tmp_path: Path, small_tokenizer: LxmertTokenizer) -> None:
    model = build_model(tiny_config(), head="qa")
    model.save_pretrained(tmp_path / "ckpt")
    loaded = build_model(tmp_path / "ckpt")
    assert isinstance(loaded, LxmertForQuestionAnswering)
    assert loaded.config.num_qa_labels == NUM_ANSWERS
    inputs = _inputs(small_tokenizer)
    with torch.no_grad():
        before = model(**inputs).question_answering_score
        after = loaded(**inputs).question_answering_score
        also = build_model(str(tmp_path / "ckpt"), head="qa")(**inputs).question_answering_score
    assert before.shape == (2, NUM_ANSWERS)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    torch.testing.assert_close(also, before, rtol=0, atol=0)
    # Padded boxes do not change an image's answer: a batch of one gives the same logits.
    single = {k: v[1:] for k, v in inputs.items()}
    with torch.no_grad():
        alone = loaded(**single).question_answering_score
    torch.testing.assert_close(alone, after[1:], rtol=1e-5, atol=1e-5)
    table = AnswerTable(name="t", answers=tuple("abcde"))
    assert len(top_k_answers(after, table, k=3)[0]) == 3


def test_padding_boxes_do_not_change_outputs(small_tokenizer: LxmertTokenizer) -> None:
    model = build_model(tiny_config(), head="qa")
    inputs = _inputs(small_tokenizer)
    short = {k: v[:1] for k, v in inputs.items()}  # image "a": 4 real boxes of 6
    trimmed = {**short, **{k: short[k][:, :4] for k in ("visual_feats", "visual_pos")}}
    trimmed["visual_attention_mask"] = short["visual_attention_mask"][:, :4]
    with torch.no_grad():
        padded = model(**short).question_answering_score
        exact = model(**trimmed).question_answering_score
    torch.testing.assert_close(padded, exact, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["lxmert-vqa", "lxmert-gqa", "lxmert-base"])
def test_registry_name_offline_with_empty_cache(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.delenv("LXMERT_PIPELINE_WEIGHTS", raising=False)
    with pytest.raises(CheckpointNotFoundError) as caught:
        build_model(name)
    message = str(caught.value)
    assert name in message
    assert f"python -m weights fetch {name}" in message
    assert str(tmp_path / "hf" / "hub") in message


def test_bad_sources(tmp_path: Path) -> None:
    file = tmp_path / "model.bin"
    file.write_bytes(b"")
    with pytest.raises(ValueError, match=r"model\.bin"):
        build_model(file)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        build_model(empty)
    with pytest.raises(ValueError, match="head"):
        build_model(tiny_config(), head="vqa")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        build_model(3)  # type: ignore[arg-type]


def test_soft_score_loss_matches_manual() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, generator=generator)
    targets = torch.zeros(3, 7)
    targets[0, 2], targets[1, 4], targets[1, 5], targets[2, 0] = 1.0, 0.6, 0.3, 0.9
    manual = 0.0
    for b in range(3):
        for j in range(7):
            p = 1 / (1 + torch.exp(-logits[b, j]))
            t = targets[b, j]
            manual += float(-(t * torch.log(p) + (1 - t) * torch.log(1 - p)))
    # Mean over B * L, times L: the per-question sum averaged over the batch.
    assert soft_score_loss(logits, targets).item() == pytest.approx(manual / 3, rel=1e-5)
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        soft_score_loss(logits, targets[:, :3])


def test_loading_a_directory_prints_no_progress_bar_and_keeps_the_setting(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from transformers.utils import logging as transformers_logging

    build_model(tiny_config(), head="qa").save_pretrained(tmp_path / "ckpt")
    assert transformers_logging.is_progress_bar_enabled()
    capfd.readouterr()
    build_model(tmp_path / "ckpt")
    assert "Loading weights" not in capfd.readouterr().err
    assert transformers_logging.is_progress_bar_enabled(), "the user's setting is restored"
    transformers_logging.disable_progress_bar()
    try:
        build_model(tmp_path / "ckpt")
        assert not transformers_logging.is_progress_bar_enabled(), "a disabled bar stays off"
    finally:
        transformers_logging.enable_progress_bar()
