"""``extract_features --out`` in npz-dir, lmdb and parquet (:mod:`pipeline.extract.staged`):
the records of a TSV run, read by the layouts' own readers; a run killed midway (held at its
gate, ``gated_driver.py``) keeps the old output and resumes; a finished output is added to
only when it can be read back exactly; every refusal before anything is written."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from gated_driver import gated_command, open_gate

from pipeline.commands.extract import main
from pipeline.errors import EXIT_OK, EXIT_USAGE
from pipeline.features.formats.partial import partial_path
from pipeline.features.manifest import manifest_path, read_manifest
from pipeline.features.output import read_features

REPO = Path(__file__).resolve().parents[2]


def extract(*args: object) -> int:
    return main([*map(str, args), "--workers", "0", "-q"])


@pytest.fixture(scope="module")
def run_args(tiny_checkpoint: Path, photos: Path) -> list[object]:
    return [photos, "--detector", tiny_checkpoint, "--batch-size", "1"]


@pytest.fixture(scope="module")
def reference(run_args: list[object], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The TSV run every other format is compared with (4 photos)."""
    out = tmp_path_factory.mktemp("reference") / "ref.tsv"
    assert extract(*run_args, "--out", out) == EXIT_OK
    return out


def tsv_of(path: Path, tmp_path: Path) -> bytes:
    """``path`` converted back to obj36 TSV by ``extract_features convert``."""
    back = tmp_path / f"{path.name}.back.tsv"
    assert main(["convert", str(path), "--to", "tsv", str(back), "-q"]) == EXIT_OK
    return back.read_bytes()


def digest(path: Path) -> str:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


