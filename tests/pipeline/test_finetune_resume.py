"""``lxmert-finetune train --resume`` continues only its own run (issue 26, item 7): a run
stopped in epoch 2 (deterministically: a KeyboardInterrupt raised by its own first progress
line of epoch 2, after epoch 1's checkpoint) refuses other data, changed data and more epochs
with exit 2 naming the field and both values, before any model loads; the same command then
finishes it."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from finetune_data import make_finetune_data, train_argv

from encoder.finetune import load_checkpoint
from pipeline.commands.finetune.command import CHECKPOINT, main


class StopInEpoch2(io.StringIO):
    """A stderr that raises KeyboardInterrupt (what Ctrl-C raises) when the run reports its
    first step of epoch 2: epoch 1 and its checkpoint are then certainly done."""

    def write(self, text: str) -> int:
        if text.startswith("epoch 2/"):
            raise KeyboardInterrupt
        return super().write(text)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    yield make_finetune_data(tmp_path_factory.mktemp("finetune-resume"))


def _stopped_in_epoch_2(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(sys, "stderr", StopInEpoch2())
        assert main([a for a in argv if a != "-q"] + ["--log-every", "1"]) == 130


def _flag(argv: list[str], flag: str, value: str) -> list[str]:
    changed = list(argv)
    changed[changed.index(flag) + 1] = value
    return changed


def test_resume_refuses_other_data_and_more_epochs(
    tmp_path: Path,
    data: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    train = tmp_path / "train.json"
    shutil.copyfile(data["train"], train)
    first = train.stat()
    out = tmp_path / "run"
    argv = _flag(_flag(train_argv(data, out), "--epochs", "3"), "--train", str(train))
    _stopped_in_epoch_2(argv, monkeypatch)
    checkpoint = out / CHECKPOINT
    assert [r.epoch for r in load_checkpoint(checkpoint).history] == [1]
    saved = checkpoint.read_bytes()
    capsys.readouterr()

    # The report: resumed on the test questions (and their features, here the same file).
    assert main([*_flag(argv, "--train", str(data["test"])), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"--train is not what {checkpoint} was trained on: train: " in err
    assert f"{train.resolve()} (" in err and f"-> {data['test'].resolve()} (" in err

    train.write_text(train.read_text() + "\n")  # same path, other bytes
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    size = train.stat().st_size
    assert f"train: {train.resolve()} ({size - 1} bytes" in err
    assert f"-> {train.resolve()} ({size} bytes" in err
    train.write_text(train.read_text()[:-1])  # the bytes of the first run, a later mtime
    assert main([*argv, "--resume"]) == 2
    assert "mtime_ns" in capsys.readouterr().err

    assert checkpoint.read_bytes() == saved  # every refusal left the run as it was
    os.utime(train, ns=(first.st_atime_ns, first.st_mtime_ns))  # the first run's mtime too
    assert main([*_flag(argv, "--epochs", "4"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "epochs: 3 -> 4" in err and f"start a new run with --from {out}" in err

    assert main([*argv, "--resume"]) == 0
    record = json.loads((out / "finetune.json").read_text())
    assert [h["epoch"] for h in record["history"]] == [1, 2, 3]
    assert record["inputs"]["train"][0]["path"] == str(train.resolve())
