"""Bad feature data is exit 2 (issue 26, item 10), naming the file and the line: a record
with bad base64 met by ``train`` or ``evaluate``, and one damaged mid-run (after epoch 1's
checkpoint, made certain by a hook on the run's own "epoch 1 done" line), after which the
checkpoint stays resumable once the file is restored."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from finetune_data import make_finetune_data, train_argv

from encoder.finetune import load_checkpoint
from pipeline.commands.finetune.command import CHECKPOINT, main


class OnEpoch1Done(io.StringIO):
    """A stderr that calls ``action`` when the run reports that epoch 1 is done (its
    checkpoint is written next, before epoch 2 reads any record)."""

    def __init__(self, action: Callable[[], None]) -> None:
        super().__init__()
        self.action = action

    def write(self, text: str) -> int:
        if text.startswith("epoch 1 done"):
            self.action()
        return super().write(text)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    yield make_finetune_data(tmp_path_factory.mktemp("finetune-data-errors"))


def _damaged(lines: list[bytes], number: int) -> bytes:
    """The file's bytes with line ``number`` (1-based) given bad base64 of the same length."""
    fields = lines[number - 1].split(b"\t")
    fields[9] = b"!" + fields[9][1:]
    out = list(lines)
    out[number - 1] = b"\t".join(fields)
    return b"".join(out)


def _with_features(argv: list[str], features: Path) -> list[str]:
    changed = list(argv)
    changed[changed.index("--features") + 1] = str(features)
    return changed


def test_bad_base64_is_exit_2_naming_file_and_line(
    tmp_path: Path, data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt = tmp_path / "corrupt.tsv"
    corrupt.write_bytes(_damaged(data["features"].read_bytes().splitlines(keepends=True), 6))
    argv = _with_features(train_argv(data, tmp_path / "run", "--epochs", "1"), corrupt)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{corrupt}:6: bad base64" in err and "unexpected" not in err
    assert "no epoch was finished" in err

    evaluate = ["evaluate", "--model", str(data["start"]), "--questions", str(data["train"])]
    assert main([*evaluate, "--features", str(corrupt), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"{corrupt}:6: bad base64" in err and "unexpected" not in err


def test_a_record_damaged_mid_run_is_exit_2_and_the_run_resumes(
    tmp_path: Path,
    data: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    features = tmp_path / "features.tsv"
    shutil.copy2(data["features"], features)
    good, first = features.read_bytes(), features.stat()
    out = tmp_path / "run"
    argv = _with_features(train_argv(data, out), features)
    argv[argv.index("--epochs") + 1] = "3"

    def damage() -> None:
        with open(features, "r+b") as stream:  # in place, as a failing disk or a writer would
            stream.write(_damaged(good.splitlines(keepends=True), 2))

    with monkeypatch.context() as patch:
        patch.setattr(sys, "stderr", OnEpoch1Done(damage))
        assert main([a for a in argv if a != "-q"]) == 2
        err = sys.stderr.getvalue()
    assert f"{features}:2: bad base64" in err and "unexpected" not in err
    assert f"the last finished epoch is kept in {out / CHECKPOINT}" in err
    assert [r.epoch for r in load_checkpoint(out / CHECKPOINT).history] == [1]

    features.write_bytes(good)
    os.utime(features, ns=(first.st_atime_ns, first.st_mtime_ns))  # restored as it was
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    record = json.loads((out / "finetune.json").read_text())
    assert [h["epoch"] for h in record["history"]] == [1, 2, 3]


def test_a_damaged_model_file_is_exit_2_naming_the_model(
    tmp_path: Path, data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    shutil.copytree(data["start"], model)
    (model / "model.safetensors").write_bytes(b"not a safetensors file")
    questions = ["--questions", str(data["train"]), "--features", str(data["features"]), "-q"]
    assert main(["evaluate", "--model", str(model), *questions]) == 2
    err = capsys.readouterr().err
    assert f"cannot load --model {model}" in err and "unexpected" not in err
    argv = train_argv(data, tmp_path / "run", "--epochs", "1")
    assert main([*argv, "--from", str(model)]) == 2
    assert f"cannot load --from {model}" in capsys.readouterr().err
