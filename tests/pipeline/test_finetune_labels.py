"""Training on nothing (issue 26, item 8): with ``--answers``, a training file whose labels
are all empty or outside the answer table is exit 2 with the count, before any model loads;
fewer than half labelled trains with a warning."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from finetune_data import make_finetune_data, train_argv

from pipeline.commands.finetune.command import main


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    yield make_finetune_data(tmp_path_factory.mktemp("finetune-labels"))


def _argv(data: dict[str, Path], out: Path, train: Path, answers: Path) -> list[str]:
    argv = train_argv(data, out, "--answers", str(answers))
    argv[argv.index("--train") + 1] = str(train)
    argv[argv.index("--epochs") + 1] = "1"
    return argv


def test_no_label_in_the_answer_table_is_exit_2_with_the_count(
    tmp_path: Path, data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    entries = json.loads(data["train"].read_text())
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(["magenta", "hexagon"]))
    out = tmp_path / "a"
    assert main(_argv(data, out, data["train"], foreign)) == 2
    err = capsys.readouterr().err
    assert f"0 of {len(entries)} questions have a label in the answer table" in err
    assert not out.exists()  # refused before any model load or output

    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps(sorted({a for e in entries for a in e["label"]})))
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps([{**e, "label": {}} for e in entries]))
    assert main(_argv(data, out, empty, answers)) == 2
    assert f"0 of {len(entries)} questions" in capsys.readouterr().err


def test_under_half_labelled_warns_and_trains(
    tmp_path: Path, data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    entries = json.loads(data["train"].read_text())
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps(sorted({a for e in entries for a in e["label"]})))
    few = tmp_path / "few.json"
    kept = len(entries) // 3
    few.write_text(
        json.dumps([e if i < kept else {**e, "label": {}} for i, e in enumerate(entries)])
    )
    assert main(_argv(data, tmp_path / "b", few, answers)) == 0
    err = capsys.readouterr().err
    assert f"warning: --train: only {kept} of {len(entries)} questions have a label" in err
