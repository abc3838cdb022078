"""``extract_features merge`` rules (issue 15, item 5): nothing lost, nothing mixed.

Every shard here is made by the real CLI with the tiny detector; a killed shard is what a kill
leaves (manifest status, a journal, an incomplete last line). A refusal exits 2 and leaves the
output's folder exactly as it was: no output, temporary file, manifest or lock file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pipeline_helpers import assert_same_region, make_region

from pipeline.commands.extract import main
from pipeline.features.manifest import manifest_path, read_manifest
from pipeline.features.output import (
    TsvWriter,
    journal_path,
    merge_outputs,
    read_features,
    read_ids,
    write_h5,
)

REPO = Path(__file__).resolve().parents[2]
IDS = ["astronaut", "cats/chelsea", "coffee", "gray/camera"]


def extract(*args: object) -> int:
    return main([str(arg) for arg in args])


def merge(*args: object) -> int:
    return main(["merge", *map(str, args)])


@dataclass(frozen=True)
class Runs:
    """Outputs of real runs over the four photos (each with its manifest)."""

    reference: Path  # one unsharded TSV run
    halves: tuple[Path, Path]  # HDF5 shards 1/2 and 2/2
    quarters: tuple[Path, Path, Path, Path]  # TSV shards 1/4 .. 4/4
    other_half: Path  # HDF5 shard 2/2 made with --max-boxes 8
    pair: Path  # one unsharded HDF5 run over astronaut and coffee only


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, photos: Path, tiny_checkpoint: Path) -> Runs:
    folder = tmp_path_factory.mktemp("runs")
    flags = ["--detector", tiny_checkpoint, "--device", "cpu", "--workers", 0, "-q"]
    assert extract(photos, "--out", folder / "ref.tsv", *flags) == 0
    for k in (1, 2):
        assert extract(photos, "--out", folder / "h.h5", "--shard", f"{k}/2", *flags) == 0
    for k in (1, 2, 3, 4):
        assert extract(photos, "--out", folder / "q.tsv", "--shard", f"{k}/4", *flags) == 0
    other = ["--shard", "2/2", "--max-boxes", 8]
    assert extract(photos, "--out", folder / "o.h5", *other, *flags) == 0
    pair = tmp_path_factory.mktemp("pair")
    for name in ("astronaut.jpg", "coffee.jpg"):
        shutil.copyfile(photos / name, pair / name)
    assert extract(pair, "--out", folder / "pair.h5", *flags) == 0
    return Runs(
        pair=folder / "pair.h5",
        reference=folder / "ref.tsv",
        halves=(folder / "h.shard-1-of-2.h5", folder / "h.shard-2-of-2.h5"),
        quarters=(
            folder / "q.shard-1-of-4.tsv",
            folder / "q.shard-2-of-4.tsv",
            folder / "q.shard-3-of-4.tsv",
            folder / "q.shard-4-of-4.tsv",
        ),
        other_half=folder / "o.shard-2-of-2.h5",
    )


def copy_output(source: Path, folder: Path, name: str | None = None) -> Path:
    """Copy a feature file and its manifest (when it has one) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (name or source.name)
    shutil.copyfile(source, target)
    if manifest_path(source).exists():
        shutil.copyfile(manifest_path(source), manifest_path(target))
    return target


