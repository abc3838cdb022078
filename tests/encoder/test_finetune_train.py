"""The fine-tuning loop: it learns on a tiny shapes dataset, and a resumed run ends with the
same weights as an uninterrupted one."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from encoder_fixtures import make_regions
from finetune_helpers import DictSource, shapes_split, write_questions, write_tiny_model

from encoder.build import load_encoder
from encoder.finetune import (
    EpochRecord,
    FinetuneConfig,
    Progress,
    QADataset,
    answer_table_from_labels,
    evaluate,
    fit,
    load_checkpoint,
    prepare_encoder,
    read_questions,
    write_model_dir,
)
from encoder.finetune.loop import linear_schedule


def test_linear_schedule_by_hand() -> None:
    # 10 steps, 2 of warm-up: 0.5, 1.0, then (10 - s) / 8 for s = 2..9.
    factors = [linear_schedule(s, total=10, warmup=2) for s in range(10)]
    assert factors == pytest.approx(
        [0.5, 1.0, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8]
    )


def _synthetic(tmp_path: Path) -> tuple[Path, DictSource, Path]:
    """Twelve questions on six random images, and a tiny model over their answers."""
    answers = ["yes", "no", "red", "blue"]
    regions = {f"img{i}": make_regions(f"img{i}", 5, seed=i) for i in range(6)}
    raw = [
        {
            "question_id": k,
            "img_id": f"img{k % 6}",
            "sent": "is there a red circle ?",
            "label": {answers[k % 4]: 1.0, answers[(k + 1) % 4]: 0.3},
        }
        for k in range(12)
    ]
    questions = write_questions(tmp_path / "train.json", raw)
    model = write_tiny_model(tmp_path / "start", answers=answers, feat_dim=16, dropout=0.1)
    return questions, DictSource(regions), model


def _run(
    tmp_path: Path, name: str, *, interrupt_at: tuple[int, int] | None = None, resume: bool = False
) -> dict[str, torch.Tensor]:
    questions, source, start = _synthetic(tmp_path)
    entries = read_questions(questions)
    table = answer_table_from_labels(entries, name="train")
    config = FinetuneConfig(epochs=3, batch_size=5, lr=1e-3, seed=3)
    encoder, _ = prepare_encoder(start, answers=table, config=config, device="cpu")
    train = QADataset(entries, source, table, num_boxes=36)

    def progress(p: Progress) -> None:
        if interrupt_at == (p.epoch, p.step):
            raise KeyboardInterrupt

    fit(
        encoder=encoder,
        train=train,
        valid=train,
        config=config,
        task="vqa",
        checkpoint=tmp_path / name / "last.pt",
        on_best=lambda e, r: None,
        resume=resume,
        on_progress=progress,
    )
    return {k: v.clone() for k, v in encoder.model.state_dict().items()}


def test_resume_after_interruption_gives_the_same_weights(tmp_path: Path) -> None:
    straight = _run(tmp_path, "straight")
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "broken", interrupt_at=(1, 2))  # in the middle of the second epoch
    state = load_checkpoint(tmp_path / "broken" / "last.pt")
    assert [r.epoch for r in state.history] == [1]
    torch.manual_seed(1234)  # the resumed process starts from other RNG states
    resumed = _run(tmp_path, "broken", resume=True)
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    assert [r.epoch for r in load_checkpoint(tmp_path / "broken" / "last.pt").history] == [1, 2, 3]


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[DictSource, Path, Path]:
    folder = tmp_path_factory.mktemp("shapes")
    train_regions, _, train = shapes_split("train", 40, folder)
    test_regions, _, test = shapes_split("heldout", 12, folder)
    return DictSource({**train_regions, **test_regions}), train, test


def test_a_tiny_model_learns_the_shapes_questions(
    tmp_path: Path, shapes_data: tuple[DictSource, Path, Path]
) -> None:
    source, train_file, test_file = shapes_data
    train_entries, test_entries = read_questions(train_file), read_questions(test_file)
    table = answer_table_from_labels(train_entries, name="train")
    start = write_tiny_model(tmp_path / "start", answers=["yes"], feat_dim=256)
    config = FinetuneConfig(epochs=14, batch_size=16, lr=2e-3, seed=0)
    encoder, kept = prepare_encoder(start, answers=table, config=config, device="cpu")
    assert kept == 1
    train = QADataset(train_entries, source, table, num_boxes=36)
    test = QADataset(test_entries, source, table, num_boxes=36)
    losses: list[float] = []

    def keep(best: object, record: EpochRecord) -> None:
        losses.append(record.loss)

    result = fit(
        encoder=encoder,
        train=train,
        valid=None,
        config=config,
        task="vqa",
        checkpoint=tmp_path / "last.pt",
        on_best=keep,
    )
    steps = sum(-(-r.examples // 16) for r in result.history)
    assert steps >= 200
    assert losses[-1] < 0.5 * losses[0]
    # Chance: always the most frequent training answer.
    top = Counter(max(e.label, key=lambda a: e.label[a]) for e in train_entries).most_common(1)[0][
        0
    ]
    chance = sum(e.label.get(top, 0.0) for e in test_entries) / len(test_entries)
    accuracy = evaluate(encoder, test, config=config, task="vqa").overall
    assert accuracy > chance + 0.1, (accuracy, chance)
    # The written directory loads back with its answers and gives the same predictions.
    out = write_model_dir(encoder, tmp_path / "out", record={"test": True})
    reloaded = load_encoder(out, device="cpu")
    assert reloaded.answers is not None and reloaded.answers.answers == table.answers
    again = evaluate(reloaded, test, config=config, task="vqa").overall
    assert again == pytest.approx(accuracy)


def test_bf16_autocast_trains(tmp_path: Path) -> None:
    questions, source, start = _synthetic(tmp_path)
    entries = read_questions(questions)
    table = answer_table_from_labels(entries, name="train")
    config = FinetuneConfig(epochs=1, batch_size=4, lr=1e-3, precision="bf16")
    encoder, _ = prepare_encoder(start, answers=table, config=config, device="cpu")
    before = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    result = fit(
        encoder=encoder,
        train=QADataset(entries, source, table, num_boxes=36),
        valid=None,
        config=config,
        task="vqa",
        checkpoint=tmp_path / "c.pt",
        on_best=lambda e, r: None,
    )
    assert torch.isfinite(torch.tensor(result.history[0].loss))
    after = encoder.model.state_dict()
    assert all(after[k].dtype == torch.float32 for k in after if after[k].is_floating_point())
    assert any(not torch.equal(before[k], after[k]) for k in before)
