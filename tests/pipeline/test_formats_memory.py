"""Conversion and reading hold a bounded number of records, whatever the file's size: the
peak of traced allocations (numpy's arrays are traced) while converting and reading a store
of 300 records exceeds that of a store of 100 by less than 20 records' worth (loading the
file would add 200). Imports are done by a first, untraced conversion."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
from test_formats_convert import convert, synthetic_tsv

from pipeline.errors import EXIT_OK
from pipeline.features.store import FeatureStore

BOXES, DIM = 36, 512
RECORD_BYTES = BOXES * DIM * 4


@pytest.fixture(scope="module")
def tsvs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("sizes")
    paths = {}
    for count in (3, 100, 300):
        paths[count] = root / f"in{count}.tsv"
        synthetic_tsv(paths[count], boxes=BOXES, ids=[str(i) for i in range(count)], dim=DIM)
    return paths


def peaks(source: Path, out: Path, fmt: str) -> tuple[int, int]:
    """Peak traced bytes while converting ``source`` to ``out``, and while reading it all."""
    tracemalloc.start()
    try:
        assert convert(source, "--to", fmt, out) == EXIT_OK
        _, converting = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with FeatureStore.open(out) as store:
            for index in range(len(store)):
                store[index]
        _, reading = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return converting, reading


@pytest.mark.parametrize(
    ("fmt", "suffix"),
    [
        ("h5", ".h5"),
        ("npz-dir", ""),
        ("parquet", ".parquet"),
        ("ban-h5", ".hdf5"),
        ("lmdb-msgpack", ""),
    ],
)
def test_memory_is_flat_in_the_file_size(
    tsvs: dict[int, Path], tmp_path: Path, fmt: str, suffix: str
) -> None:
    if fmt.startswith("lmdb"):
        pytest.importorskip("lmdb")
    peaks(tsvs[3], tmp_path / f"warm{suffix}", fmt)  # imports, outside the comparison
    small = peaks(tsvs[100], tmp_path / f"small{suffix}", fmt)
    large = peaks(tsvs[300], tmp_path / f"large{suffix}", fmt)
    for what, a, b in zip(("converting", "reading"), small, large, strict=True):
        growth = (b - a) / RECORD_BYTES
        assert growth < 20, f"{what}: 200 more records held {growth:.0f} more in memory"
