"""``torchrun --nproc_per_node 2 lxmert-finetune train`` on the CPU (gloo): a SIGKILL of rank 1
(sent when rank 0 reports epoch 2's first step, so epoch 1's checkpoint is on disk) ends the
whole run through torchrun, and ``--resume`` finishes it; both ranks train, rank 0 alone
writes. One test, since each torchrun start costs about 25 s of CPU on 2 cores."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from finetune_data import make_finetune_data, train_argv

from encoder.finetune import load_checkpoint
from pipeline.commands.finetune.command import CHECKPOINT

TORCHRUN = Path(sys.executable).parent / "torchrun"
PROGRAM = Path(sys.executable).parent / "lxmert-finetune"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Eight train and four held-out scenes and a tiny QA model (:func:`make_finetune_data`)."""
    yield make_finetune_data(tmp_path_factory.mktemp("finetune-torchrun"))


def _command(data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    argv = train_argv(data, out, "--limit-questions", "32", "--batch-size", "8", *extra)
    argv = [a for a in argv if a != "-q"]
    runner = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "--no-python"]
    return [*runner, str(PROGRAM), *argv]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _rank_pid(parent: int, rank: int) -> int:
    """The pid of torchrun's worker ``rank`` (a child of ``parent`` with ``RANK=rank``)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise LookupError(f"no rank {rank} under {parent}")


def test_sigkill_of_one_rank_ends_the_run_and_resume_finishes(
    tmp_path: Path, data: dict[str, Path]
) -> None:
    out = tmp_path / "killed"
    command = _command(data, out, "--epochs", "3", "--log-every", "1")
    run = subprocess.Popen(command, env=_env(), stderr=subprocess.PIPE, text=True)
    assert run.stderr is not None
    lines: list[str] = []
    for line in run.stderr:
        lines.append(line)
        if line.startswith("epoch 2/3 step 1/"):  # epoch 1's checkpoint is written
            os.kill(_rank_pid(run.pid, 1), signal.SIGKILL)
            break
    lines.extend(run.stderr)
    code = run.wait(timeout=300)
    text = "".join(lines)
    assert code != 0, text[-3000:]
    # torchrun's summary: the first failure was rank 1, killed.
    assert re.search(r"Root Cause.*?\n\s*rank\s*: 1 .*?\(SIGKILL\)", text, re.S), text[-3000:]
    assert [r.epoch for r in load_checkpoint(out / CHECKPOINT).history] == [1]

    resumed = subprocess.run(
        [*command, "--resume"], env=_env(), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = json.loads((out / "finetune.json").read_text())
    assert [h["epoch"] for h in record["history"]] == [1, 2, 3]
    # Both ranks trained (each epoch's examples are over both), and rank 0 alone wrote: each
    # epoch's line (LXMERT's, counting from 0) once on the terminal of its run, once in log.log.
    assert all(h["examples"] == 32 for h in record["history"])
    assert (out / "last" / "model.safetensors").is_file()
    assert text.count("Epoch 0: Train ") == 1
    assert [resumed.stderr.count(f"Epoch {epoch}: Train ") for epoch in (1, 2)] == [1, 1]
    log = (out / "log.log").read_text()
    assert [log.count(f"Epoch {epoch}: Train ") for epoch in (0, 1, 2)] == [1, 1, 1]
