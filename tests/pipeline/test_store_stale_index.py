"""A stale TSV index (issue 26, item 9): two equal-length records swapped and the file's
mtime restored. The index's edge hash sees a change near either end; a read that finds a line
not where the index says rebuilds the index once and retries; the error of a damaged record
is a FeatureDataError (the data's fault) naming file and line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch.utils.data
from pipeline_helpers import assert_same_region, make_region

from detector.structures import RegionFeatures
from pipeline.commands.finetune.data_errors import data_error_text
from pipeline.features.fingerprint import EDGE_BYTES, fingerprint
from pipeline.features.output import encode_tsv_line
from pipeline.features.store import FeatureDataError, FeatureStore


@pytest.fixture(autouse=True)
def user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private $XDG_CACHE_HOME, so that no test writes to the real one."""
    cache = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


def _write(path: Path, regions: list[RegionFeatures]) -> list[bytes]:
    lines = [encode_tsv_line(r) for r in regions]
    path.write_bytes(b"".join(lines))
    return lines


def _swap_keeping_the_stamp(path: Path, lines: list[bytes], a: int, b: int) -> None:
    """Swap lines ``a`` and ``b`` (equal length) in place and restore the file's mtime."""
    assert len(lines[a]) == len(lines[b])
    stat = path.stat()
    swapped = list(lines)
    swapped[a], swapped[b] = lines[b], lines[a]
    path.write_bytes(b"".join(swapped))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)


def test_the_reported_swap_is_read_right_when_opened_again(tmp_path: Path) -> None:
    regions = [make_region(f"seed-{i}", n=3, dim=16, seed=i) for i in range(3)]
    path = tmp_path / "f.tsv"
    lines = _write(path, regions)
    FeatureStore.open(path).close()  # indexes it
    _swap_keeping_the_stamp(path, lines, 1, 2)
    with FeatureStore.open(path) as store:
        assert store.ids() == ("seed-0", "seed-2", "seed-1")
        assert_same_region(store.get("seed-1"), regions[1])


def test_a_swap_seen_by_a_read_rebuilds_the_index_once(tmp_path: Path) -> None:
    regions = [make_region(f"seed-{i}", n=3, dim=16, seed=i) for i in range(3)]
    path = tmp_path / "f.tsv"
    lines = _write(path, regions)
    with FeatureStore.open(path) as by_id, FeatureStore.open(path) as by_position:
        _swap_keeping_the_stamp(path, lines, 1, 2)  # while the stores are open
        assert_same_region(by_id.get("seed-1"), regions[1])
        assert by_id.ids() == ("seed-0", "seed-2", "seed-1")
        assert_same_region(by_position[1], regions[1])  # position 1 was seed-1 when opened
        assert_same_region(by_position[1], regions[2])  # and is seed-2 now


def test_a_swap_in_the_middle_of_a_large_file_is_found_and_fixed(tmp_path: Path) -> None:
    # Records of 36 x 512 features (~100 KB each): the swapped ones lie past both hashed ends.
    regions = [make_region(f"seed-{i}", n=36, dim=512, seed=i) for i in range(6)]
    path = tmp_path / "f.tsv"
    lines = _write(path, regions)
    before = fingerprint(path)
    FeatureStore.open(path).close()
    _swap_keeping_the_stamp(path, lines, 2, 3)
    assert len(lines[0]) > EDGE_BYTES and fingerprint(path) == before  # the stamp cannot tell
    with FeatureStore.open(path) as store:
        assert_same_region(store.get("seed-2"), regions[2])
    index = path.with_name("f.tsv.index")
    written = index.stat().st_mtime_ns
    with FeatureStore.open(path) as store:  # the rebuilt index was saved: right at once
        assert store.ids() == ("seed-0", "seed-1", "seed-3", "seed-2", "seed-4", "seed-5")
        assert_same_region(store.get("seed-3"), regions[3])
    assert index.stat().st_mtime_ns == written


def test_a_damaged_record_is_a_data_error_naming_file_and_line(tmp_path: Path) -> None:
    regions = [make_region(f"seed-{i}", n=3, dim=16, seed=i) for i in range(3)]
    path = tmp_path / "f.tsv"
    lines = _write(path, regions)
    fields = lines[1].split(b"\t")
    fields[9] = b"!" + fields[9][1:]  # right length, not base64
    path.write_bytes(b"".join([lines[0], b"\t".join(fields), lines[2]]))
    with FeatureStore.open(path) as store, pytest.raises(FeatureDataError, match=r"f\.tsv:2: bad"):
        store.get("seed-1")


def test_a_damaged_record_read_by_a_dataloader_worker_keeps_its_message(tmp_path: Path) -> None:
    regions = [make_region(f"seed-{i}", n=3, dim=16, seed=i) for i in range(3)]
    path = tmp_path / "f.tsv"
    lines = _write(path, regions)
    fields = lines[2].split(b"\t")
    fields[9] = b"!" + fields[9][1:]
    path.write_bytes(b"".join([lines[0], lines[1], b"\t".join(fields)]))
    store = FeatureStore.open(path)
    loader = torch.utils.data.DataLoader(store, batch_size=1, num_workers=1, collate_fn=list)
    with pytest.raises(FeatureDataError) as caught:
        list(loader)
    assert "DataLoader worker" in str(caught.value)  # the worker's traceback in its text
    assert data_error_text(caught.value).startswith(f"{path}:3: bad base64")
