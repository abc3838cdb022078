"""Feature files: the obj36 TSV against an independent LXMERT-style reader, the HDF5 layout read
with plain h5py, resume after damage, merging, and real SIGKILLs of a writing process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from pipeline_helpers import assert_same_region, lxmert_read_tsv, make_region

from pipeline.features.output import (
    H5Writer,
    TsvWriter,
    encode_tsv_line,
    journal_path,
    merge_outputs,
    open_writer,
    read_features,
    read_ids,
    write_h5,
)

REPO = Path(__file__).resolve().parents[2]


def regions(count: int, *, start: int = 0, n: int = 5, dim: int = 16) -> list:
    return [make_region(f"img{i:03d}", n=n, dim=dim, seed=i) for i in range(start, start + count)]


def test_tsv_reads_back_with_lxmert_reader_bit_exact(tmp_path: Path) -> None:
    out = tmp_path / "f.tsv"
    written = [*regions(3), make_region('dir/with "quote"', n=2, seed=9)]
    writer = TsvWriter(out, resume=False)
    for region in written:
        writer.write(region)
    writer.close()
    raw = out.read_bytes()
    assert raw.count(b"\r\n") == 4 and raw.endswith(b"\r\n")
    assert not raw.startswith(b"img_id")  # no header
    items = lxmert_read_tsv(out)
    assert [item["img_id"] for item in items] == [r.image_id for r in written]
    for item, region in zip(items, written, strict=True):
        assert (item["img_h"], item["img_w"], item["num_boxes"]) == (60, 80, region.num_boxes)
        for name in ("boxes", "features", "objects_id", "objects_conf", "attrs_id", "attrs_conf"):
            assert item[name].dtype == getattr(region, name).dtype
            np.testing.assert_array_equal(item[name], getattr(region, name))
    for got, want in zip(read_features(out), written, strict=True):
        assert_same_region(got, want)


def test_tsv_resume_cuts_a_partial_last_line(tmp_path: Path) -> None:
    out = tmp_path / "f.tsv"
    first = regions(3)
    out.write_bytes(b"".join(encode_tsv_line(r) for r in first))
    with open(out, "ab") as stream:
        stream.write(encode_tsv_line(make_region("img003", seed=3))[:-100])
    with pytest.raises(ValueError, match="incomplete last record"):
        read_ids(out)
    writer = TsvWriter(out, resume=True)
    assert writer.existing_ids() == {"img000", "img001", "img002"}
    writer.write(make_region("img003", seed=3))
    writer.close()
    for got, want in zip(read_features(out), regions(4), strict=True):
        assert_same_region(got, want)
    assert len(lxmert_read_tsv(out)) == 4


def test_tsv_resume_cuts_a_complete_but_undecodable_last_line(tmp_path: Path) -> None:
    out = tmp_path / "f.tsv"
    line = encode_tsv_line(make_region("img001", seed=1))
    broken = line[:200] + b"!" + line[201:]  # same length, invalid base64
    out.write_bytes(encode_tsv_line(make_region("img000")) + broken)
    writer = TsvWriter(out, resume=True)
    assert writer.existing_ids() == {"img000"}
    writer.close()
    assert read_ids(out) == ["img000"]


def test_tsv_damage_in_the_middle_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "f.tsv"
    lines = [encode_tsv_line(r) for r in regions(3)]
    out.write_bytes(lines[0] + b"garbage\r\n" + lines[2])
    before = out.read_bytes()
    with pytest.raises(ValueError, match="not written by a killed run"):
        TsvWriter(out, resume=True)
    assert out.read_bytes() == before


def read_h5_plain(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """The documented layout, read with h5py only."""
    out = {}
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "lxmert-pipeline/regions"
        for i, image_id in enumerate(f["img_id"].asstr()[()]):
            start, n = f["box_offset"][i], f["num_boxes"][i]
            record = {
                name: f[name][start : start + n]
                for name in ("boxes", "features", "objects_id", "objects_conf", "attrs_id")
            }
            record["hw"] = np.array([f["img_h"][i], f["img_w"][i]])
            out[str(image_id)] = record
    return out


def test_h5_round_trip_and_plain_layout(tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    written = [*regions(3), make_region("sub/x", n=1, seed=7), *regions(2, start=3, n=8)]
    assert write_h5(out, written) == 6
    plain = read_h5_plain(out)
    assert list(plain) == [r.image_id for r in written]
    for region in written:
        np.testing.assert_array_equal(plain[region.image_id]["features"], region.features)
        np.testing.assert_array_equal(plain[region.image_id]["boxes"], region.boxes)
        np.testing.assert_array_equal(plain[region.image_id]["hw"], [60, 80])
    for got, want in zip(read_features(out), written, strict=True):
        assert_same_region(got, want)


def test_h5_writer_file_is_always_a_complete_prefix(tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    written = regions(9)
    writer = open_writer(out, mode="create", fold_min=2)
    for count, region in enumerate(written, start=1):
        writer.write(region)
        in_file = read_ids(out) if out.exists() else []
        assert in_file == [r.image_id for r in written[: len(in_file)]]
        journal = read_ids(journal_path(out))
        assert in_file + journal == [r.image_id for r in written[:count]]
    writer.close()
    assert not journal_path(out).exists()
    for got, want in zip(read_features(out), written, strict=True):
        assert_same_region(got, want)


def test_h5_resume_after_abandoned_writer(tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    writer = H5Writer(out, resume=False, fold_min=2)
    for region in regions(5):
        writer.write(region)
    # As if killed: the journal holds one record, the file four; and a stale tmp from a fold.
    stale = out.with_name(".f.h5.999.0123dead.tmp")  # weights.files.atomic_path's naming
    stale.write_bytes(b"half a file")
    theirs = out.with_name(".f.h5.notes.tmp")  # matches a loose glob, but is not ours
    theirs.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="--resume"):
        open_writer(out, mode="create")
    resumed = open_writer(out, mode="resume", fold_min=2)
    assert resumed.existing_ids() == {f"img{i:03d}" for i in range(5)}
    for region in regions(3, start=5):
        resumed.write(region)
    resumed.close()
    assert not stale.exists()
    assert theirs.read_bytes() == b"keep me"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == [theirs.name]
    for got, want in zip(read_features(out), regions(8), strict=True):
        assert_same_region(got, want)


def test_merge_interleaves_by_id_and_refuses_overlap(tmp_path: Path) -> None:
    everything = regions(7)
    parts = [tmp_path / "a.tsv", tmp_path / "b.h5", tmp_path / "c.tsv"]
    for k, part in enumerate(parts):
        writer = open_writer(part, mode="create")
        for region in everything[k::3]:
            writer.write(region)
        writer.close()
    for target in (tmp_path / "all.tsv", tmp_path / "all.h5"):
        assert merge_outputs(parts, target) == 7
        for got, want in zip(read_features(target), everything, strict=True):
            assert_same_region(got, want)
    with pytest.raises(FileExistsError):
        merge_outputs(parts, tmp_path / "all.tsv")
    with pytest.raises(ValueError, match="img000"):
        merge_outputs([parts[0], tmp_path / "all.tsv"], tmp_path / "again.tsv")


WRITER_SCRIPT = """
import sys
sys.path[:0] = [{repo!r}, {tests!r}]
from pipeline_helpers import make_region
from pipeline.features.output import open_writer
outs, total = sys.argv[1:3], int(sys.argv[3])
writers = [open_writer(out, mode="resume", fold_min=3) for out in outs]
done = [writer.existing_ids() for writer in writers]
for i in range(total):
    for writer, ids in zip(writers, done):
        if f"img{{i:03d}}" not in ids:
            writer.write(make_region(f"img{{i:03d}}", n=4, dim=64, seed=i))
    print(i, flush=True)
