"""``ban-h5`` and ``ban-h5-36``: the HDF5 layout of bottom-up-attention-vqa and ban-vqa.

``ban-h5`` (ban-vqa ``tools/adaptive_detection_features_converter.py``, read by its
``dataset.py``: ``_load_dataset``/``VQAFeatureDataset``): ``image_features [B, D]``,
``image_bb [B, 4]`` (xyxy raw-image pixels), ``spatial_features [B, 6]`` and
``pos_boxes [I, 2]`` int32 (rows ``start:end`` of image i) in one file ``NAME.hdf5``, and the
pickled dict ``{image_id (int): i}`` in ``NAME_imgid2idx.pkl`` beside it.

``ban-h5-36`` (bottom-up-attention-vqa ``tools/detection_features_converter.py``): the same
datasets as ``[I, 36, ...]`` arrays and no ``pos_boxes``; every image must have 36 boxes.

``spatial_features`` are computed in float32 as ban-vqa does: ``x1/w``, ``y1/h``, then
``x1/w + (x2-x1)/w`` and ``y1/h + (y2-y1)/h`` (not ``x2/w``), then the widths ``(x2-x1)/w`` and
``(y2-y1)/h``.

The ids are ints. With ``ban_ids="strict"`` every id must be an integer written without
leading zeros (``"42"``); with ``"trailing-digits"`` the digits at the end of each id are its
number (``COCO_val2014_000000000042`` -> 42) and ``NAME_ids.json`` (``{"42": "COCO_..."}``)
keeps the way back. The layout has no object/attribute labels, confidences or image size:
read back, labels are -1, confidences 0, and the image size is recovered from a box's width
over its ``spatial_features`` width (0 x 0 for an image without boxes).
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from detector.structures import RegionFeatures
from pipeline.features.formats.common import (
    FormatDataError,
    PerProcessHandle,
    WriteOptions,
    load_plain_pickle,
    region,
    stored_features,
)

FIXED_BOXES = 36
_TRAILING = re.compile(r"(\d+)$")


def index_path(path: Path) -> Path:
    """``train.hdf5`` -> ``train_imgid2idx.pkl`` (ban-vqa's companion name)."""
    return path.with_name(path.stem + "_imgid2idx.pkl")


def ids_path(path: Path) -> Path:
    """``train.hdf5`` -> ``train_ids.json``: our table from the int ids back to the ids."""
    return path.with_name(path.stem + "_ids.json")


def companions(path: Path) -> tuple[Path, ...]:
    """The files written beside ``path``."""
    return (index_path(path), ids_path(path))


def numeric_id(image_id: str, mode: str) -> int:
    """The int ban-vqa keys ``image_id`` by; ``ValueError`` naming the id and the remedy."""
    if mode == "strict":
        if re.fullmatch(r"0|[1-9]\d*", image_id):
            return int(image_id)
        raise ValueError(
            f"image id {image_id!r} is not an integer; ban-h5 keys images by int. Pass "
            "--ban-ids trailing-digits to use the digits at its end (a table back to the "
            "ids is written beside the file)"
        )
    match = _TRAILING.search(image_id)
    if match is None:
        raise ValueError(f"image id {image_id!r} has no digits at its end (--ban-ids)")
    return int(match.group(1))


def spatial_features(boxes: np.ndarray, *, image_w: int, image_h: int) -> np.ndarray:
    """``[N, 6]`` float32 as ban-vqa's converter computes them (module docstring)."""
    boxes = boxes.astype(np.float32, copy=False)
    w, h = np.float32(image_w), np.float32(image_h)
    box_w = boxes[:, 2] - boxes[:, 0]
    box_h = boxes[:, 3] - boxes[:, 1]
    scaled_w, scaled_h = box_w / w, box_h / h
    scaled_x, scaled_y = boxes[:, 0] / w, boxes[:, 1] / h
    columns = (scaled_x, scaled_y, scaled_x + scaled_w, scaled_y + scaled_h, scaled_w, scaled_h)
    return np.stack(columns, axis=1).astype(np.float32)


def _create(f: h5py.File, *, dim: int, fixed: bool, dtype: str) -> None:
    lead: tuple[int, ...] = (0, FIXED_BOXES) if fixed else (0,)
    grow: tuple[int | None, ...] = (None, FIXED_BOXES) if fixed else (None,)
    rows = 1 if fixed else 64
    feature_dtype = "<f2" if dtype == "float16" else "<f4"
    for name, width, kind in (
        ("image_features", dim, feature_dtype),
        ("image_bb", 4, "<f4"),
        ("spatial_features", 6, "<f4"),
    ):
        chunk = (rows, *lead[1:], max(width, 1))
        f.create_dataset(
            name, shape=(*lead, width), maxshape=(*grow, width), dtype=kind, chunks=chunk
        )
    if not fixed:
        f.create_dataset(
            "pos_boxes", shape=(0, 2), maxshape=(None, 2), dtype="<i4", chunks=(1024, 2)
        )


#: Records written to the HDF5 file at once: h5py's cost is per call, not per byte.
BATCH = 64


def _check(record: RegionFeatures, *, fixed: bool, dim: int | None) -> None:
    n = record.num_boxes
    if fixed and n != FIXED_BOXES:
        raise ValueError(
            f"image {record.image_id!r} has {n} boxes; ban-h5-36 holds exactly {FIXED_BOXES} "
            "per image (use --to ban-h5 for adaptive box counts)"
        )
    if n and dim is not None and record.features.shape[1] != dim:
        raise ValueError(f"image {record.image_id!r}: {record.features.shape[1]}-d, file {dim}-d")


def _append(
    f: h5py.File, records: list[RegionFeatures], *, fixed: bool, options: WriteOptions
) -> None:
    """Append ``records`` (checked by :func:`_check`) with one write per dataset."""
    if not records:
        return
    if "image_features" not in f:
        first = next((r for r in records if r.num_boxes), records[0])
        _create(f, dim=int(first.features.shape[1]), fixed=fixed, dtype=options.feature_dtype)
    dim = int(f["image_features"].shape[-1])
    values = {
        "image_features": [stored_features(r.features, options.feature_dtype) for r in records],
        "image_bb": [r.boxes for r in records],
        "spatial_features": [
            spatial_features(r.boxes, image_w=r.image_w, image_h=r.image_h) for r in records
        ],
    }
    widths = {"image_features": dim, "image_bb": 4, "spatial_features": 6}
    start = int(f["image_bb"].shape[0])
    for name, arrays in values.items():
        block = (
            np.stack(arrays)
            if fixed
            else np.concatenate([a.reshape(-1, widths[name]) for a in arrays])
        )
        dataset = f[name]
        dataset.resize(start + len(block), axis=0)
        dataset[start:] = block
    if not fixed:
        counts = np.array([r.num_boxes for r in records], np.int64)
        ends = start + np.cumsum(counts)
        pos = f["pos_boxes"]
        pos.resize(pos.shape[0] + len(records), axis=0)
        pos[-len(records) :] = np.stack([ends - counts, ends], axis=1).astype(np.int32)


def write_ban_h5(
    path: Path, regions: Iterable[RegionFeatures], options: WriteOptions, *, fixed: bool
) -> int:
    """Write ``path`` and its companions (module docstring); returns the record count.

    ``path`` is a temporary name: the companions are written beside it under the same stem,
    and :func:`companions` names what the caller renames with it.
    """
    table: dict[int, int] = {}
    names: dict[str, str] = {}
    dim: int | None = None
    pending: list[RegionFeatures] = []
    with h5py.File(path, "w") as f:
        for index, record in enumerate(regions):
            key = numeric_id(record.image_id, options.ban_ids)
            if key in table:
                first = names.get(str(key), str(key))
                raise ValueError(
                    f"image ids {first!r} and {record.image_id!r} both map to {key}; ban-h5 "
                    "keys images by int"
                )
            table[key] = index
            names[str(key)] = record.image_id
            _check(record, fixed=fixed, dim=dim)
            if dim is None and record.num_boxes:
                dim = int(record.features.shape[1])
            pending.append(record)
            if len(pending) >= BATCH and dim is not None:
                _append(f, pending, fixed=fixed, options=options)
                pending = []
        if pending and dim is None:
            raise ValueError("no image has a box; ban-h5 needs the feature dimension")
        _append(f, pending, fixed=fixed, options=options)
        if "image_features" not in f:
            _create(f, dim=0, fixed=fixed, dtype=options.feature_dtype)
    with open(index_path(path), "wb") as stream:
        pickle.dump(table, stream, protocol=2)
    if options.ban_ids != "strict":
        ids_path(path).write_text(json.dumps(names), encoding="utf-8")
    return len(table)


def _read_ids(path: Path) -> tuple[str, ...]:
    pkl = index_path(path)
    if not pkl.is_file():
        raise FormatDataError(f"{path}: its id table {pkl} is missing")
    table = load_plain_pickle(pkl.read_bytes(), source=str(pkl))
    if not isinstance(table, dict) or not all(
        isinstance(k, int | str) and isinstance(v, int) for k, v in table.items()
    ):
        raise FormatDataError(f"{pkl}: not a dict of image id -> index")
    order = sorted(table.items(), key=lambda item: item[1])
    if [v for _, v in order] != list(range(len(order))):
        raise FormatDataError(f"{pkl}: the indexes are not 0..{len(order) - 1}")
    names: dict[str, str] = {}
    if ids_path(path).is_file():
        names = json.loads(ids_path(path).read_text(encoding="utf-8"))
    return tuple(names.get(str(k), str(k)) for k, _ in order)


def _image_size(boxes: np.ndarray, spatial: np.ndarray) -> tuple[int, int]:
    """(h, w) back from box sizes over their normalised sizes (the widest box, in float64)."""
    if not len(boxes):
        return 0, 0
    widths = boxes[:, 2].astype(np.float64) - boxes[:, 0]
    heights = boxes[:, 3].astype(np.float64) - boxes[:, 1]
    i, j = int(np.argmax(widths)), int(np.argmax(heights))
    w = round(widths[i] / spatial[i, 4]) if spatial[i, 4] > 0 else 0
    h = round(heights[j] / spatial[j, 5]) if spatial[j, 5] > 0 else 0
    return int(h), int(w)


class BanH5Part:
    """A ban-h5 file read by id (``pos_boxes`` and the id table are its index)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ids = _read_ids(path)
        with h5py.File(path, "r") as f:
            if "image_features" not in f or "image_bb" not in f:
                raise FormatDataError(f"{path}: no image_features/image_bb (not ban-vqa's layout)")
            self.fixed = f["image_bb"].ndim == 3
            positions = None if self.fixed else np.asarray(f["pos_boxes"][()], np.int64)
        self._positions = positions
        self._file = PerProcessHandle()

    def where(self, local: int) -> str:
        return f"{self.path} (image {local})"

    def read(self, local: int) -> RegionFeatures:
        f: Any = self._file.get(lambda: h5py.File(self.path, "r"))
        try:
            if self._positions is None:
                rows: Any = local
            else:
                start, end = (int(v) for v in self._positions[local])
                rows = slice(start, end)
            boxes = np.asarray(f["image_bb"][rows], np.float32)
            spatial = np.asarray(f["spatial_features"][rows], np.float32)
            features = np.asarray(f["image_features"][rows], np.float32)
        except (OSError, KeyError, ValueError, TypeError) as error:
            raise FormatDataError(f"{self.where(local)}: {error}") from None
        image_h, image_w = _image_size(boxes, spatial)
        return region(
            image_id=self.ids[local],
            image_h=image_h,
            image_w=image_w,
            boxes=boxes,
            features=features,
        )

    def close(self) -> None:
        self._file.close()


def iter_ban_h5(path: Path) -> Iterator[RegionFeatures]:
    """Records of a ban-h5 file in index order."""
    part = BanH5Part(path)
    try:
        for local in range(len(part.ids)):
            yield part.read(local)
    finally:
        part.close()


def is_ban_h5(path: Path) -> bool:
    """An HDF5 file with ban-vqa's datasets."""
    if not path.is_file() or not h5py.is_hdf5(path):
        return False
    with h5py.File(path, "r") as f:
        return "image_features" in f and "spatial_features" in f
