"""extract_features used as a hostile user would, on the shipped shapes detector, asserting the
exit code, the message and the files on disk. Each case calls the command's ``main(argv)`` in
this process, with its output captured; only the lock is tested with real processes (two runs
at once), since a lock held by this process would prove nothing."""

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

from pipeline.commands.extract import main
from pipeline.features.manifest import manifest_path, read_manifest
from pipeline.features.output import TsvWriter, read_features, read_ids
from weights.lock import lock_path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
#: One torch thread, as in the lock test's processes (OMP_NUM_THREADS=1): on a loaded machine
#: more threads than free cores only wait for each other.
BASE = ["--detector", "shapes-detector", "--device", "cpu", "--workers", "0", "--threads", "1"]
BASE += ["-q"]


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    """``extract_features ARGS`` in this process: its exit code and what it printed to stderr."""
    code = main([str(arg) for arg in args])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 images (the 8 example scenes in two folders, so ids differ by folder). A run on them
    is held midway by its gate (``gated_driver.py``), not by their number."""
    root = tmp_path_factory.mktemp("many")
    for copy in range(2):
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
#: pipeline.commands.extract.main only when the trigger file appears: so it can be aimed at a
#: run that is still going, whatever the machine's import time.
PRIMED = """
import pathlib, sys, time
import pipeline.commands.extract, pipeline.extract.steps
print("ready", flush=True)
trigger = pathlib.Path(sys.argv[1])
while not trigger.exists():
    time.sleep(0.005)
sys.exit(pipeline.commands.extract.main(sys.argv[2:]))
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
    """Until ``proc`` holds ``output``'s lock (its PID is in the lock file). ``proc`` is gated
    after its first record, so it either takes the lock or ends: no deadline decides it."""
    while True:
        lock = lock_path(output)
        if lock.exists() and str(proc.pid) in lock.read_text():
            return
        if proc.poll() is not None:
            pytest.fail(f"the first run ended ({proc.returncode}) before it held the lock")
        time.sleep(0.02)


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
    _, other_err = other.communicate(timeout=600)  # a guard against a hang only
    assert first.poll() is None, "the first run ended before the second tried"
    open_gate(gate, first)
    assert other.returncode == 2, other_err
    assert "locked" in other_err and str(first.pid) in other_err and str(out) in other_err
    _, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err
    ids = read_ids(out)
    assert len(ids) == len(set(ids)) == 16
    assert read_manifest(manifest_path(out))["counts"]["records_in_output"] == 16


def test_resume_refuses_files_the_tool_did_not_write(tmp_path, capsys) -> None:
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
        code, err = run(capsys, EXAMPLES, "--out", target, "--resume", *BASE)
        assert code == 2, (target, err)
        assert str(target) in err and "--overwrite" in err
        assert target.read_bytes() == before
        assert not manifest_path(target).exists()


@pytest.mark.parametrize("suffix", [".tsv", ".h5"])
def test_resume_with_other_settings_is_refused_before_any_work(tmp_path, capsys, suffix) -> None:
    out = tmp_path / f"mixed{suffix}"
    assert run(capsys, EXAMPLES, "--out", out, "--limit", "3", "--boxes", "6", *BASE)[0] == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.suffix != ".lock"}
    code, err = run(capsys, EXAMPLES, "--out", out, "--resume", "--boxes", "2", *BASE)
    assert code == 2
    assert "min_boxes" in err and "2 vs 6" in err
    assert "max_boxes" in err
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name in before}
    assert after == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # The same settings finish it.
    assert run(capsys, EXAMPLES, "--out", out, "--resume", "--boxes", "6", *BASE)[0] == 0
    assert len(read_ids(out)) == 8


def test_resume_without_a_manifest_checks_the_records_themselves(tmp_path, capsys) -> None:
    out = tmp_path / "plain.tsv"
    assert run(capsys, EXAMPLES, "--out", out, "--limit", "2", "--boxes", "6", *BASE)[0] == 0
    manifest_path(out).unlink()  # as an obj36 TSV from elsewhere
    code, err = run(capsys, EXAMPLES, "--out", out, "--resume", "--boxes", "3", *BASE)
    assert code == 2 and "6 boxes" in err
    assert run(capsys, EXAMPLES, "--out", out, "--resume", "--boxes", "6", *BASE)[0] == 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--shard", ""], "--shard must look like K/N"),
        (["--min-size", "1"], "--min-size 1: must be in"),
        (["--max-size", "100000"], "--max-size 100000: must be in"),
        (["--boxes", "101"], "at most 100 boxes"),
    ],
)
def test_flags_the_model_cannot_run_are_usage_errors(tmp_path, capsys, flags, message) -> None:
    code, err = run(capsys, EXAMPLES, "--out", tmp_path / "x.tsv", *BASE, *flags)
    assert code == 2 and message in err
    assert list(tmp_path.iterdir()) == []


def test_outputs_that_cannot_be_written_are_usage_errors(tmp_path, capsys) -> None:
    code, err = run(capsys, EXAMPLES, "--out", tmp_path / "nope" / "x.tsv", *BASE)
    assert code == 2 and str(tmp_path / "nope") in err
    folder = tmp_path / "out.tsv"
    folder.mkdir()
    code, err = run(capsys, EXAMPLES, "--out", folder, *BASE)
    assert code == 2 and "is a directory" in err
    long_name = tmp_path / ("x" * 245 + ".tsv")
    code, err = run(capsys, EXAMPLES, "--out", long_name, *BASE)
    assert code == 2 and "too long" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tsv"]


def test_an_input_that_is_also_the_output_is_refused(tmp_path, capsys) -> None:
    same = tmp_path / "same.tsv"
    same.write_bytes(b"precious\n")
    code, err = run(capsys, same, EXAMPLES / "scene_000.png", "--out", same, "--overwrite", *BASE)
    assert code == 2 and "also what this run writes" in err
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


def test_manifest_records_the_settings_table(tmp_path, capsys) -> None:
    out = tmp_path / "s.h5"
    assert run(capsys, EXAMPLES, "--out", out, "--limit", "1", *BASE)[0] == 0
    settings = read_manifest(manifest_path(out))["settings"]
    assert settings["preset"] == "shapes" and settings["feature_dim"] == 256
    assert settings["precision"] == "fp32" and len(settings["detector_sha256"]) == 64
    json.dumps(settings)  # plain JSON values
