"""The checksum lock file under two processes: two first runs at once keep every pin.

Each process pins many checkpoints of its own against one hub cache, one after the other, so
that their read-merge-write cycles of the lock file overlap many times; a barrier file starts
them together. Without the file lock one process's write drops pins the other just made.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from weights import ENV_VAR, LOCK_FILE_NAME

ROOT = Path(__file__).resolve().parents[2]
PER_PROCESS = 40

# argv: tag, count, barrier folder. Waits until both processes are ready, then resolves
# <tag>-0 ... <tag>-<count-1> (each a checkpoint in $LXMERT_PIPELINE_WEIGHTS), pinning each.
_PINNER = """
import sys, time
from pathlib import Path
from weights.registry import CheckpointRecord
from weights.resolve import locate_checkpoint

tag, count, barrier = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
(barrier / (tag + ".ready")).touch()
deadline = time.monotonic() + 300
while len(list(barrier.glob("*.ready"))) < 2:
    if time.monotonic() > deadline:
        sys.exit("the other process never started")
    time.sleep(0.001)
for i in range(count):
    name = f"{tag}-{i}"
    record = CheckpointRecord(
        name=name, kind="detector", preset="tiny", license="test", description="test",
        hf_repo="test-org/none", files=("model.bin",),
    )
    found = locate_checkpoint(name, registry={name: record}, download=False)
    assert found.source == "env", found
"""


def _weights_file(tag: str, index: int) -> bytes:
    return f"weights of {tag}-{index}".encode()


def test_two_processes_pinning_at_once_keep_all_pins(tmp_path: Path, isolated_env: Path) -> None:
    weights_dir = tmp_path / "weights-dir"
    for tag in ("a", "b"):
        for index in range(PER_PROCESS):
            directory = weights_dir / f"{tag}-{index}"
            directory.mkdir(parents=True)
            (directory / "model.bin").write_bytes(_weights_file(tag, index))
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, ENV_VAR: str(weights_dir), "PYTHONPATH": str(ROOT)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _PINNER, tag, str(PER_PROCESS), str(barrier)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("a", "b")
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr

    lock = json.loads((isolated_env / LOCK_FILE_NAME).read_text(encoding="utf-8"))
    expected = {
        f"{tag}-{index}/model.bin": hashlib.sha256(_weights_file(tag, index)).hexdigest()
        for tag in ("a", "b")
        for index in range(PER_PROCESS)
    }
    assert lock["checksums"] == expected
    # Nothing but the lock file and (maybe) filelock's own file beside it: no temporaries.
    assert {p.name for p in isolated_env.iterdir()} <= {LOCK_FILE_NAME, f"{LOCK_FILE_NAME}.lock"}
