"""``npz-dir``: one compressed ``.npz`` per image, the layout of MILVLG's
bottom-up-attention.pytorch (``utils/extract_utils.py``, ``save_roi_features``).

Each ``<image id>.npz`` (an id with ``/`` lies in sub-folders) holds ``x`` ``[N, D]`` features,
``bbox`` ``[N, 4]`` xyxy raw-image pixels, ``num_bbox``, ``image_h``, ``image_w`` and ``info``,
a pickled dict with ``image_id``, ``image_h``, ``image_w``, ``num_boxes``, ``objects_id``,
``objects_conf``, ``attrs_id`` and ``attrs_conf``. MILVLG takes the argmax over all 1601 object
columns with background at 0 and over all 401 attribute columns with "no attribute" at 0, so
its ids are ours + 1: converted both ways. ``info`` is read with a restricted unpickler (plain
containers and numpy arrays only).

Our writer also puts ``index.txt`` in the folder: the ids in write order, one per line, so a
conversion back gives the records in their original order. A folder without it (MILVLG's own)
is read in sorted id order.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

import numpy as np

from detector.structures import RegionFeatures
from pipeline.features.formats.common import (
    FormatDataError,
    PerProcessHandle,
    WriteOptions,
    load_array_pickle,
    region,
    stored_features,
)

INDEX_NAME = "index.txt"
#: MILVLG's class ids count the background (objects) / "no attribute" (attributes) column 0.
CLASS_OFFSET = 1


def npz_relative(image_id: str) -> Path:
    """The file of ``image_id`` inside the folder; ``ValueError`` for an id that would leave it."""
    parts = PurePosixPath(image_id).parts
    if (
        not image_id
        or image_id.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
        or "\\" in image_id
        or "\n" in image_id
    ):
        raise ValueError(f"image id {image_id!r} cannot name a file inside an npz folder")
    return Path(*parts[:-1], parts[-1] + ".npz")


def encode_npz(record: RegionFeatures, options: WriteOptions) -> dict[str, object]:
    """The arrays of one ``.npz`` file, as MILVLG's extractor saves them."""
    info = {
        "image_id": record.image_id,
        "image_h": record.image_h,
        "image_w": record.image_w,
        "num_boxes": record.num_boxes,
        "objects_id": record.objects_id + CLASS_OFFSET,
        "objects_conf": record.objects_conf,
        "attrs_id": record.attrs_id + CLASS_OFFSET,
        "attrs_conf": record.attrs_conf,
    }
    return {
        "x": stored_features(record.features, options.feature_dtype),
        "bbox": record.boxes,
        "num_bbox": record.num_boxes,
        "image_h": record.image_h,
        "image_w": record.image_w,
        "info": info,
    }


def write_npz_dir(folder: Path, regions: Iterable[RegionFeatures], options: WriteOptions) -> int:
    """Write every record into ``folder`` (created here, or what :func:`resume_npz_dir` kept
    of it); returns the count written."""
    folder.mkdir(exist_ok=True)
    count = 0
    with open(folder / INDEX_NAME, "a", encoding="utf-8", newline="\n") as index:
        for record in regions:
            target = folder / npz_relative(record.image_id)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as stream:
                np.savez_compressed(stream, **encode_npz(record, options))  # type: ignore[arg-type]
            # Listed only once its file is closed: a listed id is complete (see resume).
            index.write(record.image_id + "\n")
            index.flush()
            count += 1
    return count


def resume_npz_dir(folder: Path) -> frozenset[str]:
    """The ids a partial npz folder holds complete: the lines of its ``index.txt``, an
    incomplete last line cut away. A file written but not yet listed (a kill between the two)
    is written again, whole, by the resumed conversion."""
    index = folder / INDEX_NAME
    if not index.is_file():
        return frozenset()
    data = index.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
        with open(index, "r+b") as stream:
            stream.truncate(keep)
    return frozenset(data[:keep].decode("utf-8").split("\n")[:-1])


