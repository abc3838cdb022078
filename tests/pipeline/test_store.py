"""FeatureStore: random access against the writers' sequential readers, on files written by the
real writers; the TSV index (cached, rebuilt on change, read-only folders); joined files;
DataLoader workers; flat memory measured in a fresh interpreter."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.utils.data
from pipeline_helpers import assert_same_region, make_region

import pipeline
import pipeline.features.index as tsv_index
from detector.structures import RegionFeatures
from pipeline.features.output import (
    TsvWriter,
    encode_tsv_line,
    journal_path,
    read_features,
    read_ids,
    write_h5,
)
from pipeline.features.store import FeatureStore

REPO = Path(__file__).resolve().parents[2]


def records(prefix: str, count: int, *, seed: int = 0) -> list[RegionFeatures]:
    """Varied records: box counts 0..6, one id with a double quote (csv quotes it)."""
    out = [make_region(f"{prefix}{i:03d}", n=i % 7, dim=16, seed=seed + i) for i in range(count)]
    out.append(make_region(f'{prefix}/with "quote"', n=3, dim=16, seed=seed + count))
    return out


def write_tsv(path: Path, regions: list[RegionFeatures]) -> Path:
    writer = TsvWriter(path, resume=False)
    for region in regions:
        writer.write(region)
    writer.close()
    return path


def write_file(path: Path, regions: list[RegionFeatures]) -> Path:
    if path.suffix == ".tsv":
        return write_tsv(path, regions)
    write_h5(path, regions, feature_dim=16)
    return path


def tsv_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


@pytest.fixture
def user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private $XDG_CACHE_HOME, so that no test writes to the real one."""
    cache = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache / "lxmert-pipeline" / "index"


# --- random access equals sequential reading -----------------------------------------------


@pytest.mark.parametrize("name", ["f.tsv", "f.h5"])
def test_random_access_equals_sequential_reading(
    tmp_path: Path, user_cache: Path, name: str
) -> None:
    path = write_file(tmp_path / name, records("img", 20))
    sequential = list(read_features(path))
    with FeatureStore.open(path) as store:
        assert len(store) == len(sequential) == 21
        assert store.ids() == tuple(read_ids(path))
        order = list(range(len(sequential)))
        random.Random(0).shuffle(order)
        for index in order:
            assert_same_region(store[index], sequential[index])
        for region in sequential:
            assert region.image_id in store
            assert_same_region(store.get(region.image_id), region)
        assert_same_region(store[-1], sequential[-1])
        assert_same_region(store[np.int64(4)], sequential[4])
        with pytest.raises(IndexError):
            store[21]
        with pytest.raises(IndexError):
            store[-22]
        assert "missing" not in store and 3 not in store
        with pytest.raises(KeyError, match=rf"'missing'.*{name}"):
            store.get("missing")


def test_an_lxmert_tsv_with_lf_line_ends_and_an_empty_file(
    tmp_path: Path, user_cache: Path
) -> None:
    # Another tool's obj36 TSV: the same fields, "\n" line ends.
    regions = records("lf", 5)
    path = tmp_path / "lf.tsv"
    path.write_bytes(b"".join(encode_tsv_line(r).replace(b"\r\n", b"\n") for r in regions))
    with FeatureStore.open(path) as store:
        assert store.ids() == tuple(r.image_id for r in regions)
        for index, region in enumerate(read_features(path)):
            assert_same_region(store[index], region)
        assert_same_region(store.get("lf003"), regions[3])
    empty = tmp_path / "empty.tsv"
    empty.write_bytes(b"")
    with FeatureStore.open(empty) as store:
        assert len(store) == 0 and store.ids() == ()


