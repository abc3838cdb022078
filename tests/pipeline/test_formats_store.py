"""FeatureStore.open reads every format of ``extract_features convert`` by id, in worker
processes too, and flags the lossy ones' fills as documented."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from pipeline_helpers import assert_same_region, lxmert_read_tsv
from test_formats_convert import convert, extractions, synthetic_tsv  # noqa: F401

from pipeline.errors import EXIT_OK
from pipeline.features.output import iter_tsv
from pipeline.features.store import FeatureStore

LOSSLESS = {"h5": "o.h5", "npz-dir": "o-npz", "parquet": "o.parquet", "tsv": "o.tsv"}


@pytest.mark.parametrize("fmt", sorted(LOSSLESS))
def test_store_reads_lossless_formats_by_id(
    extractions: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    fmt: str,
) -> None:
    source = extractions["adaptive"]
    out = tmp_path / LOSSLESS[fmt]
    assert convert(source, "--to", fmt, out) == EXIT_OK
    records = list(iter_tsv(source))
    with FeatureStore.open(out) as store:
        assert store.ids() == tuple(r.image_id for r in records)
        for record in reversed(records):  # random access, not file order
            assert_same_region(store.get(record.image_id), record)
        copy = pickle.loads(pickle.dumps(store))  # what a DataLoader worker receives
        assert_same_region(copy[0], records[0])
        copy.close()


def test_store_joins_formats_and_reads_lossy_ones(
    extractions: dict[str, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    source = extractions["fixed"]
    lines = source.read_bytes().splitlines(keepends=True)
    (tmp_path / "a.tsv").write_bytes(b"".join(lines[:4]))
    (tmp_path / "b.tsv").write_bytes(b"".join(lines[4:]))
    assert convert(tmp_path / "a.tsv", "--to", "lmdb", tmp_path / "db") == EXIT_OK
    digits = ("--ban-ids", "trailing-digits")
    assert convert(tmp_path / "b.tsv", "--to", "ban-h5", *digits, tmp_path / "b.hdf5") == 0
    items = {item["img_id"]: item for item in lxmert_read_tsv(source)}
    with FeatureStore.open(tmp_path / "db", tmp_path / "b.hdf5") as store:
        assert set(store.ids()) == set(items)
        for image_id, item in items.items():
            got = store.get(image_id)
            scale = np.array([item["img_w"], item["img_h"]] * 2, np.float32)
            np.testing.assert_allclose(got.normalized_boxes, item["boxes"] / scale, atol=1e-3)
            if image_id in {i.decode().split("\t")[0] for i in lines[:4]}:
                assert (got.image_h, got.image_w) == (1, 1)  # UNITER keeps no image size
                np.testing.assert_array_equal(got.objects_id, item["objects_id"])
                np.testing.assert_array_equal(
                    got.features, item["features"].astype(np.float16).astype(np.float32)
                )
            else:
                assert (got.image_h, got.image_w) == (item["img_h"], item["img_w"])
                assert (got.objects_id == -1).all()
                np.testing.assert_array_equal(got.features, item["features"])


def test_store_reads_milvlg_folder_without_index(tmp_path: Path) -> None:
    source = tmp_path / "in.tsv"
    synthetic_tsv(source, boxes=3, ids=["b", "a", "sub/c"])
    out = tmp_path / "npz"
    assert convert(source, "--to", "npz-dir", out) == EXIT_OK
    (out / "index.txt").unlink()
    with FeatureStore.open(out) as store:
        assert store.ids() == ("a", "b", "sub/c")
        assert store.get("sub/c").num_boxes == 3


def test_store_refuses_unknown_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither UNITER"):
        FeatureStore.open(tmp_path / "empty")
