"""``lmdb`` and ``lmdb-msgpack``: UNITER's image database, as its ``scripts/convert_imgdir.py``
writes it and ``data/data.py`` (``DetectFeatLmdb``) reads it.

The output is UNITER's ``img_dir``: a folder holding the LMDB environment
``feat_th0.2_max100_min10_compressed`` (``lmdb``; what ``DetectFeatLmdb`` opens by default,
``compress=True``) or ``feat_th0.2_max100_min10`` (``lmdb-msgpack``, ``compress=False``) and
``nbb_th0.2_max100_min10.json`` (``{key: box count}``). The name is that of UNITER's defaults
(``conf_th=0.2, max_bb=100, min_bb=10``); the box counts in the json are the records' own,
so the reader takes every box written. Keys are ``<image id>.npz``; ``__keys__`` holds the
JSON list of keys in write order.

Each value is a dict of arrays: an ``np.savez_compressed`` file (``lmdb``) or msgpack with
msgpack_numpy's array encoding (``lmdb-msgpack``). Every float array is float16, as UNITER's
converter stores them:

- ``features [N, D]``, ``norm_bb [N, 6]`` (x1/w, y1/h, x2/w, y2/h, (x2-x1)/w, (y2-y1)/h),
  ``conf [N]`` (our ``objects_conf``);
- ``soft_labels [N, 1601]``: UNITER's class distribution with background at column 0. We know
  only the best class and its probability, so the row holds ``objects_conf`` at column
  ``objects_id + 1`` and zeros elsewhere;
- ``objects_id``, ``attrs_id`` (int64) and ``attrs_conf`` (float16) ``[N]``: ours, which
  UNITER ignores, kept so that labels survive a conversion back.

Lost: the image size and float32 precision. Read back, the image is 1 x 1 and the boxes are
the normalised ones, so ``normalized_boxes`` (LXMERT's ``visual_pos``) is what was written.
Needs ``lmdb``, ``msgpack`` and ``msgpack-numpy`` (the ``[formats]`` extra).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from detector.structures import RegionFeatures
from pipeline.features.formats.common import (
    FormatDataError,
    PerProcessHandle,
    WriteOptions,
    region,
)
from weights.defaults import extra_install_hint

SUFFIX = "th0.2_max100_min10"
NUM_CLASSES = 1601
KEYS_RECORD = b"__keys__"
COMMIT_EVERY = 1000


def db_name(*, compressed: bool) -> str:
    """The environment's folder name inside UNITER's ``img_dir``."""
    return f"feat_{SUFFIX}" + ("_compressed" if compressed else "")


def nbb_name() -> str:
    """The box-count table's file name inside ``img_dir``."""
    return f"nbb_{SUFFIX}.json"


def _modules() -> tuple[Any, Any, Any]:
    try:
        import lmdb
        import msgpack
        import msgpack_numpy
    except ImportError:
        raise FormatDataError(
            f"lmdb needs lmdb, msgpack and msgpack-numpy: {extra_install_hint('formats')}"
        ) from None
    return lmdb, msgpack, msgpack_numpy


def encode_value(record: RegionFeatures) -> dict[str, np.ndarray]:
    """UNITER's arrays of one record (module docstring)."""
    n = record.num_boxes
    scale = np.array([record.image_w, record.image_h] * 2, np.float32)
    norm = record.boxes / scale if n else np.zeros((0, 4), np.float32)
    sizes = norm[:, 2:4] - norm[:, 0:2]
    soft = np.zeros((n, NUM_CLASSES), np.float16)
    soft[np.arange(n), record.objects_id + 1] = record.objects_conf
    return {
        "features": record.features.astype(np.float16),
        "norm_bb": np.concatenate([norm, sizes], axis=1).astype(np.float16),
        "conf": record.objects_conf.astype(np.float16),
        "soft_labels": soft,
        "objects_id": record.objects_id,
        "attrs_id": record.attrs_id,
        "attrs_conf": record.attrs_conf.astype(np.float16),
    }


def _msgpack_default(value: Any) -> Any:
    _, _, msgpack_numpy = _modules()
    return msgpack_numpy.encode(value)


def _safe_decode(value: dict[Any, Any]) -> Any:
    """msgpack_numpy's decoding, refusing its pickled object arrays (kind ``O``)."""
    _, _, msgpack_numpy = _modules()
    kind = value.get(b"kind", value.get("kind"))
    if kind in (b"O", "O"):
        raise FormatDataError("an lmdb value holds a pickled object array; refused")
    return msgpack_numpy.decode(value)


def dumps(arrays: dict[str, np.ndarray], *, compressed: bool) -> bytes:
    """One value's bytes."""
    if compressed:
        with io.BytesIO() as buffer:
            np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
            return buffer.getvalue()
    _, msgpack, _ = _modules()
    data: bytes = msgpack.packb(arrays, default=_msgpack_default, use_bin_type=True)
    return data