def _read_member(archive: zipfile.ZipFile, name: str, *, source: str) -> np.ndarray:
    """One array of an ``.npz``; an object array (``info``) through the restricted unpickler."""
    with archive.open(name + ".npy") as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        if dtype.hasobject:
            value = load_array_pickle(stream.read(), source=f"{source}:{name}")
            if not isinstance(value, np.ndarray):
                raise FormatDataError(f"{source}: {name} is not an array")
            return value
        data = stream.read()
    count = int(np.prod(shape)) if shape else 1
    flat = np.frombuffer(data, dtype=dtype, count=count)
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


def read_npz(path: Path, *, image_id: str) -> RegionFeatures:
    """One ``.npz`` file as a record (class ids back to ours)."""
    source = str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = {n[:-4] for n in archive.namelist() if n.endswith(".npy")}
            arrays = {name: _read_member(archive, name, source=source) for name in names}
    except (OSError, zipfile.BadZipFile, ValueError) as error:
        if isinstance(error, FormatDataError):
            raise
        raise FormatDataError(f"{source}: not a readable .npz file ({error})") from None
    if "x" not in arrays or "bbox" not in arrays:
        raise FormatDataError(f"{source}: no 'x' and 'bbox' arrays (not a MILVLG feature file)")
    info = arrays["info"].item() if "info" in arrays else {}
    if not isinstance(info, dict):
        raise FormatDataError(f"{source}: 'info' is not a dict")

    def labels(name: str) -> np.ndarray | None:
        return None if name not in info else np.asarray(info[name]) - CLASS_OFFSET

    return region(
        image_id=image_id,
        image_h=_size(arrays, info, "image_h"),
        image_w=_size(arrays, info, "image_w"),
        boxes=arrays["bbox"],
        features=arrays["x"],
        objects_id=labels("objects_id"),
        objects_conf=None if "objects_conf" not in info else np.asarray(info["objects_conf"]),
        attrs_id=labels("attrs_id"),
        attrs_conf=None if "attrs_conf" not in info else np.asarray(info["attrs_conf"]),
    )


def _size(arrays: dict[str, np.ndarray], info: dict[str, object], name: str) -> int:
    """``image_h``/``image_w`` from the file's array, else its ``info`` (0 when neither)."""
    if name in arrays:
        return int(arrays[name])
    value = info.get(name, 0)
    return int(value) if isinstance(value, int | np.integer) else 0


def folder_ids(folder: Path) -> tuple[str, ...]:
    """Ids of an npz folder: its ``index.txt`` when it has one, else every ``*.npz`` sorted."""
    index = folder / INDEX_NAME
    if index.is_file():
        ids = tuple(index.read_text(encoding="utf-8").splitlines())
        for image_id in ids:
            npz_relative(image_id)
        return ids
    found = sorted(
        str(PurePosixPath(p.relative_to(folder).as_posix()))[: -len(".npz")]
        for p in folder.rglob("*.npz")
    )
    return tuple(found)


class NpzDirPart:
    """An npz folder read by id: the id names the file, so the index is the id list."""

    def __init__(self, path: Path) -> None:
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such npz folder")
        self.path = path
        self.ids = folder_ids(path)
        self._handle = PerProcessHandle()  # nothing to hold open; kept for a uniform part

    def where(self, local: int) -> str:
        return str(self.path / npz_relative(self.ids[local]))

    def read(self, local: int) -> RegionFeatures:
        image_id = self.ids[local]
        target = self.path / npz_relative(image_id)
        if not target.is_file():
            raise FormatDataError(f"{target}: listed in {self.path / INDEX_NAME} but missing")
        return read_npz(target, image_id=image_id)

    def close(self) -> None:
        self._handle.close()


def iter_npz_dir(path: Path) -> Iterator[RegionFeatures]:
    """Records of an npz folder in its order."""
    part = NpzDirPart(path)
    for local in range(len(part.ids)):
        yield part.read(local)


def is_npz_dir(path: Path) -> bool:
    """A folder with our index or any ``.npz`` file in it."""
    return path.is_dir() and (
        (path / INDEX_NAME).is_file() or next(iter(path.rglob("*.npz")), None) is not None
    )


__all__ = [
    "NpzDirPart",
    "encode_npz",
    "folder_ids",
    "is_npz_dir",
    "iter_npz_dir",
    "npz_relative",
    "read_npz",
    "resume_npz_dir",
    "write_npz_dir",
]