@pytest.mark.parametrize(("fmt", "out_name"), [("npz-dir", "feats"), ("parquet", "feats.parquet")])
def test_lossless_formats_hold_the_tsv_run_byte_for_byte(
    fmt: str, out_name: str, run_args: list[object], reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / out_name
    assert extract(*run_args, "--out", out, "--format", fmt) == EXIT_OK
    assert not partial_path(out).exists()  # the work folder is gone
    manifest = read_manifest(manifest_path(out))
    assert (manifest["status"], manifest["format"]) == ("finished", fmt)
    assert manifest["counts"]["records_in_output"] == 4
    assert tsv_of(out, tmp_path) == reference.read_bytes()


def test_parquet_is_read_by_pyarrow_one_row_per_image(
    run_args: list[object], reference: Path, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    out = tmp_path / "f16.parquet"
    assert extract(*run_args, "--out", out, "--feature-dtype", "float16") == EXIT_OK
    table = pq.read_table(out)
    want = list(read_features(reference))
    assert table.column("img_id").to_pylist() == [r.image_id for r in want]
    assert read_manifest(manifest_path(out))["feature_dtype"] == "float16"
    for row, region in zip(table.to_pylist(), want, strict=True):
        features = np.asarray(row["features"], dtype=np.float32)
        assert np.array_equal(features, region.features.astype(np.float16).astype(np.float32))


def test_lmdb_is_uniter_s_database_of_float16_records(
    run_args: list[object], reference: Path, tmp_path: Path
) -> None:
    import lmdb

    out = tmp_path / "uniter"
    assert extract(*run_args, "--out", out, "--format", "lmdb") == EXIT_OK
    assert sorted(p.name for p in out.iterdir()) == [
        "feat_th0.2_max100_min10_compressed",
        "nbb_th0.2_max100_min10.json",
    ]
    env = lmdb.open(str(out / "feat_th0.2_max100_min10_compressed"), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            for region in read_features(reference):
                # UNITER's DetectFeatLmdb(compress=True): each value is an np.savez_compressed.
                value = txn.get(f"{region.image_id}.npz".encode())
                assert value is not None, region.image_id
                with np.load(io.BytesIO(value), allow_pickle=False) as npz:
                    features = npz["features"]
                assert features.dtype == np.float16
                assert np.array_equal(features, region.features.astype(np.float16))
    finally:
        env.close()
    assert read_manifest(manifest_path(out))["feature_dtype"] == "float16"


def _held_run(tmp_path: Path, run_args: list[object], *args: object) -> subprocess.Popen[str]:
    """A run (subprocess) that stops at its gate after writing one record."""
    gate = tmp_path / "gate"
    command = gated_command(gate, 1, *run_args, *args, "--workers", "0", "-q")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_first_record(run: subprocess.Popen[str], staging: Path) -> None:
    """Return once the first record is in the work folder's TSV (the run is held there)."""
    while not (staging.exists() and staging.read_bytes().endswith(b"\n")):
        assert run.poll() is None, run.communicate()
        time.sleep(0.02)  # polls a condition: the first record on disk


def test_killed_midway_keeps_the_old_output_and_resume_finishes(
    run_args: list[object], reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "feats.parquet"
    assert extract(*run_args, "--out", out, "--limit", "1") == EXIT_OK
    before, before_manifest = digest(out), manifest_path(out).read_bytes()
    run = _held_run(tmp_path, run_args, "--out", out, "--overwrite")
    staging = partial_path(out) / "feats.parquet.tsv"
    _wait_for_first_record(run, staging)
    run.kill()
    run.communicate()
    # The old output and its manifest are as they were; the work folder holds the new run.
    assert digest(out) == before
    assert manifest_path(out).read_bytes() == before_manifest
    assert read_manifest(manifest_path(staging))["status"] == "running"
    assert extract(*run_args, "--out", out) == EXIT_USAGE  # neither flag: refused
    assert extract(*run_args, "--out", out, "--resume") == EXIT_OK
    assert not partial_path(out).exists()
    assert tsv_of(out, tmp_path) == reference.read_bytes()


def test_a_finished_output_is_added_to_when_it_reads_back_exactly(
    run_args: list[object], reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "feats"
    assert extract(*run_args, "--out", out, "--format", "npz-dir", "--limit", "2") == EXIT_OK
    assert extract(*run_args, "--out", out, "--format", "npz-dir", "--resume") == EXIT_OK
    assert tsv_of(out, tmp_path) == reference.read_bytes()
    manifest = read_manifest(manifest_path(out))
    assert manifest["counts"] == {**manifest["counts"], "already_done": 2, "written": 2}
    # Nothing left to do: nothing is touched.
    done = digest(out)
    assert extract(*run_args, "--out", out, "--format", "npz-dir", "--resume") == EXIT_OK
    assert digest(out) == done and not partial_path(out).exists()


def test_a_finished_float16_output_is_not_added_to(
    run_args: list[object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "uniter"
    assert extract(*run_args, "--out", out, "--format", "lmdb", "--limit", "2") == EXIT_OK
    done = digest(out)
    capsys.readouterr()
    assert extract(*run_args, "--out", out, "--format", "lmdb", "--resume") == EXIT_USAGE
    said = capsys.readouterr().err
    assert "float16" in said and "another --out" in said
    assert digest(out) == done and not partial_path(out).exists()


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--out", "{tmp}/x.tsv", "--format", "parquet"], "names a tsv file, but --format"),
        (["--out", "{tmp}/feats"], "--format npz-dir"),
        (["--out", "{tmp}/feats", "--format", "npz-dir", "--shard", "1/2"], "merge"),
        (["--out", "{tmp}/x.tsv", "--feature-dtype", "float16"], "tsv output stores float32"),
        (["--out", "{tmp}/u", "--format", "lmdb", "--feature-dtype", "float32"], "float16"),
        (["--out", "{tmp}/mine", "--format", "npz-dir", "--overwrite"], "never replaced"),
        (["--out", "{tmp}/x.parquet", "--format", "npz-dir"], "names a parquet file"),
        (["--out", "{tmp}/busy", "--format", "npz-dir", "--overwrite"], "is in the way"),
    ],
)
def test_refusals_name_the_flag_and_write_nothing(
    args: list[str],
    said: str,
    run_args: list[object],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    mine = tmp_path / "mine"  # a folder the user made: never replaced
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    (tmp_path / "busy.partial").mkdir()  # not a work folder of ours
    (tmp_path / "busy.partial" / "a.txt").write_text("keep")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    argv = [a.format(tmp=tmp_path) for a in args]
    assert extract(*run_args, *argv) == EXIT_USAGE
    assert said in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_ctrl_c_midway_then_resume(run_args: list[object], reference: Path, tmp_path: Path) -> None:
    """A held run stopped by Ctrl-C (130) leaves no output, and the work folder resumes."""
    out = tmp_path / "feats.parquet"
    run = _held_run(tmp_path, run_args, "--out", out)
    staging = partial_path(out) / "feats.parquet.tsv"
    _wait_for_first_record(run, staging)
    run.send_signal(signal.SIGINT)
    open_gate(tmp_path / "gate", run)  # the sink returns; the run sees its Ctrl-C
    assert run.wait(timeout=120) == 130
    assert not out.exists()
    assert read_manifest(manifest_path(staging))["status"] == "interrupted"
    assert extract(*run_args, "--out", out, "--resume") == EXIT_OK
    assert tsv_of(out, tmp_path) == reference.read_bytes()


@pytest.mark.parametrize(
    ("fmt", "out_name"), [("npz-dir", "n"), ("lmdb", "u"), ("parquet", "p.parquet")]
)
def test_a_run_without_records_gives_an_empty_output(
    fmt: str, out_name: str, run_args: list[object], tmp_path: Path
) -> None:
    """The detector's feature dimension types an output that holds no box (parquet's schema
    needs one); a conversion of an empty file to parquet, which has none, says so."""
    from pipeline.features.store import FeatureStore

    out = tmp_path / out_name
    assert extract(*run_args, "--out", out, "--format", fmt, "--limit", "0") == EXIT_OK
    with FeatureStore.open(out) as store:
        assert len(store) == 0
    if fmt == "parquet":
        empty = tmp_path / "empty.tsv"
        empty.write_bytes(b"")
        again = tmp_path / "again.parquet"
        assert main(["convert", str(empty), "--to", "parquet", str(again), "-q"]) == EXIT_USAGE
        assert not again.exists() and not partial_path(again).exists()


@pytest.mark.parametrize("old_output", [False, True])
def test_a_run_stopped_while_moving_its_output_into_place_resumes(
    old_output: bool,
    run_args: list[object],
    reference: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stopped right after the new output took its place, before its manifest: the output
    has no manifest of its own (a first run) or the old one, and ``--resume`` finishes."""
    import pipeline.features.formats.place as place

    out = tmp_path / "feats"
    flags = ("--out", out, "--format", "npz-dir")
    if old_output:
        assert extract(*run_args, *flags, "--limit", "1") == EXIT_OK
    move = place.move_into_place

    def move_then_stop(*args: object) -> None:
        move(*args)  # type: ignore[arg-type]
        raise KeyboardInterrupt

    monkeypatch.setattr(place, "move_into_place", move_then_stop)
    mode = ("--overwrite",) if old_output else ()
    assert extract(*run_args, *flags, *mode) == 130
    assert partial_path(out).is_dir()
    monkeypatch.setattr(place, "move_into_place", move)
    assert extract(*run_args, *flags) == EXIT_USAGE  # neither flag: refused, says --resume
    assert extract(*run_args, *flags, "--resume") == EXIT_OK
    assert not partial_path(out).exists()
    assert tsv_of(out, tmp_path) == reference.read_bytes()
    assert read_manifest(manifest_path(out))["counts"]["records_in_output"] == 4


def test_an_output_named_like_the_work_folder_s_files_keeps_every_record(
    run_args: list[object], reference: Path, tmp_path: Path
) -> None:
    """The old folder is moved aside under a name no output can have."""
    out = tmp_path / "replaced"
    flags = ("--out", out, "--format", "npz-dir")
    assert extract(*run_args, *flags, "--limit", "2") == EXIT_OK
    assert extract(*run_args, *flags, "--resume") == EXIT_OK
    assert tsv_of(out, tmp_path) == reference.read_bytes()


@pytest.mark.parametrize(
    ("make", "args", "said"),
    [
        ("link", ["--out", "{tmp}/dang", "--format", "npz-dir"], "is a symbolic link"),
        ("none", ["--out", ".", "--format", "npz-dir"], "--out .: name the output"),
        ("dir", ["--out", "{tmp}/made", "--format", "npz-dir"], "never replaced"),
    ],
)
def test_links_bare_folders_and_foreign_outputs_are_refused_first(
    make: str,
    args: list[str],
    said: str,
    run_args: list[object],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if make == "link":
        (tmp_path / "dang").symlink_to(tmp_path / "nowhere")
    elif make == "dir":
        (tmp_path / "made").mkdir()  # the user's: a plain run must not advise --overwrite
    before = sorted(p.name for p in tmp_path.iterdir())
    assert extract(*run_args, *[a.format(tmp=tmp_path) for a in args]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert said in err and "--overwrite" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
