"""``lxmert-finetune``: train and evaluate on a tiny shapes dataset, answer() with the output,
and bad data refused with exit 2 (naming the file and the entry) before any model loads."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from finetune_data import make_finetune_data, train_argv

from pipeline.api import answer
from pipeline.commands.finetune.command import main


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Eight train and four held-out scenes and a tiny QA model (:func:`make_finetune_data`)."""
    yield make_finetune_data(tmp_path_factory.mktemp("finetune-cli"))


def _train_argv(data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return train_argv(data, out, *extra)


def test_train_evaluate_and_answer(
    tmp_path: Path, data: dict[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model"
    assert main(_train_argv(data, out)) == 0
    # Our progress lines only: transformers' bars would break them (saved each epoch).
    assert "Writing model shards" not in capfd.readouterr().err
    for name in ("config.json", "model.safetensors", "label2ans.json", "vocab.txt"):
        assert (out / "best" / name).is_file(), name
        assert not (out / name).exists(), name  # best/ beside last/, not the folder itself
    record = json.loads((out / "finetune.json").read_text())
    assert record["command"].startswith("lxmert-finetune train --task vqa --train ")
    assert record["config"]["epochs"] == 2 and record["config"]["lr"] == 1e-3
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    labels = json.loads((out / "best" / "label2ans.json").read_text())
    assert labels == sorted({a for e in json.loads(data["train"].read_text()) for a in e["label"]})

    predictions, table, report = tmp_path / "p.json", tmp_path / "p.csv", tmp_path / "r.json"
    argv = [
        "evaluate",
        "--model",
        str(out),
        "--questions",
        str(data["test"]),
        "--features",
        str(data["features"]),
        "--predictions",
        str(predictions),
        "--report",
        str(report),
    ]
    assert main(argv) == 0
    records = json.loads(predictions.read_text())
    questions = json.loads(data["test"].read_text())
    assert [r["question_id"] for r in records] == [q["question_id"] for q in questions]
    assert all(r["answer"] in labels for r in records)
    scores = json.loads(report.read_text())
    expected = sum(
        q["label"].get(r["answer"], 0.0) for q, r in zip(questions, records, strict=True)
    ) / len(questions)
    assert scores["overall"] == pytest.approx(expected)
    assert set(scores["per_type"]["question_type"]) <= {
        "color",
        "shape",
        "count",
        "exist",
        "spatial",
    }
    assert main([*argv[:-4], "--predictions", str(table), "--task", "gqa"]) == 0
    rows = list(csv.reader(table.read_text().splitlines()))
    assert rows[0] == ["questionId", "prediction"] and len(rows) == len(questions) + 1

    said = answer(
        data["image"],
        questions[0]["sent"],
        detector="shapes-detector",
        encoder=str(out),
        device="cpu",
    )
    assert said in labels


def test_bad_data_is_exit_2_naming_file_and_entry(
    tmp_path: Path, data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    entries = json.loads(data["train"].read_text())
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps([*entries[:3], {**entries[3], "img_id": "seed-gone"}]))
    argv = _train_argv(data, tmp_path / "a")
    argv[argv.index("--train") + 1] = str(missing)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{missing}: entry 3" in err and "'seed-gone' is not in the feature store" in err
    assert not (tmp_path / "a").exists()  # refused before any model load or output

    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    argv[argv.index("--train") + 1] = str(broken)
    assert main(argv) == 2
    assert f"{broken}: not valid JSON" in capsys.readouterr().err

    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps([{**e, "label": {}} for e in entries[:3]]))
    argv[argv.index("--train") + 1] = str(empty)
    assert main(argv) == 2
    assert "answer table would be empty" in capsys.readouterr().err


def test_skip_missing_counts_and_refusals(
    tmp_path: Path, data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    entries = json.loads(data["train"].read_text())
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps([*entries, {**entries[0], "question_id": "x", "img_id": "gone"}]))
    out = tmp_path / "b"
    argv = _train_argv(data, out, "--skip-missing", "--epochs", "1")
    argv[argv.index("--train") + 1] = str(missing)
    assert main(argv) == 0
    assert "--train: skipped 1 question(s)" in capsys.readouterr().err
    assert main(argv) == 2  # a finished run in --out: --resume or another --out
    assert "pass --resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0  # nothing left to do: the epochs are done
    assert main(_train_argv(data, tmp_path / "c", "--from", "no-such-model")) == 2
    assert main([]) == 2 and main(["--help"]) == 0


def test_out_must_be_new_empty_or_ours(
    tmp_path: Path, data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    someone = tmp_path / "someones-model"
    someone.mkdir()
    (someone / "config.json").write_text('{"mine": true}')
    assert main(_train_argv(data, someone, "--epochs", "1")) == 2
    assert "did not write" in capsys.readouterr().err
    assert (someone / "config.json").read_text() == '{"mine": true}'
    argv = _train_argv(data, someone, "--epochs", "1")
    argv[argv.index("--from") + 1] = str(someone)
    assert main(argv) == 2
    assert "is the starting model" in capsys.readouterr().err