for writer in writers:
    writer.close()
print("closed", flush=True)
"""


def test_sigkill_at_random_moments_then_resume(tmp_path: Path) -> None:
    # One process writes a TSV and an HDF5 file side by side (interpreter start-up is slow).
    outs = [tmp_path / "f.tsv", tmp_path / "f.h5"]
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT.format(repo=str(REPO), tests=str(Path(__file__).parent)))
    total = 40
    command = [sys.executable, str(script), *map(str, outs), str(total)]
    rng = np.random.default_rng(0)
    for _ in range(2):
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        proc.stdout.readline()  # it has written at least one record
        time.sleep(float(rng.uniform(0.0, 0.05)))
        proc.kill()
        proc.wait()
        proc.stdout.close()
        # Whatever the moment, the outputs are valid: complete records, in order.
        if outs[1].exists():
            ids = [r.image_id for r in read_features(outs[1])]
            assert ids == [f"img{i:03d}" for i in range(len(ids))]
        if outs[0].exists():  # an LXMERT reader sees complete lines (a partial one at most last)
            items = lxmert_read_tsv(outs[0]) if outs[0].read_bytes().endswith(b"\n") else []
            assert [item["img_id"] for item in items] == [f"img{i:03d}" for i in range(len(items))]
    finished = subprocess.run(command, capture_output=True, text=True, check=True)
    assert finished.stdout.strip().endswith("closed")
    expected = [make_region(f"img{i:03d}", n=4, dim=64, seed=i) for i in range(total)]
    for out in outs:
        got = list(read_features(out))
        assert [r.image_id for r in got] == [r.image_id for r in expected]
        for a, b in zip(got, expected, strict=True):
            assert_same_region(a, b)


def test_pipeline_writers_re_exports_the_format_modules_names() -> None:
    # The TSV codec and the HDF5 layout moved to pipeline.features.formats.tsv / .h5 (issue 28);
    # every name other modules import from pipeline.features.output is still there, and is the same
    # object.
    import pipeline.features.formats.h5
    import pipeline.features.formats.tsv
    import pipeline.features.output

    for name in pipeline.features.output.__all__:
        value = getattr(pipeline.features.output, name)
        for module in (pipeline.features.formats.tsv, pipeline.features.formats.h5):
            if hasattr(module, name):
                assert getattr(module, name) is value, name
    assert pipeline.features.output.TsvWriter is pipeline.features.formats.tsv.TsvWriter
    assert pipeline.features.output.H5_LAYOUT is pipeline.features.formats.h5.H5_LAYOUT