def edit_manifest(output: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = read_manifest(manifest_path(output))
    change(data)
    manifest_path(output).write_text(json.dumps(data, indent=2))


def listing(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def refused(capsys: pytest.CaptureFixture[str], out_folder: Path, *args: object) -> str:
    """Run a merge that must be refused: exit 2, the folder untouched; returns stderr."""
    before = listing(out_folder)
    assert merge(*args) == 2
    assert listing(out_folder) == before  # no output, *.tmp, manifest or lock file
    return capsys.readouterr().err


# --- inputs whose run did not finish --------------------------------------------------------


def test_killed_hdf5_shard_with_a_journal_is_refused_then_merges_after_resume(
    runs: Runs, photos: Path, tiny_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    first, second = (copy_output(shard, tmp_path) for shard in runs.halves)
    # What a kill leaves: one record folded into the file, the next in the journal.
    records = list(read_features(second))
    write_h5(second, records[:1])
    journal = TsvWriter(journal_path(second), resume=False)
    journal.write(records[1])
    journal.close()
    edit_manifest(second, lambda data: data.update(status="running"))
    out = tmp_path / "merged" / "all.h5"
    out.parent.mkdir()
    err = refused(capsys, out.parent, first, second, "--out", out)
    assert str(second) in err and "journal" in err and "1 record(s)" in err
    assert "--resume" in err
    # A journal is refused even when the manifest says finished (killed while closing), and
    # without any manifest.
    edit_manifest(second, lambda data: data.update(status="finished"))
    assert "journal" in refused(capsys, out.parent, first, second, "--out", out)
    manifest_path(second).rename(tmp_path / "aside.json")
    assert "journal" in refused(capsys, out.parent, first, second, "--out", out)
    (tmp_path / "aside.json").rename(manifest_path(second))
    edit_manifest(second, lambda data: data.update(status="interrupted"))
    # The remedy the message names: finish it with --resume, then merge.
    flags = ["--detector", tiny_checkpoint, "--device", "cpu", "--workers", 0, "-q"]
    resume = ["--out", tmp_path / "h.h5", "--shard", "2/2", "--resume"]
    assert extract(photos, *resume, *flags) == 0
    assert not journal_path(second).exists()
    assert merge(first, second, "--out", out, "-q") == 0
    assert read_ids(out) == IDS
    for got, want in zip(read_features(out), read_features(runs.reference), strict=True):
        assert_same_region(got, want)


@pytest.mark.parametrize("status", ["running", "interrupted", "error"])
def test_unfinished_inputs_are_refused_naming_the_input(
    runs: Runs, tmp_path: Path, capsys, status: str
) -> None:
    shards = [copy_output(shard, tmp_path) for shard in runs.quarters]
    edit_manifest(shards[2], lambda data: data.update(status=status))
    if status == "running":  # a kill mid-write also leaves an incomplete last line
        with open(shards[2], "r+b") as stream:
            stream.truncate(shards[2].stat().st_size - 100)
    out = tmp_path / "out" / "all.tsv"
    out.parent.mkdir()
    err = refused(capsys, out.parent, *shards, "--out", out)
    assert f"merge input {shards[2]} is not finished" in err
    assert f'says "{status}"' in err and "Finish it first with --resume" in err


def test_finished_and_merged_inputs_merge_and_merge_again(runs: Runs, tmp_path: Path) -> None:
    shards = [copy_output(shard, tmp_path) for shard in runs.quarters]
    out = tmp_path / "all.tsv"
    assert merge(*shards, "--out", out, "-q") == 0
    assert out.read_bytes() == runs.reference.read_bytes()
    manifest = read_manifest(manifest_path(out))
    shard_settings = read_manifest(manifest_path(shards[0]))["settings"]
    assert manifest["status"] == "merged"
    assert manifest["settings"] == shard_settings
    assert manifest["shards"] == {"count": 4, "present": [1, 2, 3, 4]}
    assert manifest["missing_shards"] == []
    assert manifest["counts"] == {"records_in_output": 4, "failed": 0}
    for k, (shard, source) in enumerate(zip(shards, manifest["sources"], strict=True), 1):
        assert source["path"] == str(shard)
        assert source["sha256"] == hashlib.sha256(shard.read_bytes()).hexdigest()
        assert source["status"] == "finished"
        assert source["shard"] == {"count": 4, "indices": [k]}
        assert source["records"] == 1
    # A merged file is an input like any other, and keeps the settings.
    again = tmp_path / "again.h5"
    assert merge(out, "--out", again, "-q") == 0
    for got, want in zip(read_features(again), read_features(out), strict=True):
        assert_same_region(got, want)
    again_manifest = read_manifest(manifest_path(again))
    assert again_manifest["settings"] == shard_settings
    assert again_manifest["sources"][0]["status"] == "merged"
    assert again_manifest["shards"] == {"count": 4, "present": [1, 2, 3, 4]}


# --- shards -----------------------------------------------------------------------------------


def test_missing_shards_are_refused_unless_allow_partial(
    runs: Runs, tmp_path: Path, capsys
) -> None:
    one, two, three, four = (copy_output(shard, tmp_path) for shard in runs.quarters)
    out = tmp_path / "out" / "part.tsv"
    out.parent.mkdir()
    err = refused(capsys, out.parent, one, three, "--out", out)
    assert "shard(s) 2/4, 4/4 missing" in err and "--allow-partial" in err
    assert merge(one, three, "--out", out, "--allow-partial") == 0
    assert "shard(s) 2, 4 of 4 are missing" in capsys.readouterr().err
    manifest = read_manifest(manifest_path(out))
    assert manifest["missing_shards"] == [2, 4]
    assert manifest["shards"] == {"count": 4, "present": [1, 3]}
    assert read_ids(out) == [IDS[0], IDS[2]]
    # The partial merge and the shards it lacks make the whole run.
    whole = tmp_path / "out" / "whole.tsv"
    assert merge(two, out, four, "--out", whole, "-q") == 0
    assert whole.read_bytes() == runs.reference.read_bytes()
    assert read_manifest(manifest_path(whole))["missing_shards"] == []


def test_doubled_shards_and_shards_of_different_runs_are_refused(
    runs: Runs, tmp_path: Path, capsys
) -> None:
    quarters = [copy_output(shard, tmp_path) for shard in runs.quarters]
    twin = copy_output(runs.quarters[0], tmp_path / "elsewhere")
    out = tmp_path / "out" / "all.tsv"
    out.parent.mkdir()
    err = refused(capsys, out.parent, *quarters, twin, "--out", out)
    assert f"shard 1/4 is given twice: {quarters[0]} and {twin}" in err
    half = copy_output(runs.halves[0], tmp_path)
    err = refused(capsys, out.parent, half, quarters[1], "--out", out)
    assert f"{half} is one of 2 shards, {quarters[1]} one of 4" in err
    err = refused(capsys, out.parent, quarters[0], quarters[0], "--out", out)
    assert "is given twice" in err


# --- settings ---------------------------------------------------------------------------------


def test_inputs_made_with_other_settings_are_refused_naming_field_and_values(
    runs: Runs, tmp_path: Path, capsys
) -> None:
    first = copy_output(runs.halves[0], tmp_path)
    other = copy_output(runs.other_half, tmp_path)
    out = tmp_path / "out" / "all.h5"
    out.parent.mkdir()
    err = refused(capsys, out.parent, first, other, "--out", out)
    assert f"merge input {other} was made with other settings than {first}" in err
    assert "max_boxes (most boxes per image): 10 vs 8" in err
    assert "min_boxes" not in err  # only the fields that differ
    # A manifest from before settings were recorded: they are derived from its detector section
    # (as --resume does), so it merges when they agree and is refused when they do not.
    second = copy_output(runs.halves[1], tmp_path)
    edit_manifest(second, lambda data: data.pop("settings"))
    assert merge(first, second, "--out", out, "-q") == 0
    out.unlink()
    manifest_path(out).unlink()

    def older_with_other_boxes(data: dict) -> None:
        data["detector"]["config"]["max_boxes"] = 9

    edit_manifest(second, older_with_other_boxes)
    err = refused(capsys, out.parent, first, second, "--out", out)
    assert f"merge input {second}" in err and "max_boxes (most boxes per image): 10 vs 9" in err


# --- files without a manifest -----------------------------------------------------------------


def plain_tsv(path: Path, regions: list) -> Path:
    """An obj36 TSV written without a manifest, as LXMERT's own files are."""
    writer = TsvWriter(path, resume=False)
    for region in regions:
        writer.write(region)
    writer.close()
    return path


def test_plain_tsv_is_accepted_and_marked_as_without_settings(runs: Runs, tmp_path: Path) -> None:
    first = copy_output(runs.pair, tmp_path)
    others = [
        r for r in read_features(runs.reference) if r.image_id in ("cats/chelsea", "gray/camera")
    ]
    plain = plain_tsv(tmp_path / "lxmert.tsv", others)
    out = tmp_path / "all.tsv"
    assert merge(first, plain, "--out", out, "-q") == 0
    assert out.read_bytes() == runs.reference.read_bytes()
    manifest = read_manifest(manifest_path(out))
    assert manifest["settings"] == read_manifest(manifest_path(first))["settings"]
    source = manifest["sources"][1]
    assert source["path"] == str(plain) and source["status"] is None
    assert source["settings"] is None and source["note"] == "no recorded settings"
    assert source["sha256"] == hashlib.sha256(plain.read_bytes()).hexdigest()
    assert manifest["sources"][0]["settings"] == manifest["settings"]


def test_plain_tsv_with_other_dimension_or_box_counts_is_refused(
    runs: Runs, tmp_path: Path, capsys
) -> None:
    first = copy_output(runs.pair, tmp_path)
    out = tmp_path / "out" / "all.h5"
    out.parent.mkdir()
    narrow = plain_tsv(tmp_path / "narrow.tsv", [make_region("zebra", n=6, dim=16)])
    err = refused(capsys, out.parent, first, narrow, "--out", out)
    assert f"merge input {narrow} has 16-d features" in err and "128-d" in err
    crowded = plain_tsv(tmp_path / "crowded.tsv", [make_region("zebra", n=12, dim=128)])
    err = refused(capsys, out.parent, first, crowded, "--out", out)
    assert f"merge input {crowded} (no recorded settings) has 12..12 boxes" in err
    assert "5..10" in err
    # Without any manifest the dimensions must still agree, checked before writing.
    wide = plain_tsv(tmp_path / "wide.tsv", [make_region("yak", n=6, dim=128)])
    err = refused(capsys, out.parent, wide, narrow, "--out", out)
    assert "16-d" in err and "128-d" in err


def test_library_merge_of_mixed_dimensions_leaves_no_temporary_file(tmp_path: Path) -> None:
    wide = plain_tsv(tmp_path / "a.tsv", [make_region("a", n=3, dim=32)])
    narrow = plain_tsv(tmp_path / "b.tsv", [make_region("b", n=3, dim=16)])
    for out in (tmp_path / "dims.tsv", tmp_path / "dims.h5"):
        with pytest.raises(ValueError, match="16"):
            merge_outputs([wide, narrow], out)
        assert not out.exists()
    assert listing(tmp_path) == ["a.tsv", "b.tsv"]


# --- the merged manifest ----------------------------------------------------------------------


def test_failures_of_the_shards_are_kept_once(
    photos: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a JPEG")
    flags = ["--detector", tiny_checkpoint, "--device", "cpu", "--workers", 0, "-q"]
    codes = [
        extract(folder, "--out", tmp_path / "f.tsv", "--shard", f"{k}/2", *flags) for k in (1, 2)
    ]
    assert sorted(codes) == [0, 1]
    shards = [tmp_path / f"f.shard-{k}-of-2.tsv" for k in (1, 2)]
    out = tmp_path / "all.tsv"
    assert merge(*shards, "--out", out, "-q") == 0
    manifest = read_manifest(manifest_path(out))
    assert [f["image_id"] for f in manifest["failures"]] == ["broken"]
    assert manifest["counts"] == {"records_in_output": 4, "failed": 1}
    # A merged file merged again keeps each failure once.
    again = tmp_path / "again.tsv"
    assert merge(out, "--out", again, "-q") == 0
    assert [f["image_id"] for f in read_manifest(manifest_path(again))["failures"]] == ["broken"]


def test_overwrite_replaces_the_output_and_drops_its_stale_journal(
    runs: Runs, tmp_path: Path, capsys
) -> None:
    shards = [copy_output(shard, tmp_path) for shard in runs.halves]
    out = tmp_path / "out" / "all.h5"
    out.parent.mkdir()
    write_h5(out, [make_region("stale", n=6, dim=128)])
    plain_tsv(journal_path(out), [make_region("stale2", n=6, dim=128)])
    err = refused(capsys, out.parent, *shards, "--out", out)
    assert f"merge output {out} already exists; pass --overwrite" in err
    assert merge(*shards, "--out", out, "--overwrite", "-q") == 0
    assert read_ids(out) == IDS and not journal_path(out).exists()
    assert read_manifest(manifest_path(out))["status"] == "merged"


# --- messages ---------------------------------------------------------------------------------


def test_directories_manifests_and_missing_folders_are_named(
    runs: Runs, tmp_path: Path, capsys
) -> None:
    shard = copy_output(runs.quarters[0], tmp_path)
    out = tmp_path / "out" / "all.tsv"
    out.parent.mkdir()
    err = refused(capsys, out.parent, tmp_path, "--out", out)
    assert f"merge input {tmp_path} is a directory" in err
    err = refused(capsys, out.parent, manifest_path(shard), "--out", out)
    assert f"is a manifest; give the feature file {shard}" in err
    assert "unknown format" not in err
    missing = tmp_path / "no" / "such"
    err = refused(capsys, tmp_path, shard, "--out", missing / "all.tsv")
    assert f"merge output folder {missing} does not exist" in err
    assert not (tmp_path / "no").exists()
    err = refused(capsys, out.parent, shard, "--out", out.parent)
    assert f"merge output {out.parent} is a directory" in err
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(os.urandom(4096))
    err = refused(capsys, out.parent, garbage, "--out", out)
    assert f"merge input {garbage}: {garbage}: not an HDF5 file" in err


def test_unexpected_error_advises_v_and_v_prints_the_traceback(
    runs: Runs, tmp_path: Path, capsys, monkeypatch
) -> None:
    import pipeline.features.output

    def disk_fails(region: object) -> bytes:
        raise OSError(errno.EIO, "Input/output error")

    shards = [copy_output(shard, tmp_path) for shard in runs.quarters]
    out = tmp_path / "out" / "all.tsv"
    out.parent.mkdir()
    monkeypatch.setattr(pipeline.features.output, "encode_tsv_line", disk_fails)
    assert merge(*shards, "--out", out) == 4
    err = capsys.readouterr().err
    assert "Input/output error" in err and "(run with -v for the traceback)" in err
    assert "Traceback" not in err
    assert merge(*shards, "--out", out, "-v") == 4
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "disk_fails" in err
    assert "(run with -v" not in err
    # Nothing half-written: no output, no temporary file, no manifest, no lock file.
    assert listing(out.parent) == []


def test_python_m_of_the_merge_command_runs_the_same_command(runs: Runs, tmp_path: Path) -> None:
    shards = [copy_output(shard, tmp_path) for shard in runs.halves]
    out = tmp_path / "all.tsv"
    command = [
        sys.executable,
        "-m",
        "pipeline.commands.merge",
        *map(str, shards),
        "--out",
        str(out),
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "4 records from 2 files" in done.stderr
    assert out.read_bytes() == runs.reference.read_bytes()
    half = tmp_path / "half.tsv"
    refusal = subprocess.run(
        [sys.executable, "-m", "pipeline.commands.merge", str(shards[0]), "--out", str(half)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refusal.returncode == 2 and "shard(s) 2/2 missing" in refusal.stderr
    assert not half.exists()


def test_a_failed_overwrite_keeps_the_old_output_and_its_manifest(
    runs: Runs, tmp_path: Path, monkeypatch
) -> None:
    import pipeline.features.output

    shards = [copy_output(shard, tmp_path) for shard in runs.quarters]
    out = tmp_path / "all.tsv"
    assert merge(*shards, "--out", out, "-q") == 0
    before = (out.read_bytes(), manifest_path(out).read_bytes())
    real = pipeline.features.output.encode_tsv_line
    calls = {"n": 0}

    def fails_midway(region: object) -> bytes:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("I/O error while writing")
        return real(region)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline.features.output, "encode_tsv_line", fails_midway)
    assert merge(*shards, "--out", out, "--overwrite", "-q") == 4
    assert (out.read_bytes(), manifest_path(out).read_bytes()) == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
