"""``extract_features convert --resume``: a conversion killed midway (held at a gate, so
"midway" is certain: ``convert_gated_driver.py``) leaves ``OUT.partial``; ``--resume``
finishes it into the very bytes of an uninterrupted conversion, and refuses other inputs or
settings."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from convert_gated_driver import REPO, gated_convert, wait_at_gate
from pipeline_helpers import make_region

from pipeline.commands.extract import main
from pipeline.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from pipeline.features.output import encode_tsv_line

RECORDS = 12
HELD_AFTER = 5


def write_source(path: Path, count: int = RECORDS) -> Path:
    """An obj36 TSV of ``count`` records of 1..10 boxes (real lines, LXMERT's layout)."""
    lines = [
        encode_tsv_line(make_region(f"img{i:03d}", n=1 + i % 10, seed=i)) for i in range(count)
    ]
    path.write_bytes(b"".join(lines))
    return path


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file of an output (a file, or a folder's files by relative path) and its bytes."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def killed_midway(tmp_path: Path, *args: object, sig: int = signal.SIGKILL) -> int:
    """Run a conversion in a subprocess, stop it with ``sig`` once it has written
    :data:`HELD_AFTER` records; returns its exit status."""
    gate = tmp_path / "gate"
    run = subprocess.Popen(
        gated_convert(gate, HELD_AFTER, *args, "-q"),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    fd = wait_at_gate(gate, run)
    ignored = _ignored_signals(run.pid)  # said if the run does not stop
    try:
        run.send_signal(sig)
        try:
            run.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            run.kill()
            _, err = run.communicate()
            raise AssertionError(
                f"the conversion did not stop on signal {sig} (its ignored signals: {ignored}):"
                f"\n{err}"
            ) from None
    finally:
        os.close(fd)
    return run.returncode


def _ignored_signals(pid: int) -> str:
    """The ``SigIgn`` mask of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return line.split()[1]
    return "unknown"


def convert(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["convert", *(str(a) for a in args)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("fmt", "name"), [("tsv", "out.tsv"), ("h5", "out.h5"), ("npz-dir", "out")]
)
def test_a_killed_conversion_resumes_to_the_bytes_of_a_clean_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str, name: str
) -> None:
    source = write_source(tmp_path / "source.tsv")
    clean = tmp_path / "clean" / name
    clean.parent.mkdir()
    assert convert(capsys, source, "--to", fmt, clean, "-q")[0] == EXIT_OK

    out = tmp_path / "work" / name
    out.parent.mkdir()
    assert killed_midway(tmp_path, source, "--to", fmt, out) == -signal.SIGKILL
    partial = out.with_name(name + ".partial")
    assert not out.exists() and partial.is_dir()
    marker = json.loads((partial / "convert.json").read_text())
    assert marker["status"] == "running" and marker["tool"] == "extract_features convert"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert marker["inputs"] == [{"path": str(source), "format": "tsv", "sha256": digest}]
    if fmt == "tsv":  # each line reached the file whole before the next was asked for
        assert len((partial / name).read_bytes().splitlines()) == HELD_AFTER
    if fmt == "npz-dir":
        assert len((partial / name / "index.txt").read_text().splitlines()) == HELD_AFTER

    code, err = convert(capsys, source, "--to", fmt, out)
    assert code == EXIT_USAGE
    assert f"left {partial}; pass --resume to finish it or --overwrite" in err
    if fmt == "npz-dir":  # another precision than the interrupted run's
        code, err = convert(
            capsys, source, "--to", fmt, out, "--resume", "--feature-dtype", "float16"
        )
        assert code == EXIT_USAGE
        assert "feature_dtype: 'float32' then, 'float16' now" in err
    assert partial.is_dir() and not out.exists()

    code, err = convert(capsys, source, "--to", fmt, out, "--resume")
    assert code == EXIT_OK, err
    kept = HELD_AFTER if fmt in ("tsv", "npz-dir") else 0
    assert f"resuming {partial}: {kept} records kept" in err
    assert snapshot(out) == snapshot(clean)
    assert not partial.exists()
    manifest = json.loads(out.with_name(name + ".manifest.json").read_text())
    assert manifest["status"] == "converted"
    assert manifest["counts"]["records_in_output"] == RECORDS
    assert manifest["sources"][0]["sha256"] == digest


def test_ctrl_c_keeps_the_partial_and_a_changed_input_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_source(tmp_path / "source.tsv")
    out = tmp_path / "out.tsv"
    rc = killed_midway(tmp_path, source, "--to", "tsv", out, sig=signal.SIGINT)
    assert rc == EXIT_INTERRUPTED
    partial = tmp_path / "out.tsv.partial"
    assert (partial / "out.tsv").is_file() and not out.exists()

    write_source(source, RECORDS - 1)  # the input changed since
    code, err = convert(capsys, source, "--to", "tsv", out, "--resume")
    assert code == EXIT_USAGE
    assert "was started with other inputs or settings" in err
    assert f"input 1 {source}: its content changed" in err
    assert partial.is_dir() and not out.exists()

    # --overwrite starts again from the input as it is now.
    assert convert(capsys, source, "--to", "tsv", out, "--overwrite", "-q")[0] == EXIT_OK
    assert out.read_bytes() == source.read_bytes() and not partial.exists()


def test_a_foreign_partial_folder_is_never_touched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_source(tmp_path / "source.tsv", 2)
    out = tmp_path / "out.h5"
    foreign = tmp_path / "out.h5.partial"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for flag in ("--resume", "--overwrite"):
        code, err = convert(capsys, source, "--to", "h5", out, flag)
        assert code == EXIT_USAGE
        assert f"{foreign} is in the way and is not the work folder of a conversion" in err
    assert snapshot(foreign) == {"notes.txt": b"mine"} and not out.exists()


def test_resume_without_a_partial_converts_from_the_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_source(tmp_path / "source.tsv", 3)
    out = tmp_path / "out.tsv"
    code, err = convert(capsys, source, "--to", "tsv", out, "--resume")
    assert code == EXIT_OK, err
    assert f"nothing to resume (no {out}.partial)" in err
    assert out.read_bytes() == source.read_bytes()


def test_a_full_disk_keeps_the_partial_and_resume_finishes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.features.formats.registry as registry

    source = write_source(tmp_path / "source.tsv")
    out = tmp_path / "out.tsv"
    real = registry.encode_tsv_line
    calls = {"n": 0}

    def disk_fills_at_the_fourth(region: object) -> bytes:
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(region)  # type: ignore[arg-type]

    monkeypatch.setattr(registry, "encode_tsv_line", disk_fills_at_the_fourth)
    code, err = convert(capsys, source, "--to", "tsv", out)
    assert code == EXIT_ERROR
    assert "the disk is full" in err and "--resume" in err
    assert len((tmp_path / "out.tsv.partial" / "out.tsv").read_bytes().splitlines()) == 3
    monkeypatch.setattr(registry, "encode_tsv_line", real)
    code, err = convert(capsys, source, "--to", "tsv", out, "--resume")
    assert code == EXIT_OK and "3 records kept" in err
    assert out.read_bytes() == source.read_bytes()


def test_a_conversion_stopped_while_moving_into_place_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped after a first output took its place, before its manifest: the work folder
    claims it, and ``--resume --overwrite`` finishes (an existing output always needs
    ``--overwrite``). An output named ``replaced`` (the name the old
    folder once went aside under) keeps every record when overwritten."""
    import pipeline.convert as convert

    source = write_source(tmp_path / "in.tsv")
    out = tmp_path / "replaced"
    move = convert.move_into_place

    def move_then_stop(*args: object) -> None:
        move(*args)  # type: ignore[arg-type]
        raise KeyboardInterrupt

    monkeypatch.setattr(convert, "move_into_place", move_then_stop)
    assert main(["convert", str(source), "--to", "npz-dir", str(out), "-q"]) == EXIT_INTERRUPTED
    monkeypatch.setattr(convert, "move_into_place", move)
    resume = ["convert", str(source), "--to", "npz-dir", str(out), "-q", "--resume"]
    assert main([*resume, "--overwrite"]) == EXIT_OK
    again = ["convert", str(source), "--to", "npz-dir", str(out), "-q", "--overwrite"]
    assert main(again) == EXIT_OK
    back = tmp_path / "back.tsv"
    assert main(["convert", str(out), "--to", "tsv", str(back), "-q"]) == EXIT_OK
    assert back.read_bytes() == source.read_bytes()