def loads(data: bytes, *, compressed: bool, source: str) -> dict[str, np.ndarray]:
    """One value's arrays (no pickle either way)."""
    try:
        if compressed:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
        _, msgpack, _ = _modules()
        value = msgpack.unpackb(data, object_hook=_safe_decode, raw=False)
    except (ValueError, OSError) as error:
        raise FormatDataError(f"{source}: unreadable value ({error})") from None
    if not isinstance(value, dict):
        raise FormatDataError(f"{source}: not a dict of arrays")
    return value


def write_lmdb(
    folder: Path, regions: Iterable[RegionFeatures], options: WriteOptions, *, compressed: bool
) -> int:
    """Write UNITER's ``img_dir`` into the new folder ``folder``; returns the count."""
    lmdb, _, _ = _modules()
    del options  # every float array is float16 in this layout
    folder.mkdir()
    env = lmdb.open(str(folder / db_name(compressed=compressed)), map_size=1 << 40)
    name2nbb: dict[str, int] = {}
    try:
        txn = env.begin(write=True)
        for record in regions:
            key = f"{record.image_id}.npz"
            if key in name2nbb:
                raise ValueError(f"image id {record.image_id!r} is given twice")
            txn.put(key.encode("utf-8"), dumps(encode_value(record), compressed=compressed))
            name2nbb[key] = record.num_boxes
            if len(name2nbb) % COMMIT_EVERY == 0:
                txn.commit()
                txn = env.begin(write=True)
        txn.put(KEYS_RECORD, json.dumps(list(name2nbb)).encode("utf-8"))
        txn.commit()
        env.sync(True)
    finally:
        env.close()
    (folder / nbb_name()).write_text(json.dumps(name2nbb), encoding="utf-8")
    return len(name2nbb)


def find_db(folder: Path) -> tuple[Path, bool]:
    """The environment inside UNITER's ``img_dir`` ``folder`` and whether it is compressed."""
    for compressed in (True, False):
        candidate = folder / db_name(compressed=compressed)
        if (candidate / "data.mdb").is_file():
            return candidate, compressed
    for name, compressed in (("all_compressed", True), ("all", False)):
        if (folder / name / "data.mdb").is_file():
            return folder / name, compressed
    raise FormatDataError(
        f"{folder}: no UNITER image database ({db_name(compressed=True)}/data.mdb or "
        f"{db_name(compressed=False)}/data.mdb)"
    )


class LmdbPart:
    """A UNITER image database read by id (the database is its own index)."""

    def __init__(self, path: Path) -> None:
        lmdb, _, _ = _modules()
        self.path = path
        self._db, self._compressed = find_db(path)
        env = lmdb.open(str(self._db), readonly=True, lock=False, readahead=False)
        try:
            with env.begin() as txn:
                keys = txn.get(KEYS_RECORD)
        finally:
            env.close()
        if keys is None:
            raise FormatDataError(f"{self._db}: no __keys__ record")
        names = json.loads(bytes(keys).decode("utf-8"))
        self.ids = tuple(
            str(k)[: -len(".npz")] if str(k).endswith(".npz") else str(k) for k in names
        )
        self._keys = tuple(str(k) for k in names)
        self._env = PerProcessHandle()

    def where(self, local: int) -> str:
        return f"{self._db} (key {self._keys[local]})"

    def read(self, local: int) -> RegionFeatures:
        lmdb, _, _ = _modules()
        env = self._env.get(
            lambda: lmdb.open(str(self._db), readonly=True, lock=False, readahead=False)
        )
        with env.begin() as txn:
            data = txn.get(self._keys[local].encode("utf-8"))
        if data is None:
            raise FormatDataError(f"{self.where(local)}: listed in __keys__ but missing")
        arrays = loads(bytes(data), compressed=self._compressed, source=self.where(local))
        return decode_value(arrays, image_id=self.ids[local])

    def close(self) -> None:
        self._env.close()


def decode_value(arrays: dict[str, np.ndarray], *, image_id: str) -> RegionFeatures:
    """A record from UNITER's arrays (image 1 x 1, boxes normalised; module docstring)."""
    norm = np.asarray(arrays["norm_bb"], np.float32)
    soft = arrays.get("soft_labels")
    objects_id = arrays.get("objects_id")
    if objects_id is None and soft is not None and len(soft):
        objects_id = np.argmax(np.asarray(soft)[:, 1:], axis=1)
    return region(
        image_id=image_id,
        image_h=1,
        image_w=1,
        boxes=norm[:, :4],
        features=np.asarray(arrays["features"], np.float32),
        objects_id=objects_id,
        objects_conf=arrays.get("conf"),
        attrs_id=arrays.get("attrs_id"),
        attrs_conf=arrays.get("attrs_conf"),
    )


def iter_lmdb(path: Path) -> Iterator[RegionFeatures]:
    """Records of a UNITER image database in ``__keys__`` order."""
    part = LmdbPart(path)
    try:
        for local in range(len(part.ids)):
            yield part.read(local)
    finally:
        part.close()


def is_lmdb_dir(path: Path) -> bool:
    """A folder that holds a UNITER image database."""
    try:
        find_db(path)
    except FormatDataError:
        return False
    return True