def test_incomplete_last_line_is_not_a_record(tmp_path: Path, user_cache: Path) -> None:
    regions = records("img", 4)
    path = write_tsv(tmp_path / "killed.tsv", regions)
    extra = encode_tsv_line(make_region("cut", n=4, dim=16, seed=99))
    for cut in (len(extra) // 2, len(extra) - 1):  # mid-record; between "\r" and "\n"
        with open(path, "ab") as stream:
            stream.write(extra[:cut])
        with FeatureStore.open(path) as store:
            assert store.ids() == tuple(r.image_id for r in read_features(path))
            assert "cut" not in store
            assert_same_region(store[-1], regions[-1])
        with open(path, "r+b") as stream:
            stream.truncate(path.stat().st_size - cut)


# --- corrupt lines --------------------------------------------------------------------------


def test_a_broken_line_is_an_error_naming_file_and_line(tmp_path: Path, user_cache: Path) -> None:
    path = write_tsv(tmp_path / "broken.tsv", records("img", 4))
    lines = tsv_lines(path)
    lines[2] = lines[2].replace(b"\t", b" ", 1)  # nine fields instead of ten
    path.write_bytes(b"".join(lines))
    with pytest.raises(ValueError, match=r"broken\.tsv:3: line 3 is not a complete"):
        FeatureStore.open(path)


def test_bad_base64_is_an_error_naming_file_and_line(tmp_path: Path, user_cache: Path) -> None:
    regions = records("img", 4)
    path = write_tsv(tmp_path / "bad.tsv", regions)
    lines = tsv_lines(path)
    fields = lines[1].split(b"\t")
    fields[9] = b"!" + fields[9][1:]  # right length, not base64: found only when decoded
    lines[1] = b"\t".join(fields)
    path.write_bytes(b"".join(lines))
    with FeatureStore.open(path) as store:
        with pytest.raises(ValueError, match=r"bad\.tsv:2: bad base64"):
            store[1]
        with pytest.raises(ValueError, match=r"bad\.tsv:2: bad base64"):
            store.get("img001")
        assert_same_region(store[2], regions[2])


# --- the TSV index ----------------------------------------------------------------------------


def read_header(index_file: Path) -> tuple[int, int, int]:
    """(TSV size, TSV mtime_ns, record count) from an index file, read independently."""
    magic, version, _, size, mtime_ns, count, _, _ = struct.unpack(
        "<8sIIqqqq32s", index_file.read_bytes()[:80]
    )
    assert (magic, version) == (b"LXFSIDX\0", 2)
    return size, mtime_ns, count


def forbid_scanning(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_scan(path: object) -> None:
        raise AssertionError(f"{path} was scanned again")

    monkeypatch.setattr(tsv_index, "scan_tsv", no_scan)


def test_index_is_cached_beside_the_file_and_reused(
    tmp_path: Path, user_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    regions = records("img", 6)
    path = write_tsv(tmp_path / "f.tsv", regions)
    FeatureStore.open(path).close()
    index_file = tmp_path / "f.tsv.index"
    stat = path.stat()
    assert read_header(index_file) == (stat.st_size, stat.st_mtime_ns, 7)
    written = index_file.stat()
    with monkeypatch.context() as patch:
        forbid_scanning(patch)
        with FeatureStore.open(path) as store:
            assert store.ids() == tuple(r.image_id for r in regions)
            assert_same_region(store[5], regions[5])
    assert index_file.stat().st_mtime_ns == written.st_mtime_ns
    assert not user_cache.exists()


def test_index_is_rebuilt_when_the_file_changes(tmp_path: Path, user_cache: Path) -> None:
    regions = records("img", 5)
    path = write_tsv(tmp_path / "f.tsv", regions)
    FeatureStore.open(path).close()
    # Appended by a resumed run: size and mtime change.
    added = make_region("added", n=2, dim=16, seed=50)
    writer = TsvWriter(path, resume=True)
    writer.write(added)
    writer.close()
    with FeatureStore.open(path) as store:
        assert store.ids()[-1] == "added" and len(store) == 7
        assert_same_region(store.get("added"), added)
    assert read_header(tmp_path / "f.tsv.index")[0] == path.stat().st_size
    # Same size, another id, a later mtime: only the mtime tells.
    data = path.read_bytes()
    path.write_bytes(data.replace(b"added\t", b"addex\t"))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with FeatureStore.open(path) as store:
        assert "addex" in store and "added" not in store
        assert store.get("addex").image_id == "addex"


def test_an_edit_with_the_same_size_and_mtime_is_seen_by_the_edge_hash(
    tmp_path: Path, user_cache: Path
) -> None:
    path = write_tsv(tmp_path / "f.tsv", records("img", 4))
    FeatureStore.open(path).close()
    stat = path.stat()
    lines = tsv_lines(path)
    path.write_bytes(b"".join(lines).replace(b"img001\t", b"imgXYZ\t"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # size and mtime as indexed
    with FeatureStore.open(path) as store:
        assert "img001" not in store  # the first 64 KiB changed: indexed again
        assert store.get("imgXYZ").image_id == "imgXYZ"


def test_read_only_folder_puts_the_index_in_the_user_cache(
    tmp_path: Path, user_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "readonly"
    folder.mkdir()
    regions = records("img", 3)
    path = write_tsv(folder / "f.tsv", regions)
    real_write = tsv_index.atomic_write_bytes

    def write_unless_read_only(target: Path, data: bytes) -> Path:
        # root ignores the folder's mode; refuse as the kernel would for anyone else.
        if Path(target).parent == folder:
            raise PermissionError(13, "Permission denied", str(target))
        return real_write(target, data)

    monkeypatch.setattr(tsv_index, "atomic_write_bytes", write_unless_read_only)
    folder.chmod(0o555)
    try:
        FeatureStore.open(path).close()
        assert not (folder / "f.tsv.index").exists()
        key = hashlib.sha256(os.path.realpath(path).encode()).hexdigest()
        assert read_header(user_cache / key)[2] == 4
        with monkeypatch.context() as patch:
            forbid_scanning(patch)
            with FeatureStore.open(path) as store:
                assert_same_region(store[2], regions[2])
        # An explicit cache_dir is used the same way.
        FeatureStore.open(path, cache_dir=tmp_path / "mine").close()
        assert read_header(tmp_path / "mine" / key)[2] == 4
    finally:
        folder.chmod(0o755)


def test_a_foreign_file_named_like_the_index_is_left_alone(
    tmp_path: Path, user_cache: Path
) -> None:
    path = write_tsv(tmp_path / "f.tsv", records("img", 2))
    foreign = tmp_path / "f.tsv.index"
    foreign.write_text("the user's notes\n")
    with FeatureStore.open(path) as store:
        assert len(store) == 3
    assert foreign.read_text() == "the user's notes\n"
    assert len(list(user_cache.iterdir())) == 1


def test_no_writable_place_keeps_the_index_in_memory(
    tmp_path: Path, user_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    regions = records("img", 3)
    path = write_tsv(tmp_path / "f.tsv", regions)

    def refuse(target: Path, data: bytes) -> Path:
        raise OSError(28, "No space left on device", str(target))

    monkeypatch.setattr(tsv_index, "atomic_write_bytes", refuse)
    with FeatureStore.open(path) as store:
        assert_same_region(store[1], regions[1])
    assert not (tmp_path / "f.tsv.index").exists()


# --- joined files -----------------------------------------------------------------------------


def test_shards_and_formats_can_be_joined(tmp_path: Path, user_cache: Path) -> None:
    shards = [
        write_file(tmp_path / "s0.tsv", records("a", 4, seed=0)),
        write_file(tmp_path / "s1.h5", records("b", 3, seed=10)),
        write_file(tmp_path / "s2.tsv", records("c", 5, seed=20)),
    ]
    sequential = [region for shard in shards for region in read_features(shard)]
    with FeatureStore.open(*shards) as store:
        assert store.paths == tuple(shards)
        assert store.ids() == tuple(r.image_id for r in sequential)
        for index in random.Random(1).sample(range(len(sequential)), len(sequential)):
            assert_same_region(store[index], sequential[index])
        assert_same_region(store.get("b002"), sequential[5 + 2])


def test_an_id_in_two_files_is_an_error_naming_both(tmp_path: Path, user_cache: Path) -> None:
    first = write_tsv(tmp_path / "train.tsv", records("x", 3))
    second = write_file(tmp_path / "val.h5", [make_region("x001", n=2, dim=16)])
    with pytest.raises(ValueError, match=r"'x001' is in .*train\.tsv:2 and in .*val\.h5"):
        FeatureStore.open(first, second)
    doubled = tmp_path / "doubled.tsv"
    doubled.write_bytes(first.read_bytes() + encode_tsv_line(make_region("x000")))
    with pytest.raises(ValueError, match=r"doubled\.tsv:1 and in .*doubled\.tsv:5"):
        FeatureStore.open(doubled)


def test_refused_inputs(tmp_path: Path, user_cache: Path) -> None:
    with pytest.raises(ValueError, match="at least one"):
        FeatureStore.open()
    with pytest.raises(ValueError, match="unknown format"):
        FeatureStore.open(tmp_path / "f.npz")
    with pytest.raises(FileNotFoundError):
        FeatureStore.open(tmp_path / "absent.tsv")
    h5 = write_file(tmp_path / "f.h5", records("img", 2))
    journal_path(h5).write_bytes(b"")
    with pytest.raises(ValueError, match=r"journal .*--resume"):
        FeatureStore.open(h5)


def test_an_h5_file_replaced_after_opening_is_refused(tmp_path: Path, user_cache: Path) -> None:
    path = write_file(tmp_path / "f.h5", records("img", 3))
    store = FeatureStore.open(path)
    write_h5(path, records("other", 3), feature_dim=16)
    with pytest.raises(ValueError, match=r"f\.h5: .*changed after the feature store opened it"):
        store[0]


def test_lazy_export() -> None:
    assert pipeline.FeatureStore is FeatureStore
    assert issubclass(FeatureStore, torch.utils.data.Dataset)


# --- processes --------------------------------------------------------------------------------


def test_pickled_store_holds_no_open_file(tmp_path: Path, user_cache: Path) -> None:
    paths = [
        write_file(tmp_path / "a.tsv", records("a", 3)),
        write_file(tmp_path / "b.h5", records("b", 3)),
    ]
    store = FeatureStore.open(*paths)
    first, last = store[0], store[-1]  # both files now open in this process
    copy = pickle.loads(pickle.dumps(store))  # an open h5py.File cannot be pickled
    assert_same_region(copy[0], first)
    assert_same_region(copy[-1], last)
    store.close()
    assert_same_region(store[0], first)  # reopened on demand


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_return_the_same_records(
    tmp_path: Path, user_cache: Path, context: str
) -> None:
    paths = [
        write_file(tmp_path / "a.tsv", records("a", 9, seed=0)),
        write_file(tmp_path / "b.h5", records("b", 9, seed=30)),
    ]
    sequential = [region for path in paths for region in read_features(path)]
    store = FeatureStore.open(*paths)
    store[0], store[-1]  # handles open in the parent before the workers start
    loader = torch.utils.data.DataLoader(
        store, batch_size=3, num_workers=2, collate_fn=list, multiprocessing_context=context
    )
    loaded = [region for batch in loader for region in batch]
    assert len(loaded) == len(sequential) == 20
    for got, want in zip(loaded, sequential, strict=True):
        assert_same_region(got, want)


# Opens a TSV store and reads every record in a shuffled order in a fresh interpreter; prints
# the resident memory before and the peak after (VmHWM of this address space, reset first where
# the kernel allows), and each record's feature sum. With "list", holds every record read by
# pipeline.features.output.read_features instead, as LXMERT's own loader does: the control showing
# the figure sees a file held in memory.
_READ_ALL_AND_MEASURE = """
import json, random, sys
import numpy as np
from pipeline.features.store import FeatureStore
from pipeline.features.output import read_features
def status(field):
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024
try:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
except OSError:
    pass
before = status("VmRSS")
sums = {}
if sys.argv[2] == "store":
    with FeatureStore.open(sys.argv[1]) as store:
        order = list(range(len(store)))
        random.Random(0).shuffle(order)
        for index in order:
            region = store[index]
            sums[region.image_id] = float(region.features.sum(dtype=np.float64))
else:
    held = list(read_features(sys.argv[1]))
    sums = {r.image_id: float(r.features.sum(dtype=np.float64)) for r in held}
print(json.dumps({"before": before, "peak": status("VmHWM"), "sums": sums}))
"""


def _measure(path: Path, mode: str, cache: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _READ_ALL_AND_MEASURE, str(path), mode],
        cwd=REPO,
        env={**os.environ, "XDG_CACHE_HOME": str(cache)},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    result: dict = json.loads(done.stdout)
    return result


def test_memory_stays_flat_while_reading_a_large_tsv(tmp_path: Path) -> None:
    # 1500 records of 4 boxes x 2048-d: ~66 MB of TSV, 49 MB of features (a store's growth
    # was measured at 0.5-0.7 MB, a list's at 0.8 of the file). Encoded by the writer's own
    # encode_tsv_line; written without TsvWriter's fsync per line, for speed.
    path = tmp_path / "large.tsv"
    expected: dict[str, float] = {}
    with open(path, "wb") as stream:
        for i in range(1500):
            region = make_region(f"img{i:05d}", n=4, dim=2048, seed=i)
            expected[region.image_id] = float(region.features.sum(dtype=np.float64))
            stream.write(encode_tsv_line(region))
    size = path.stat().st_size
    store = _measure(path, "store", tmp_path / "cache")  # builds the index
    cached = _measure(path, "store", tmp_path / "cache")  # reads it
    held = _measure(path, "list", tmp_path / "cache")
    for result in (store, cached, held):
        assert result["sums"] == expected
    growth = {name: r["peak"] - r["before"] for name, r in (("store", store), ("cached", cached))}
    print(
        f"TSV {size / 1e6:.0f} MB; peak growth {growth}; held in a list "
        f"{(held['peak'] - held['before']) / 1e6:.0f} MB"
    )
    assert held["peak"] - held["before"] > 0.6 * size  # the measure sees a file held
    assert max(growth.values()) < 0.1 * size
