"""``parquet``: one row per image, for pyarrow, pandas and Hugging Face
``datasets.load_dataset("parquet", data_files=...)``.

Columns: ``img_id`` string, ``img_h``/``img_w``/``num_boxes`` int64, ``boxes`` list of
fixed-size lists of 4 float32, ``features`` list of fixed-size lists of D float32 (or float16),
``objects_id``/``attrs_id`` list of int64, ``objects_conf``/``attrs_conf`` list of float32.
Written in row groups of :data:`ROW_GROUP` images with pyarrow's ``ParquetWriter``, so a
writer holds one group at a time; a reader keeps the ids and the row-group boundaries, and
holds at most one decoded row group (a sequential scan reads each group once).

Needs pyarrow (the ``[formats]`` extra; ``[ray]`` has it too).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from detector.structures import RegionFeatures
from pipeline.features.formats.common import FormatDataError, PerProcessHandle, WriteOptions, region
from weights.defaults import extra_install_hint

#: Images per row group: about 2.4 MB of 36 x 2048 float32 features. A random read decodes
#: its whole group, so groups stay small (a sequential scan decodes each group once).
ROW_GROUP = 8
FORMAT_KEY = b"lxmert-pipeline/format"


def _pyarrow() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise FormatDataError(f"parquet needs pyarrow: {extra_install_hint('formats')}") from None
    return pa, pq


def parquet_schema(feature_dim: int, feature_dtype: str) -> Any:
    """The table schema for ``D = feature_dim``."""
    pa, _ = _pyarrow()
    value = pa.float16() if feature_dtype == "float16" else pa.float32()
    return pa.schema(
        [
            ("img_id", pa.string()),
            ("img_h", pa.int64()),
            ("img_w", pa.int64()),
            ("num_boxes", pa.int64()),
            ("boxes", pa.list_(pa.list_(pa.float32(), 4))),
            ("features", pa.list_(pa.list_(value, feature_dim))),
            ("objects_id", pa.list_(pa.int64())),
            ("objects_conf", pa.list_(pa.float32())),
            ("attrs_id", pa.list_(pa.int64())),
            ("attrs_conf", pa.list_(pa.float32())),
        ],
        metadata={FORMAT_KEY: b"regions/1", b"feature_dim": str(feature_dim).encode()},
    )


def _nested(values: np.ndarray, offsets: np.ndarray, width: int, value_type: Any) -> Any:
    """A ``list<fixed_size_list<width>>`` column from flat values and per-row offsets."""
    pa, _ = _pyarrow()
    inner = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), value_type), width)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), inner)


def _flat_list(values: list[np.ndarray], offsets: np.ndarray, value_type: Any) -> Any:
    pa, _ = _pyarrow()
    flat = np.concatenate(values) if values else np.zeros(0)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat, value_type))


def _batch(records: list[RegionFeatures], schema: Any, dim: int) -> Any:
    """One record batch of ``records``."""
    pa, _ = _pyarrow()
    counts = np.array([r.num_boxes for r in records], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    feature_type = schema.field("features").type.value_type.value_type
    np_feature = np.float16 if feature_type == pa.float16() else np.float32
    features = [r.features.astype(np_feature) for r in records if r.num_boxes]
    boxes = [r.boxes for r in records if r.num_boxes]
    columns = [
        pa.array([r.image_id for r in records], pa.string()),
        pa.array([r.image_h for r in records], pa.int64()),
        pa.array([r.image_w for r in records], pa.int64()),
        pa.array(counts, pa.int64()),
        _nested(
            np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32),
            offsets,
            4,
            pa.float32(),
        ),
        _nested(
            np.concatenate(features) if features else np.zeros((0, dim), np_feature),
            offsets,
            dim,
            feature_type,
        ),
    ]
    for name, value_type in (
        ("objects_id", pa.int64()),
        ("objects_conf", pa.float32()),
        ("attrs_id", pa.int64()),
        ("attrs_conf", pa.float32()),
    ):
        columns.append(_flat_list([getattr(r, name) for r in records], offsets, value_type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def write_parquet(path: Path, regions: Iterable[RegionFeatures], options: WriteOptions) -> int:
    """Write the records to the new file ``path`` in row groups; returns the count.

    The feature dimension is that of the first record with boxes (records without boxes
    before it are held until it is known); another dimension later is a ``ValueError``.
    """
    _, pq = _pyarrow()
    writer: Any = None
    schema: Any = None
    dim: int | None = None
    pending: list[RegionFeatures] = []
    count = 0

    def flush() -> None:
        nonlocal writer, schema
        if schema is None:
            if not (dim or options.feature_dim):
                raise ValueError(
                    "no record has a box, so the feature dimension that a parquet schema "
                    "fixes is unknown; a parquet file needs at least one box"
                )
            schema = parquet_schema(dim or options.feature_dim, options.feature_dtype)
            # No dictionary encoding: ids are unique and features near-unique, so pyarrow's
            # trial of a dictionary per column page cost 4/5 of the writing time, for a
            # larger file (measured in benchmarks/RESULTS.md).
            writer = pq.ParquetWriter(str(path), schema, compression="snappy", use_dictionary=False)
        width = dim or options.feature_dim
        writer.write_batch(_batch(pending, schema, width), row_group_size=ROW_GROUP)
        pending.clear()

    try:
        for record in regions:
            if record.num_boxes:
                found = int(record.features.shape[1])
                if dim is None:
                    dim = found
                elif found != dim:
                    raise ValueError(
                        f"image {record.image_id!r} has {found}-d features, the file {dim}-d"
                    )
            pending.append(record)
            count += 1
            if len(pending) >= ROW_GROUP and dim is not None:
                flush()
        if pending or schema is None:
            flush()
    finally:
        if writer is not None:
            writer.close()
    return count


class ParquetPart:
    """A parquet file read by id: ids and row-group starts in memory, one group decoded."""

    def __init__(self, path: Path) -> None:
        _, pq = _pyarrow()
        self.path = path
        try:
            meta = pq.ParquetFile(str(path))
            ids = meta.read(columns=["img_id"]).column("img_id").to_pylist()
            sizes = [meta.metadata.row_group(i).num_rows for i in range(meta.num_row_groups)]
        except (OSError, KeyError, ValueError) as error:
            raise FormatDataError(f"{path}: not a feature parquet file ({error})") from None
        self.ids = tuple(str(i) for i in ids)
        self._starts = [0, *np.cumsum(sizes).tolist()]
        self._file = PerProcessHandle()
        self._group: tuple[int, dict[str, Any]] | None = None

    def where(self, local: int) -> str:
        return f"{self.path} (row {local})"

    def _rows(self, group: int) -> dict[str, Any]:
        if self._group is None or self._group[0] != group:
            _, pq = _pyarrow()
            handle = self._file.get(lambda: pq.ParquetFile(str(self.path)))
            table = handle.read_row_group(group)
            self._group = (
                group,
                {name: table.column(name).combine_chunks() for name in table.column_names},
            )
        return self._group[1]

    def read(self, local: int) -> RegionFeatures:
        group = bisect.bisect_right(self._starts, local) - 1
        row = local - self._starts[group]
        try:
            columns = self._rows(group)
            return _row(columns, row)
        except (OSError, KeyError, ValueError) as error:
            if isinstance(error, FormatDataError):
                raise
            raise FormatDataError(f"{self.where(local)}: {error}") from None

    def close(self) -> None:
        self._group = None
        self._file.close()

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_group": None}


def _values(column: Any, row: int, dtype: Any) -> np.ndarray:
    """The flat values of list cell ``row`` (nested lists flattened), without Python lists."""
    item = column[row].values
    while hasattr(item, "flatten") and hasattr(item.type, "value_type"):
        item = item.flatten()
    if item.null_count == 0:
        values = item.to_numpy(zero_copy_only=True)  # a view of Arrow's buffer, no copy
    else:
        values = item.to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=dtype)


def _row(columns: dict[str, Any], row: int) -> RegionFeatures:
    n = int(columns["num_boxes"][row].as_py())
    features = _values(columns["features"], row, np.float32)
    return region(
        image_id=str(columns["img_id"][row].as_py()),
        image_h=int(columns["img_h"][row].as_py()),
        image_w=int(columns["img_w"][row].as_py()),
        boxes=_values(columns["boxes"], row, np.float32).reshape(n, 4),
        features=features.reshape(n, -1) if n else np.zeros((0, 0), np.float32),
        objects_id=_values(columns["objects_id"], row, np.int64),
        objects_conf=_values(columns["objects_conf"], row, np.float32),
        attrs_id=_values(columns["attrs_id"], row, np.int64),
        attrs_conf=_values(columns["attrs_conf"], row, np.float32),
    )


def iter_parquet(path: Path) -> Iterator[RegionFeatures]:
    """Records of a parquet file in row order."""
    part = ParquetPart(path)
    try:
        for local in range(len(part.ids)):
            yield part.read(local)
    finally:
        part.close()
