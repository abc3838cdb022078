"""extract_features used as a hostile user would: each case is a real subprocess on the shipped
shapes detector, asserting the exit code, the message and the files on disk."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gated_driver import gated_command, open_gate

from pipeline.cli import main
from pipeline.lock import lock_path
from pipeline.manifest import manifest_path, read_manifest
from pipeline.writers import TsvWriter, read_features, read_ids

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
BASE = ["--detector", "shapes-detector", "--device", "cpu", "--workers", "0", "-q"]


def command(*args: object) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", *map(str, args)]


def run(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command(*args), capture_output=True, text=True, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 images (5 copies of the 8 example scenes), enough for a run to last a while."""
    root = tmp_path_factory.mktemp("many")
    for copy in range(5):
        folder = root / f"c{copy}"
        folder.mkdir()
        for scene in sorted(EXAMPLES.glob("scene_*.png")):
            shutil.copyfile(scene, folder / scene.name)
    return root


def start(argv: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


#: A real extract_features process that imports everything first, says "ready", and runs
#: pipeline.cli.main only when the trigger file appears: so it can be aimed at a run that is
#: still going, whatever the machine's import time.
PRIMED = """
import pathlib, sys, time
import pipeline.cli, pipeline.steps
print("ready", flush=True)
trigger = pathlib.Path(sys.argv[1])
while not trigger.exists():
    time.sleep(0.005)
sys.exit(pipeline.cli.main(sys.argv[2:]))
"""


def primed(trigger: Path, *args: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", PRIMED, str(trigger), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def wait_for_holder(output: Path, proc: subprocess.Popen[str]) -> None:
    """Until ``proc`` holds ``output``'s lock (its PID is in the lock file)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        lock = lock_path(output)
        if lock.exists() and str(proc.pid) in lock.read_text():
            return
        if proc.poll() is not None:
            pytest.fail(f"the first run ended ({proc.returncode}) before it held the lock")
        time.sleep(0.02)
    pytest.fail("the first run never took the lock")


@pytest.mark.parametrize(
    ("suffix", "second"),
    [(".h5", ["--overwrite"]), (".tsv", ["--resume"]), (".h5", ["--resume"])],
)
def test_a_second_run_on_a_locked_output_exits_2_and_the_first_keeps_its_records(
    many, tmp_path, second, suffix
) -> None:
    out = tmp_path / f"cw{suffix}"
    trigger = tmp_path / "go"
    other = primed(trigger, many, "--out", out, *BASE, *second)
    gate = tmp_path / "gate"
    # The first run waits after its first record until the second has tried.
    first = start(gated_command(gate, 1, many, "--out", out, *BASE))
    wait_for_holder(out, first)
    trigger.touch()
    _, other_err = other.communicate(timeout=120)
    assert first.poll() is None, "the first run ended before the second tried"
    open_gate(gate, first)
    assert other.returncode == 2, other_err
    assert "locked" in other_err and str(first.pid) in other_err and str(out) in other_err
    _, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err
    ids = read_ids(out)
    assert len(ids) == len(set(ids)) == 40
    assert read_manifest(manifest_path(out))["counts"]["records_in_output"] == 40


def test_resume_refuses_files_the_tool_did_not_write(tmp_path) -> None:
    notes = tmp_path / "notes.tsv"
    notes.write_text("shopping list\nmilk\teggs\n")
    noise = tmp_path / "noise.tsv"
    noise.write_bytes(os.urandom(5 * 2**20))
    one_line = tmp_path / "one.tsv"
    one_line.write_bytes(b"no newline at all")
    garbage_h5 = tmp_path / "garbage.h5"
    garbage_h5.write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(4096))
    for target in (notes, noise, one_line, garbage_h5):
        before = target.read_bytes()
        result = run(EXAMPLES, "--out", target, "--resume", *BASE)
        assert result.returncode == 2, (target, result.stderr)
        assert str(target) in result.stderr and "--overwrite" in result.stderr
        assert target.read_bytes() == before
        assert not manifest_path(target).exists()


@pytest.mark.parametrize("suffix", [".tsv", ".h5"])
def test_resume_with_other_settings_is_refused_before_any_work(tmp_path, suffix) -> None:
    out = tmp_path / f"mixed{suffix}"
    assert run(EXAMPLES, "--out", out, "--limit", "3", "--boxes", "6", *BASE).returncode == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.suffix != ".lock"}
    result = run(EXAMPLES, "--out", out, "--resume", "--boxes", "2", *BASE)
    assert result.returncode == 2
    assert "min_boxes" in result.stderr and "2 vs 6" in result.stderr
    assert "max_boxes" in result.stderr
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name in before}
    assert after == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # The same settings finish it.
    assert run(EXAMPLES, "--out", out, "--resume", "--boxes", "6", *BASE).returncode == 0
    assert len(read_ids(out)) == 8


def test_resume_without_a_manifest_checks_the_records_themselves(tmp_path) -> None:
    out = tmp_path / "plain.tsv"
    assert run(EXAMPLES, "--out", out, "--limit", "2", "--boxes", "6", *BASE).returncode == 0
    manifest_path(out).unlink()  # as an obj36 TSV from elsewhere
    result = run(EXAMPLES, "--out", out, "--resume", "--boxes", "3", *BASE)
    assert result.returncode == 2 and "6 boxes" in result.stderr
    assert run(EXAMPLES, "--out", out, "--resume", "--boxes", "6", *BASE).returncode == 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--shard", ""], "--shard must look like K/N"),
        (["--min-size", "1"], "--min-size 1: must be in"),
        (["--max-size", "100000"], "--max-size 100000: must be in"),
        (["--boxes", "101"], "at most 100 boxes"),
    ],
)
def test_flags_the_model_cannot_run_are_usage_errors(tmp_path, flags, message) -> None:
    result = run(EXAMPLES, "--out", tmp_path / "x.tsv", *BASE, *flags)
    assert result.returncode == 2 and message in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_outputs_that_cannot_be_written_are_usage_errors(tmp_path) -> None:
    missing = run(EXAMPLES, "--out", tmp_path / "nope" / "x.tsv", *BASE)
    assert missing.returncode == 2 and str(tmp_path / "nope") in missing.stderr
    folder = tmp_path / "out.tsv"
    folder.mkdir()
    is_dir = run(EXAMPLES, "--out", folder, *BASE)
    assert is_dir.returncode == 2 and "is a directory" in is_dir.stderr
    long_name = tmp_path / ("x" * 245 + ".tsv")
    too_long = run(EXAMPLES, "--out", long_name, *BASE)
    assert too_long.returncode == 2 and "too long" in too_long.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tsv"]


def test_an_input_that_is_also_the_output_is_refused(tmp_path) -> None:
    same = tmp_path / "same.tsv"
    same.write_bytes(b"precious\n")
    result = run(same, EXAMPLES / "scene_000.png", "--out", same, "--overwrite", *BASE)
    assert result.returncode == 2 and "also what this run writes" in result.stderr
    assert same.read_bytes() == b"precious\n"


def test_a_full_disk_is_exit_4_with_the_reason_and_resume_continues(
    tmp_path, monkeypatch, capsys
) -> None:
    out = tmp_path / "full.tsv"
    real_write = TsvWriter.write
    calls = {"n": 0}

    def write(self: TsvWriter, region: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, region)  # type: ignore[arg-type]

    monkeypatch.setattr(TsvWriter, "write", write)
    assert main([str(EXAMPLES), "--out", str(out), *BASE]) == 4
    err = capsys.readouterr().err
    assert "disk is full" in err and "--resume" in err
    manifest = read_manifest(manifest_path(out))
    assert manifest["status"] == "error" and manifest["error"] == "disk full"
    assert len(read_ids(out)) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(TsvWriter, "write", real_write)
    assert main([str(EXAMPLES), "--out", str(out), "--resume", *BASE]) == 0
    assert [r.image_id for r in read_features(out)] == [f"scene_{i:03d}" for i in range(8)]


def test_manifest_records_the_settings_table(tmp_path) -> None:
    out = tmp_path / "s.h5"
    assert run(EXAMPLES, "--out", out, "--limit", "1", *BASE).returncode == 0
    settings = read_manifest(manifest_path(out))["settings"]
    assert settings["preset"] == "shapes" and settings["feature_dim"] == 256
    assert settings["precision"] == "fp32" and len(settings["detector_sha256"]) == 64
    json.dumps(settings)  # plain JSON values
