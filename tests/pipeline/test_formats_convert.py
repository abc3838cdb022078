"""``extract_features convert``: every format written and read back, on real shapes-world
extractions (fixed and adaptive box counts), checked against readers written here from the
consumer projects' own layouts (LXMERT's load_obj_tsv, ban-vqa's dataset.py, MILVLG's npz,
UNITER's DetectFeatLmdb, pyarrow)."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from pipeline_helpers import lxmert_read_tsv

from pipeline.commands.extract import main
from pipeline.errors import EXIT_OK, EXIT_USAGE

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def extractions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real extractions of examples/ by the shipped shapes detector: the default box counts
    and an adaptive 10..100 run."""
    root = tmp_path_factory.mktemp("extractions")
    runs = {"fixed": [], "adaptive": ["--min-boxes", "10", "--max-boxes", "100"]}
    out = {}
    for name, flags in runs.items():
        target = root / f"{name}.tsv"
        argv = [str(REPO / "examples"), "--detector", "shapes-detector", "--out", str(target)]
        assert main([*argv, "-q", *flags]) == EXIT_OK
        out[name] = target
    return out


def convert(*args: object) -> int:
    return main(["convert", "-q", *(str(a) for a in args)])


def milvlg_read_npz(path: Path) -> dict:
    """How MILVLG's files are read by their users: np.load with pickles allowed (test only)."""
    with np.load(path, allow_pickle=True) as data:
        return {name: data[name] for name in data.files}


@pytest.mark.parametrize("kind", ["fixed", "adaptive"])
@pytest.mark.parametrize("fmt", ["h5", "npz-dir", "parquet"])
def test_tsv_through_a_lossless_format_and_back_is_byte_identical(
    extractions: dict[str, Path], tmp_path: Path, fmt: str, kind: str
) -> None:
    source = extractions[kind]
    middle, back = tmp_path / f"mid-{fmt}", tmp_path / "back.tsv"
    assert convert(source, "--to", fmt, middle) == EXIT_OK
    assert convert(middle, "--to", "tsv", back) == EXIT_OK
    assert back.read_bytes() == source.read_bytes()
    manifest = json.loads((tmp_path / f"mid-{fmt}.manifest.json").read_text())
    assert manifest["status"] == "converted" and manifest["format"] == fmt
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert manifest["sources"][0]["sha256"] == digest
    assert not list(tmp_path.glob(".*.tmp"))


