"""A training run into a folder (:mod:`encoder.finetune.run`), as Python users call it: the
folder's layout, the answer table, and the ownership rule of :mod:`weights.ownership` (a
folder someone else wrote is refused before any training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from encoder_fixtures import make_regions
from finetune_helpers import DictSource, write_questions, write_tiny_model

from encoder.build import load_encoder
from encoder.finetune import (
    FINETUNE_FILE,
    DataError,
    FinetuneConfig,
    QADataset,
    answer_table,
    check_out_is_ours,
    fit_and_write,
    prepare_encoder,
    read_questions,
)
from encoder.finetune.run import BEST_DIR, CHECKPOINT, LAST_DIR
from weights.command import UsageError
from weights.ownership import NotOursError

ANSWERS = ["yes", "no", "red", "blue"]


def _questions(tmp_path: Path) -> Path:
    raw = [
        {
            "question_id": k,
            "img_id": f"img{k % 4}",
            "sent": "is there a red circle ?",
            "label": {ANSWERS[k % 4]: 1.0},
        }
        for k in range(8)
    ]
    return write_questions(tmp_path / "train.json", raw)


def test_fit_and_write_leaves_a_model_folder_that_loads(tmp_path: Path) -> None:
    entries = read_questions(_questions(tmp_path))
    table = answer_table(entries, name="train.json")
    assert list(table.answers) == sorted(ANSWERS)
    config = FinetuneConfig(epochs=2, batch_size=4, lr=1e-3)
    start = write_tiny_model(tmp_path / "start", answers=ANSWERS, feat_dim=16)
    encoder, _ = prepare_encoder(start, answers=table, config=config, device="cpu")
    source = DictSource({f"img{i}": make_regions(f"img{i}", 5, seed=i) for i in range(4)})
    out = tmp_path / "run"
    result = fit_and_write(
        encoder,
        QADataset(entries, source, table, num_boxes=36),
        None,
        out=out,
        config=config,
        task="vqa",
        record={"task": "vqa"},
        inputs={},
    )
    assert [r.epoch for r in result.history] == [1, 2]
    for name in (
        FINETUNE_FILE,
        "log.log",
        str(CHECKPOINT),
        f"{LAST_DIR}/model.safetensors",
        f"{BEST_DIR}/model.safetensors",
    ):
        assert (out / name).is_file(), name
    record = json.loads((out / FINETUNE_FILE).read_text())
    assert record["task"] == "vqa" and len(record["history"]) == 2
    loaded = load_encoder(str(out), device="cpu")
    assert loaded.answers is not None and loaded.answers.answers == table.answers
    check_out_is_ours(out)  # our own folder: written over by the next run


def test_a_folder_someone_else_wrote_is_refused_before_training(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(NotOursError, match="did not write"):
        fit_and_write(
            None,  # type: ignore[arg-type]  # refused before the model is looked at
            [],  # type: ignore[arg-type]
            None,
            out=theirs,
            config=FinetuneConfig(),
            task="vqa",
            record={},
            inputs={},
        )
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]
    check_out_is_ours(tmp_path / "new")  # new, and empty, folders are ours
    (tmp_path / "empty").mkdir()
    check_out_is_ours(tmp_path / "empty")
    start = write_tiny_model(tmp_path / "start", answers=ANSWERS, feat_dim=16)
    with pytest.raises(UsageError, match="is the starting model"):
        check_out_is_ours(start, source=start)


def test_answer_table_names_an_empty_or_missing_list(tmp_path: Path) -> None:
    entries = read_questions(_questions(tmp_path))
    empty = tmp_path / "answers.json"
    empty.write_text("[]", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        answer_table(entries, answers=empty, name="train.json")
    with pytest.raises(DataError, match=r"missing\.json"):
        answer_table(entries, answers=tmp_path / "missing.json", name="train.json")
