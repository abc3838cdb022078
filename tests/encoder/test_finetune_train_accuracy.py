"""The training accuracy of an epoch (LXMERT's "Epoch 0: Train 57.87"): the running score of
the epoch's own batches, each as predicted in its training step, scored as validation is."""

from __future__ import annotations

from pathlib import Path

import pytest
from encoder_fixtures import make_regions
from finetune_helpers import DictSource, write_questions, write_tiny_model

from encoder.finetune import (
    FinetuneConfig,
    QADataset,
    answer_table_from_labels,
    evaluate,
    prepare_encoder,
    read_questions,
    train_epoch,
)
from encoder.finetune.loop import make_optimizer, make_scheduler

ANSWERS = ["yes", "no", "red", "blue"]


def _dataset(tmp_path: Path, *, dropout: float) -> tuple[QADataset, Path]:
    """Twelve questions on six random images with soft labels (1.0 and 0.3), and a model."""
    regions = {f"img{i}": make_regions(f"img{i}", 5, seed=i) for i in range(6)}
    raw = [
        {
            "question_id": k,
            "img_id": f"img{k % 6}",
            "sent": "is there a red circle ?",
            "label": {ANSWERS[k % 4]: 1.0, ANSWERS[(k + 1) % 4]: 0.3},
        }
        for k in range(12)
    ]
    entries = read_questions(write_questions(tmp_path / "train.json", raw))
    table = answer_table_from_labels(entries, name="train")
    start = write_tiny_model(tmp_path / "start", answers=ANSWERS, feat_dim=16, dropout=dropout)
    return QADataset(entries, DictSource(regions), table, num_boxes=36), start


@pytest.mark.parametrize("task", ["vqa", "gqa"])
def test_train_accuracy_is_the_epochs_own_predictions_scored_as_validation(
    tmp_path: Path, task: str
) -> None:
    # With dropout off and a step too small to move any argmax, each batch's training
    # predictions are the model's predictions before the epoch: the figure must equal
    # evaluate() on the same questions, with the task's own rule (soft score for vqa:
    # 0.3 counts; exact match for gqa).
    dataset, start = _dataset(tmp_path, dropout=0.0)
    config = FinetuneConfig(epochs=1, batch_size=5, lr=1e-12, seed=1)
    encoder, _ = prepare_encoder(start, answers=dataset.table, config=config, device="cpu")
    expected = evaluate(encoder, dataset, config=config, task=task).overall  # type: ignore[arg-type]
    optimizer = make_optimizer(encoder.model, config)
    scheduler = make_scheduler(optimizer, total_steps=3, config=config)
    record = train_epoch(
        encoder,
        dataset,
        optimizer=optimizer,
        scheduler=scheduler,
        config=config,
        task=task,  # type: ignore[arg-type]
        epoch=0,
    )
    assert record.examples == 12
    assert record.train_accuracy == pytest.approx(expected, abs=1e-9)


def test_train_accuracy_is_taken_with_dropout_on(tmp_path: Path) -> None:
    # vqa.py scores the forward that trains (model.train()): with heavy dropout the epoch's
    # figure is that of noisy forwards, not of a clean evaluation pass.
    dataset, start = _dataset(tmp_path, dropout=0.9)
    config = FinetuneConfig(epochs=1, batch_size=12, lr=1e-12, seed=1)
    encoder, _ = prepare_encoder(start, answers=dataset.table, config=config, device="cpu")
    clean = evaluate(encoder, dataset, config=config, task="vqa").overall
    figures = set()
    for epoch in range(4):
        optimizer = make_optimizer(encoder.model, config)
        scheduler = make_scheduler(optimizer, total_steps=1, config=config)
        record = train_epoch(
            encoder,
            dataset,
            optimizer=optimizer,
            scheduler=scheduler,
            config=config,
            task="vqa",
            epoch=epoch,
        )
        assert record.train_accuracy is not None
        figures.add(round(record.train_accuracy, 9))
    assert figures != {round(clean, 9)}