def test_npz_dir_is_milvlg_layout(extractions: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "feats"
    assert convert(extractions["adaptive"], "--to", "npz-dir", out) == EXIT_OK
    for item in lxmert_read_tsv(extractions["adaptive"]):
        data = milvlg_read_npz(out / f"{item['img_id']}.npz")
        np.testing.assert_array_equal(data["x"], item["features"])
        np.testing.assert_array_equal(data["bbox"], item["boxes"])
        assert int(data["num_bbox"]) == item["num_boxes"] >= 10
        assert (int(data["image_h"]), int(data["image_w"])) == (item["img_h"], item["img_w"])
        info = data["info"].item()
        # MILVLG's argmax runs over all 1601 / 401 columns, background / "no attribute" at 0.
        np.testing.assert_array_equal(info["objects_id"], item["objects_id"] + 1)
        np.testing.assert_array_equal(info["attrs_id"], item["attrs_id"] + 1)
        np.testing.assert_array_equal(info["objects_conf"], item["objects_conf"])


def test_npz_dir_without_index_reads_sorted_and_float16(
    extractions: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "f16"
    assert convert(extractions["fixed"], "--to", "npz-dir", "--feature-dtype", "float16", out) == 0
    assert milvlg_read_npz(out / "scene_000.npz")["x"].dtype == np.float16
    (out / "index.txt").unlink()  # as MILVLG writes it: no order, sorted ids
    back = tmp_path / "back.tsv"
    assert convert(out, "--to", "tsv", back) == EXIT_OK
    original = lxmert_read_tsv(extractions["fixed"])
    again = lxmert_read_tsv(back)
    assert [a["img_id"] for a in again] == sorted(a["img_id"] for a in original)
    for a, b in zip(sorted(original, key=lambda r: r["img_id"]), again, strict=True):
        np.testing.assert_array_equal(b["features"], a["features"].astype(np.float16))
        np.testing.assert_array_equal(b["boxes"], a["boxes"])


def ban_spatial(boxes: np.ndarray, image_w: float, image_h: float) -> np.ndarray:
    """ban-vqa's tools/adaptive_detection_features_converter.py, restated."""
    box_width = boxes[:, 2] - boxes[:, 0]
    box_height = boxes[:, 3] - boxes[:, 1]
    scaled_width, scaled_height = box_width / image_w, box_height / image_h
    scaled_x, scaled_y = boxes[:, 0] / image_w, boxes[:, 1] / image_h
    return np.concatenate(
        [
            c[:, None]
            for c in (
                scaled_x,
                scaled_y,
                scaled_x + scaled_width,
                scaled_y + scaled_height,
                scaled_width,
                scaled_height,
            )
        ],
        axis=1,
    )


def test_ban_h5_is_ban_vqa_layout(extractions: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "train.hdf5"
    source = extractions["adaptive"]
    assert convert(source, "--to", "ban-h5", "--ban-ids", "trailing-digits", out) == 0
    with open(tmp_path / "train_imgid2idx.pkl", "rb") as stream:
        indices = pickle.load(stream)  # ban-vqa's own reading; our reader is restricted
    with h5py.File(out, "r") as hf:
        features, spatial = hf["image_features"][()], hf["spatial_features"][()]
        bb, pos = hf["image_bb"][()], hf["pos_boxes"][()]
    assert pos.dtype == np.int32
    for item in lxmert_read_tsv(source):
        index = indices[int(item["img_id"].rsplit("_", 1)[1])]
        start, end = pos[index]
        np.testing.assert_array_equal(features[start:end], item["features"])
        np.testing.assert_array_equal(bb[start:end], item["boxes"])
        expected = ban_spatial(item["boxes"], float(item["img_w"]), float(item["img_h"]))
        np.testing.assert_array_equal(spatial[start:end], expected)
    back = tmp_path / "back.tsv"
    assert convert(out, "--to", "tsv", back) == EXIT_OK
    for a, b in zip(lxmert_read_tsv(source), lxmert_read_tsv(back), strict=True):
        assert b["img_id"] == a["img_id"]  # through the id table
        assert (b["img_h"], b["img_w"]) == (a["img_h"], a["img_w"])  # recovered
        np.testing.assert_array_equal(b["features"], a["features"])
        assert (b["objects_id"] == -1).all() and (b["attrs_conf"] == 0).all()


def synthetic_tsv(path: Path, *, boxes: int, ids: list[str], dim: int = 16) -> None:
    """obj36 lines written here as LXMERT's generate_tsv.py does (csv.DictWriter, base64)."""
    import base64
    import csv

    rng = np.random.default_rng(0)
    fields = [
        "img_id",
        "img_h",
        "img_w",
        "objects_id",
        "objects_conf",
        "attrs_id",
        "attrs_conf",
        "num_boxes",
        "boxes",
        "features",
    ]
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=fields, delimiter="\t")
        for image_id in ids:
            xy = rng.uniform(0, 200, (boxes, 2)).astype(np.float32)
            box = np.concatenate([xy, xy + rng.uniform(1, 50, (boxes, 2))], 1).astype(np.float32)
            arrays = {
                "objects_id": rng.integers(0, 1600, boxes),
                "attrs_id": rng.integers(0, 400, boxes),
                "objects_conf": rng.random(boxes, np.float32),
                "attrs_conf": rng.random(boxes, np.float32),
                "boxes": box,
                "features": rng.random((boxes, dim), np.float32),
            }
            row = {
                k: base64.b64encode(np.ascontiguousarray(v).tobytes()).decode()
                for k, v in arrays.items()
            }
            writer.writerow(
                {"img_id": image_id, "img_h": 300, "img_w": 260, "num_boxes": boxes, **row}
            )


def test_ban_h5_36_fixed_layout(tmp_path: Path) -> None:
    source = tmp_path / "in.tsv"
    synthetic_tsv(source, boxes=36, ids=["42", "7", "1000"])
    out = tmp_path / "train36.hdf5"
    assert convert(source, "--to", "ban-h5-36", out) == EXIT_OK
    with open(tmp_path / "train36_imgid2idx.pkl", "rb") as stream:
        assert pickle.load(stream) == {42: 0, 7: 1, 1000: 2}
    with h5py.File(out, "r") as hf:
        assert hf["image_features"].shape == (3, 36, 16)
        assert hf["spatial_features"].shape == (3, 36, 6) and "pos_boxes" not in hf
        first = lxmert_read_tsv(source)[0]
        np.testing.assert_array_equal(hf["image_bb"][0], first["boxes"])
        np.testing.assert_array_equal(
            hf["spatial_features"][0], ban_spatial(first["boxes"], 260.0, 300.0)
        )


def test_refusals_leave_nothing(extractions: dict[str, Path], tmp_path: Path) -> None:
    source = extractions["fixed"]
    cases = [
        ("--to", "ban-h5", tmp_path / "a.hdf5"),  # ids scene_000 are not ints
        ("--to", "ban-h5-36", "--ban-ids", "trailing-digits", tmp_path / "b.hdf5"),  # not 36
        ("--to", "lmdb", "--feature-dtype", "float32", tmp_path / "c"),
        ("--to", "h5", tmp_path / "f.tsv"),  # would be read back as a TSV
        ("--to", "npz-dir", tmp_path / "g.parquet"),
        ("--to", "npz-dir", tmp_path / "convert.json"),  # the work folder's own record
    ]
    for flags in cases:
        assert convert(source, *flags) == EXIT_USAGE
    assert convert(source, source, "--to", "parquet", tmp_path / "d.parquet") == EXIT_USAGE
    copy = tmp_path / "copy.tsv"
    shutil.copy(source, copy)
    assert convert(source, copy, "--to", "parquet", tmp_path / "e.parquet") == EXIT_USAGE
    left = {p.name for p in tmp_path.iterdir()} - {"copy.tsv"}
    assert not {n for n in left if not n.endswith(".lock")}, left
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    assert convert(source, "--to", "npz-dir", "--overwrite", foreign) == EXIT_USAGE
    assert (foreign / "keep.txt").read_text() == "x"


def test_several_inputs_join_and_overwrite(extractions: dict[str, Path], tmp_path: Path) -> None:
    lines = extractions["fixed"].read_bytes().splitlines(keepends=True)
    first, second = tmp_path / "one.tsv", tmp_path / "two.tsv"
    first.write_bytes(b"".join(lines[:3]))
    second.write_bytes(b"".join(lines[3:]))
    out = tmp_path / "joined"
    assert convert(first, second, "--to", "npz-dir", out) == EXIT_OK
    assert convert(first, "--to", "npz-dir", out) == EXIT_USAGE  # exists
    assert convert(first, second, "--to", "npz-dir", "--overwrite", out) == EXIT_OK
    back = tmp_path / "back.tsv"
    assert main(["convert", "-q", str(out), "--to", "tsv", "-o", str(back)]) == EXIT_OK
    assert back.read_bytes() == b"".join(lines)
    assert len(json.loads((tmp_path / "joined.manifest.json").read_text())["sources"]) == 2


def uniter_get_dump(img_dir: Path, file_name: str, *, compress: bool) -> dict:
    """UNITER data/data.py DetectFeatLmdb.get_dump with its defaults, restated."""
    import lmdb
    import msgpack
    import msgpack_numpy

    suffix = "th0.2_max100_min10"
    name2nbb = json.loads((img_dir / f"nbb_{suffix}.json").read_text())
    db = f"feat_{suffix}" + ("_compressed" if compress else "")
    env = lmdb.open(str(img_dir / db), readonly=True, create=False, readahead=False)
    try:
        with env.begin(buffers=True) as txn:
            keys = json.loads(bytes(txn.get(b"__keys__")).decode("utf-8"))
            dump = bytes(txn.get(file_name.encode("utf-8")))
    finally:
        env.close()
    if compress:
        with io.BytesIO(dump) as reader:
            arrays = dict(np.load(reader, allow_pickle=True))
    else:
        arrays = msgpack.unpackb(dump, object_hook=msgpack_numpy.decode, raw=False)
    nbb = name2nbb[file_name]
    out = {
        k: (a.astype(np.float32) if a.dtype == np.float16 else a)[:nbb, ...]
        for k, a in arrays.items()
    }
    out["__keys__"] = keys
    return out


@pytest.mark.parametrize("fmt", ["lmdb", "lmdb-msgpack"])
def test_lmdb_is_uniter_layout(extractions: dict[str, Path], tmp_path: Path, fmt: str) -> None:
    pytest.importorskip("lmdb")
    source = extractions["adaptive"]
    out = tmp_path / "img_db"
    assert convert(source, "--to", fmt, out) == EXIT_OK
    items = lxmert_read_tsv(source)
    for item in items:
        dump = uniter_get_dump(out, f"{item['img_id']}.npz", compress=fmt == "lmdb")
        assert dump["__keys__"] == [f"{i['img_id']}.npz" for i in items]
        n = item["num_boxes"]
        np.testing.assert_array_equal(
            dump["features"], item["features"].astype(np.float16).astype(np.float32)
        )
        scale = np.array([item["img_w"], item["img_h"]] * 2, np.float32)
        norm = item["boxes"] / scale
        np.testing.assert_allclose(dump["norm_bb"][:, :4], norm, atol=1e-3)
        np.testing.assert_allclose(dump["norm_bb"][:, 4:], norm[:, 2:] - norm[:, :2], atol=1e-3)
        assert dump["soft_labels"].shape == (n, 1601)
        np.testing.assert_array_equal(dump["soft_labels"].argmax(1), item["objects_id"] + 1)
    back = tmp_path / "back.tsv"
    assert convert(out, "--to", "tsv", back) == EXIT_OK
    for a, b in zip(items, lxmert_read_tsv(back), strict=True):
        assert (b["img_h"], b["img_w"]) == (1, 1)
        np.testing.assert_array_equal(b["objects_id"], a["objects_id"])
        np.testing.assert_array_equal(b["attrs_id"], a["attrs_id"])
        np.testing.assert_array_equal(b["features"], a["features"].astype(np.float16))


def test_parquet_reads_with_pyarrow(extractions: dict[str, Path], tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "feats.parquet"
    source = extractions["adaptive"]
    assert convert(source, "--to", "parquet", "--feature-dtype", "float16", out) == EXIT_OK
    table = pq.read_table(out)
    assert table.column_names[:4] == ["img_id", "img_h", "img_w", "num_boxes"]
    rows = table.to_pylist()
    for item, row in zip(lxmert_read_tsv(source), rows, strict=True):
        assert row["img_id"] == item["img_id"] and row["num_boxes"] == item["num_boxes"]
        np.testing.assert_array_equal(np.array(row["boxes"], np.float32), item["boxes"])
        features = np.array(row["features"], np.float32)
        np.testing.assert_array_equal(features, item["features"].astype(np.float16))
        assert row["objects_id"] == item["objects_id"].tolist()


def test_restricted_unpickler_refuses_code(extractions: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "train.hdf5"
    assert (
        convert(extractions["fixed"], "--to", "ban-h5", "--ban-ids", "trailing-digits", out)
        == EXIT_OK
    )

    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("owned",))

    (tmp_path / "train_imgid2idx.pkl").write_bytes(pickle.dumps({Evil(): 0}))
    assert convert(out, "--to", "tsv", tmp_path / "x.tsv") == EXIT_USAGE
    assert not (tmp_path / "x.tsv").exists()


def test_input_named_like_the_command(
    extractions: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert convert(extractions["fixed"], "--to", "npz-dir", "convert") == EXIT_OK
    assert main(["convert", "-q", "./convert", "--to", "tsv", "back.tsv"]) == EXIT_OK
    assert (tmp_path / "back.tsv").read_bytes() == extractions["fixed"].read_bytes()


def test_a_converted_file_merges_and_an_unfinished_input_is_refused(
    extractions: dict[str, Path], tmp_path: Path
) -> None:
    lines = extractions["fixed"].read_bytes().splitlines(keepends=True)
    first, second = tmp_path / "one.tsv", tmp_path / "two.tsv"
    first.write_bytes(b"".join(lines[:3]))
    second.write_bytes(b"".join(lines[3:]))
    assert convert(first, "--to", "h5", tmp_path / "one.h5") == EXIT_OK
    merged = tmp_path / "all.tsv"
    assert main(["merge", "-q", str(tmp_path / "one.h5"), str(second), "--out", str(merged)]) == 0
    assert merged.read_bytes() == b"".join(lines)
    (tmp_path / "two.tsv.manifest.json").write_text(json.dumps({"status": "running"}))
    assert convert(second, "--to", "parquet", tmp_path / "two.parquet") == EXIT_USAGE
    assert not (tmp_path / "two.parquet").exists()


def test_npz_info_with_code_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "npz"
    folder.mkdir()

    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("owned",))

    info = np.empty((), dtype=object)
    info[()] = {"objects_id": Evil()}
    np.savez_compressed(
        folder / "1.npz",
        x=np.zeros((1, 4), np.float32),
        bbox=np.zeros((1, 4), np.float32),
        num_bbox=1,
        image_h=2,
        image_w=2,
        info=info,
    )
    assert convert(folder, "--to", "tsv", tmp_path / "out.tsv") == EXIT_USAGE
    assert not (tmp_path / "out.tsv").exists()
