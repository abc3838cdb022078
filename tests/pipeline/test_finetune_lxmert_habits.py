"""``lxmert-finetune train`` as LXMERT's ``vqa.py`` users know it: "Epoch 0: Train/Valid/Best"
lines and ``log.log``, ``last/`` beside the best model, ``--tiny``, ``--limit-questions``, and
the per-task defaults of LXMERT's ``run/*_finetune.bash``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from finetune_data import make_finetune_data, train_argv
from safetensors.torch import load_file

from encoder.finetune import EpochRecord, load_checkpoint
from encoder.finetune.layout import run_model
from pipeline.api import answer
from pipeline.commands.finetune.command import CHECKPOINT, build_train_parser, main, validate_train
from pipeline.finetune_log import render_log


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Eight train and four held-out scenes and a tiny QA model (:func:`make_finetune_data`)."""
    yield make_finetune_data(tmp_path_factory.mktemp("finetune-habits"))


def _record(epoch: int, train: float | None, valid: float | None) -> EpochRecord:
    return EpochRecord(
        epoch=epoch,
        loss=1.0,
        examples=10,
        seconds=1.0,
        valid_accuracy=valid,
        train_accuracy=train,
    )


def test_log_text_is_vqa_py_format_with_a_running_best() -> None:
    history = [_record(1, 0.5787, 0.661), _record(2, 0.7, 0.65), _record(3, 0.71234, 0.7)]
    assert render_log(history) == (
        "\nEpoch 0: Train 57.87\nEpoch 0: Valid 66.10\nEpoch 0: Best 66.10\n"
        "\nEpoch 1: Train 70.00\nEpoch 1: Valid 65.00\nEpoch 1: Best 66.10\n"
        "\nEpoch 2: Train 71.23\nEpoch 2: Valid 70.00\nEpoch 2: Best 70.00\n"
    )
    # Without validation data vqa.py writes the Train line only.
    assert render_log([_record(1, 0.25, None)]) == "\nEpoch 0: Train 25.00\n"


def test_log_last_and_epoch_lines(
    tmp_path: Path, data: dict[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = [a for a in train_argv(data, out) if a != "-q"]
    assert main(argv) == 0
    err = capfd.readouterr().err
    record = json.loads((out / "finetune.json").read_text())
    history = record["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(0.0 <= h["train_accuracy"] <= 1.0 for h in history)
    log = (out / "log.log").read_text()
    best = 0.0
    for h in history:
        best = max(best, h["valid_accuracy"])
        block = (
            f"Epoch {h['epoch'] - 1}: Train {h['train_accuracy'] * 100:0.2f}\n"
            f"Epoch {h['epoch'] - 1}: Valid {h['valid_accuracy'] * 100:0.2f}\n"
            f"Epoch {h['epoch'] - 1}: Best {best * 100:0.2f}\n"
        )
        assert block in log and block in err
    assert len(re.findall(r"^Epoch \d: Train ", log, flags=re.M)) == 2

    # last/ holds the last epoch's weights (those of the resume checkpoint), best/ beside it
    # the best epoch's; both load in answer() and evaluate, and the folder means its best/.
    checkpoint = load_checkpoint(out / CHECKPOINT)
    last = load_file(str(out / "last" / "model.safetensors"))
    for name, tensor in last.items():
        assert tensor.equal(checkpoint.model[name]), name
    assert json.loads((out / "last" / "finetune.json").read_text())["last"]["epoch"] == 2
    for model in (out, out / "best", out / "last"):
        report = tmp_path / f"{model.name}.json"
        argv = ["evaluate", "--model", str(model), "--questions", str(data["test"])]
        argv += ["--features", str(data["features"]), "--report", str(report), "-q"]
        assert main(argv) == 0
        assert 0.0 <= json.loads(report.read_text())["overall"] <= 1.0
        said = answer(
            data["image"],
            "what color is the circle ?",
            detector="shapes-detector",
            encoder=str(model),
            device="cpu",
        )
        assert said in json.loads((run_model(model) / "label2ans.json").read_text())


def _split_features(data: dict[str, Path], folder: Path) -> tuple[Path, Path, list[str]]:
    """features.tsv as two files (the 8 train scenes, the 4 held-out ones); the ids of each."""
    lines = data["features"].read_bytes().splitlines(keepends=True)
    train, held = folder / "train.tsv", folder / "held.tsv"
    train.write_bytes(b"".join(lines[:8]))
    held.write_bytes(b"".join(lines[8:]))
    return train, held, [line.split(b"\t", 1)[0].decode() for line in lines]


def test_tiny_keeps_the_first_images_of_each_store_and_resume_repeats_it(
    tmp_path: Path, data: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 512 images would take minutes to detect here: the rule is the same with 3.
    monkeypatch.setattr("pipeline.commands.finetune.subset.TINY_IMAGES", 3)
    train_tsv, held_tsv, ids = _split_features(data, tmp_path)
    kept = set(ids[:3]) | set(ids[8:11])
    out = tmp_path / "tiny"
    argv = train_argv(data, out, "--tiny", "--epochs", "1")
    at = argv.index("--features")
    argv[at + 1 : at + 2] = [str(train_tsv), str(held_tsv)]
    assert main(argv) == 0
    questions = json.loads(data["train"].read_text())
    expected = sum(q["img_id"] in kept for q in questions)
    assert 0 < expected < len(questions)
    record = json.loads((out / "finetune.json").read_text())
    assert record["history"][0]["examples"] == expected
    assert "--tiny" in record["command"]

    # The checkpoint recorded --tiny: a resume without it is refused before any work.
    argv.remove("--tiny")
    assert main([*argv, "--resume"]) == 2


def test_limit_questions_takes_the_first_n(
    tmp_path: Path, data: dict[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "limited"
    argv = train_argv(data, out, "--limit-questions", "5", "--epochs", "1")
    assert main(argv) == 0
    record = json.loads((out / "finetune.json").read_text())
    assert record["history"][0]["examples"] == 5
    capfd.readouterr()
    assert main([*train_argv(data, out, "--limit-questions", "6", "--epochs", "1"), "--resume"])
    assert "--tiny/--limit-questions" in capfd.readouterr().err


@pytest.mark.parametrize(("task", "lr"), [("vqa", 5e-5), ("gqa", 1e-5), ("nlvr2", 5e-5)])
def test_defaults_are_lxmerts_task_scripts(
    tmp_path: Path, data: dict[str, Path], task: str, lr: float
) -> None:
    # run/{vqa,gqa,nlvr2}_finetune.bash: --batchSize 32 --lr 5e-5|1e-5|5e-5 --epochs 4.
    argv = ["--task", task, "--train", str(data["train"]), "--features", str(data["features"])]
    argv += ["--from", str(data["start"]), "--out", str(tmp_path / "out")]
    recipe = validate_train(build_train_parser().parse_args(argv)).recipe
    assert (recipe.lr, recipe.batch_size, recipe.epochs) == (lr, 32, 4)
    given = validate_train(build_train_parser().parse_args([*argv, "--lr", "3e-4"])).recipe
    assert given.lr == 3e-4
