"""``lxmert-finetune evaluate`` owns its outputs (issue 26, item 6): an output is never an
input (by path, link or inode) nor the other output, an existing file is replaced only when
evaluate wrote it, and each refusal is exit 2 before any model loads, the file untouched."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from finetune_data import make_finetune_data

from pipeline.commands.finetune.command import main
from pipeline.commands.finetune.outputs import REPORT_KIND


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    yield make_finetune_data(tmp_path_factory.mktemp("evaluate-outputs"))


def _evaluate(data: dict[str, Path], *outputs: str) -> list[str]:
    return [
        "evaluate",
        "--model",
        str(data["start"]),
        "--questions",
        str(data["test"]),
        "--features",
        str(data["features"]),
        "-q",
        *outputs,
    ]


def _refused(argv: list[str], victim: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``argv``; assert exit 2 with ``victim``'s bytes unchanged; return stderr."""
    before = victim.read_bytes()
    assert main(argv) == 2
    assert victim.read_bytes() == before
    return capsys.readouterr().err


def test_an_output_is_never_an_input(
    tmp_path: Path, data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    questions, features = data["test"], data["features"]
    err = _refused(_evaluate(data, "--predictions", str(questions)), questions, capsys)
    assert f"--predictions {questions} is also an input (--questions {questions})" in err
    err = _refused(_evaluate(data, "--report", str(features)), features, capsys)
    assert "is also an input (--features" in err
    config = data["start"] / "config.json"
    err = _refused(_evaluate(data, "--report", str(config)), config, capsys)
    assert f"(--model {data['start']})" in err
    linked = tmp_path / "linked.json"
    os.link(questions, linked)  # one inode under another name
    err = _refused(_evaluate(data, "--predictions", str(linked)), questions, capsys)
    assert "is also an input (--questions" in err
    symlink = tmp_path / "symlink.tsv"
    symlink.symlink_to(features)
    _refused(_evaluate(data, "--report", str(symlink)), features, capsys)


def test_outputs_are_not_one_file_and_replace_only_their_own(
    tmp_path: Path, data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    both = tmp_path / "both.json"
    assert main(_evaluate(data, "--predictions", str(both), "--report", str(both))) == 2
    assert "are one file" in capsys.readouterr().err and not both.exists()

    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    err = _refused(_evaluate(data, "--report", str(notes)), notes, capsys)
    assert "exists and is not a report of lxmert-finetune evaluate" in err
    err = _refused(_evaluate(data, "--predictions", str(notes)), notes, capsys)
    assert "is not a prediction file" in err

    predictions, report = tmp_path / "p.json", tmp_path / "r.json"
    argv = _evaluate(data, "--predictions", str(predictions), "--report", str(report))
    assert main(argv) == 0
    assert json.loads(report.read_text())["kind"] == REPORT_KIND
    assert main(argv) == 0  # its own outputs: replaced
    table = tmp_path / "p.csv"
    assert main(_evaluate(data, "--predictions", str(table))) == 0
    assert main(_evaluate(data, "--predictions", str(table))) == 0
    assert main(_evaluate(data, "--report", str(tmp_path / "gone" / "r.json"))) == 2
    assert "does not exist" in capsys.readouterr().err
