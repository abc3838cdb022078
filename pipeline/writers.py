"""Feature files: LXMERT's obj36 TSV and an HDF5 layout, both safe against being killed.

TSV (``.tsv``): exactly the file LXMERT's ``load_obj_tsv`` reads. One line per image, no header,
tab-separated fields ``img_id, img_h, img_w, objects_id, objects_conf, attrs_id, attrs_conf,
num_boxes, boxes, features`` written by ``csv.DictWriter(delimiter="\\t")`` (``\\r\\n`` line ends,
as the original ``generate_tsv.py``). Arrays are base64 of their raw little-endian bytes: int64
for ``objects_id``/``attrs_id``, float32 for the rest; ``boxes`` is ``[N, 4]`` xyxy in raw-image
pixels, ``features`` is ``[N, D]``. Each line goes to disk with one ``write`` + ``fsync``, so a
kill leaves at most one partial last line, which ``resume`` cuts away.

HDF5 (``.h5``/``.hdf5``): flat datasets plus a per-image index (:data:`H5_LAYOUT`). While a
run is going, records are appended to a journal beside the file (``out.h5.journal.tsv``, the TSV
format above); the HDF5 file is only ever replaced whole (written to a temporary file beside
it, fsynced, then renamed: :mod:`weights.files`), so at any moment it is a complete, readable
file. The journal is folded into it every time it holds as many records as the file (at least
``fold_min``) and when the writer closes, so rewriting stays linear in the output size overall.
"""

from __future__ import annotations

import base64
import csv
import glob
import heapq
import io
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import h5py
import numpy as np

from detector.structures import ARRAY_DTYPES, TSV_FIELDNAMES, RegionFeatures
from weights.files import atomic_path, fsync_directory, is_temporary_name

Format = Literal["tsv", "hdf5"]
WriteMode = Literal["create", "overwrite", "resume"]

#: Value of the root attribute ``format`` of our HDF5 files.
H5_FORMAT_NAME = "lxmert-pipeline/regions"
H5_FORMAT_VERSION = 1

#: Datasets of the HDF5 layout: name -> (dtype, meaning). I images, B boxes over all images.
H5_LAYOUT: dict[str, tuple[str, str]] = {
    "img_id": ("utf-8 str [I]", "image id, in processing order (sorted by id for one run)"),
    "img_h": ("int64 [I]", "raw image height in pixels (after EXIF orientation)"),
    "img_w": ("int64 [I]", "raw image width in pixels"),
    "num_boxes": ("int64 [I]", "boxes of image i"),
    "box_offset": ("int64 [I]", "first row of image i in the per-box datasets"),
    "boxes": ("float32 [B, 4]", "x1, y1, x2, y2 in raw-image pixels"),
    "features": ("float32 [B, D]", "mean-pooled res5 feature of each box"),
    "objects_id": ("int64 [B]", "best object class (background excluded)"),
    "objects_conf": ("float32 [B]", "its probability"),
    "attrs_id": ("int64 [B]", "best attribute ('no attribute' excluded)"),
    "attrs_conf": ("float32 [B]", "its probability"),
}
_PER_IMAGE = ("img_h", "img_w", "num_boxes", "box_offset")
_PER_BOX = ("boxes", "features", "objects_id", "objects_conf", "attrs_id", "attrs_conf")


class FeatureWriter(Protocol):
    """What the CLI needs from an output file."""

    path: Path

    def existing_ids(self) -> set[str]:
        """Ids already complete in the output (non-empty only when resuming)."""
        ...

    def write(self, region: RegionFeatures) -> None:
        """Append one image's record durably (complete on disk when this returns)."""
        ...

    def close(self) -> None:
        """Finish the file; it stays valid if this is never called."""
        ...


def output_format(path: str | os.PathLike[str]) -> Format:
    """``tsv`` or ``hdf5`` from the file suffix; ``ValueError`` for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix == ".tsv":
        return "tsv"
    if suffix in (".h5", ".hdf5"):
        return "hdf5"
    raise ValueError(f"output {path}: unknown format; name it *.tsv (LXMERT obj36) or *.h5")


def journal_path(path: str | os.PathLike[str]) -> Path:
    """Where an HDF5 output keeps the records not yet folded in: ``out.h5.journal.tsv``."""
    path = Path(path)
    return path.with_name(path.name + ".journal.tsv")


# --- TSV -----------------------------------------------------------------------------------


def _b64(array: np.ndarray, dtype: np.dtype) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def encode_tsv_line(region: RegionFeatures) -> bytes:
    """One obj36 TSV line (with its ``\\r\\n``) for ``region``, as ``csv.DictWriter`` writes it."""
    if any(char in region.image_id for char in "\t\r\n"):
        raise ValueError(
            f"image id {region.image_id!r} holds a tab or newline; TSV cannot store it"
        )
    row: dict[str, object] = {
        "img_id": region.image_id,
        "img_h": int(region.image_h),
        "img_w": int(region.image_w),
        "num_boxes": region.num_boxes,
    }
    for name, dtype in ARRAY_DTYPES.items():
        row[name] = _b64(getattr(region, name), dtype)
    buffer = io.StringIO()
    csv.DictWriter(buffer, fieldnames=list(TSV_FIELDNAMES), delimiter="\t").writerow(row)
    return buffer.getvalue().encode("utf-8")


def _unquote(field: str) -> str:
    # csv quotes an id only when it holds a double quote (tabs and newlines are refused).
    if len(field) >= 2 and field[0] == field[-1] == '"':
        return field[1:-1].replace('""', '"')
    return field


def _b64_size(text: str) -> int:
    if len(text) % 4:
        return -1
    return len(text) // 4 * 3 - (text.endswith("=") + text.endswith("=="))


def _split_line(line: bytes) -> list[str] | None:
    """The ten fields of a complete, structurally sound line, else ``None`` (cheap: no decode)."""
    try:
        text = line.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        return None
    fields = text.split("\t")
    if len(fields) != len(TSV_FIELDNAMES):
        return None
    try:
        n = int(fields[7])
        int(fields[1]), int(fields[2])
    except ValueError:
        return None
    expected = {3: 8 * n, 4: 4 * n, 5: 8 * n, 6: 4 * n, 8: 16 * n}
    for index, size in expected.items():
        if _b64_size(fields[index]) != size:
            return None
    feature_bytes = _b64_size(fields[9])
    if feature_bytes < 0 or (n and feature_bytes % (4 * n)) or (not n and feature_bytes):
        return None
    return fields


def tsv_line_id(line: bytes) -> str | None:
    """The image id of a complete, structurally sound obj36 line (its ``\\n`` included), else
    ``None``. Checks field count, integers and base64 lengths only: no array is decoded."""
    if not line.endswith(b"\n"):
        return None
    fields = _split_line(line)
    return None if fields is None else _unquote(fields[0])


def decode_tsv_line(line: bytes, *, source: str = "<tsv>") -> RegionFeatures:
    """Parse one obj36 line; ``ValueError`` naming ``source`` if it is not a complete record."""
    fields = _split_line(line)
    if fields is None:
        raise ValueError(f"{source}: not a complete obj36 TSV record")
    n = int(fields[7])
    arrays: dict[str, np.ndarray] = {}
    try:
        for name, text in zip(TSV_FIELDNAMES[3:], fields[3:], strict=True):
            if name == "num_boxes":
                continue
            raw = np.frombuffer(base64.b64decode(text, validate=True), dtype=ARRAY_DTYPES[name])
            if name in ("boxes", "features"):
                raw = raw.reshape(n, -1) if n else raw.reshape(0, 4 if name == "boxes" else 0)
            arrays[name] = raw
    except ValueError as error:  # binascii.Error is a ValueError
        raise ValueError(f"{source}: bad base64 in an obj36 TSV record ({error})") from None
    return RegionFeatures(
        image_id=_unquote(fields[0]), image_h=int(fields[1]), image_w=int(fields[2]), **arrays
    )


def _scan_tsv(path: Path) -> tuple[list[str], int | None]:
    """Ids of the complete records of ``path``, and the offset where an incomplete last
    record starts (None when the file ends with a complete record).

    A line in the middle that is not a record means the file is not one of ours (or was
    damaged otherwise than by a kill): ``ValueError``.
    """
    ids: list[str] = []
    good_end = 0
    bad_at: int | None = None
    last_line = b""
    with open(path, "rb") as stream:
        offset = 0
        for line in stream:
            if bad_at is not None:
                raise ValueError(
                    f"{path}: line {len(ids) + 1} is not a complete obj36 record but more lines "
                    "follow it; the file was not written by a killed run of this tool. "
                    "Use --overwrite to start again."
                )
            fields = _split_line(line) if line.endswith(b"\n") else None
            if fields is None:
                bad_at = offset
            else:
                ids.append(_unquote(fields[0]))
                good_end = offset + len(line)
                last_line = line
            offset += len(line)
    if ids:
        # The structural check is cheap; fully decode the last record, the one a kill could hit.
        try:
            decode_tsv_line(last_line, source=str(path))
        except ValueError:
            ids.pop()
            good_end -= len(last_line)
            bad_at = good_end
    return ids, bad_at


def _repair_tsv(path: Path) -> list[str]:
    """Ids of the complete records of ``path``, after cutting an incomplete last record."""
    ids, bad_at = _scan_tsv(path)
    if bad_at is not None:
        with open(path, "r+b") as stream:
            stream.truncate(bad_at)
            stream.flush()
            os.fsync(stream.fileno())
    return ids


def iter_tsv(path: str | os.PathLike[str]) -> Iterator[RegionFeatures]:
    """Records of an obj36 TSV in file order (an incomplete last line is ignored)."""
    path = Path(path)
    with open(path, "rb") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.endswith(b"\n"):
                return
            yield decode_tsv_line(line, source=f"{path}:{number}")


class TsvWriter:
    """Appends obj36 lines, each with one ``os.write`` + ``fsync``.

    Args:
        path: the ``.tsv`` file.
        resume: keep the records already there (an incomplete last line is cut away);
            otherwise the file is created empty (the caller decides about clobbering).
    """

    def __init__(self, path: str | os.PathLike[str], *, resume: bool) -> None:
        self.path = Path(path)
        self._ids: set[str] = set()
        if resume and self.path.exists():
            self._ids = set(_repair_tsv(self.path))
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0)
        if not resume:
            flags |= os.O_TRUNC
        self._fd: int | None = os.open(self.path, flags, 0o644)
        fsync_directory(self.path.parent)

    def existing_ids(self) -> set[str]:
        """Ids found complete in the file when it was opened."""
        return set(self._ids)

    def write(self, region: RegionFeatures) -> None:
        """Append ``region`` durably."""
        if self._fd is None:
            raise ValueError(f"{self.path}: writer is closed")
        data = encode_tsv_line(region)
        view = memoryview(data)
        while view:  # os.write may write less than asked for very large lines
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)

    def truncate(self) -> None:
        """Empty the file (used after its records were folded elsewhere)."""
        if self._fd is None:
            raise ValueError(f"{self.path}: writer is closed")
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)

    def close(self) -> None:
        """Close the file descriptor (every record is already on disk)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# --- HDF5 ----------------------------------------------------------------------------------


def _create_h5_layout(f: h5py.File, *, feature_dim: int) -> None:
    f.attrs["format"] = H5_FORMAT_NAME
    f.attrs["format_version"] = H5_FORMAT_VERSION
    f.attrs["feature_dim"] = feature_dim
    f.create_dataset(
        "img_id", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype("utf-8"), chunks=(1024,)
    )
    for name in _PER_IMAGE:
        f.create_dataset(name, shape=(0,), maxshape=(None,), dtype="<i8", chunks=(1024,))
    f.create_dataset("boxes", shape=(0, 4), maxshape=(None, 4), dtype="<f4", chunks=(1024, 4))
    rows = max(1, (1 << 20) // (4 * max(feature_dim, 1)))  # ~1 MB chunks
    f.create_dataset(
        "features",
        shape=(0, feature_dim),
        maxshape=(None, feature_dim),
        dtype="<f4",
        chunks=(rows, max(feature_dim, 1)) if feature_dim else None,
    )
    for name in ("objects_id", "attrs_id"):
        f.create_dataset(name, shape=(0,), maxshape=(None,), dtype="<i8", chunks=(4096,))
    for name in ("objects_conf", "attrs_conf"):
        f.create_dataset(name, shape=(0,), maxshape=(None,), dtype="<f4", chunks=(4096,))


def _check_h5(f: h5py.File, path: Path) -> None:
    if f.attrs.get("format") != H5_FORMAT_NAME:
        raise ValueError(
            f"{path}: not a feature file of this tool (root attribute format != "
            f"{H5_FORMAT_NAME!r}); choose another --out or pass --overwrite"
        )
    version = int(f.attrs.get("format_version", -1))
    if version != H5_FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version}, this tool reads {H5_FORMAT_VERSION}")


def _append_h5(f: h5py.File, regions: Sequence[RegionFeatures]) -> None:
    """Append ``regions`` to an open file of our layout (created on first use)."""
    if not regions:
        return
    dim = int(regions[0].features.shape[1])
    if "img_id" not in f:
        _create_h5_layout(f, feature_dim=dim)
    file_dim = int(f.attrs["feature_dim"])
    for region in regions:
        if region.num_boxes and region.features.shape[1] != file_dim:
            raise ValueError(
                f"image {region.image_id!r}: features have {region.features.shape[1]} "
                f"dimensions, the file holds {file_dim}"
            )
    if file_dim == 0 and any(r.num_boxes for r in regions):
        raise ValueError("cannot append boxes to a feature file created with feature_dim 0")
    images = int(f["img_id"].shape[0])
    boxes = int(f["boxes"].shape[0])
    counts = np.array([r.num_boxes for r in regions], dtype=np.int64)
    offsets = boxes + np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    new_images, new_boxes = images + len(regions), boxes + int(counts.sum())
    per_image = {
        "img_h": np.array([r.image_h for r in regions], np.int64),
        "img_w": np.array([r.image_w for r in regions], np.int64),
        "num_boxes": counts,
        "box_offset": offsets,
    }
    f["img_id"].resize((new_images,))
    f["img_id"][images:] = [r.image_id for r in regions]
    for name, values in per_image.items():
        f[name].resize((new_images,))
        f[name][images:] = values
    for name in _PER_BOX:
        parts = [getattr(r, name) for r in regions if r.num_boxes]
        dataset = f[name]
        dataset.resize((new_boxes, *dataset.shape[1:]))
        if parts:
            dataset[boxes:] = np.concatenate(parts).astype(ARRAY_DTYPES[name], copy=False)


def open_h5(path: str | os.PathLike[str]) -> h5py.File:
    """One of our HDF5 files, open read-only; ``ValueError`` for another layout or version."""
    path = Path(path)
    f = h5py.File(path, "r")
    try:
        _check_h5(f, path)
    except ValueError:
        f.close()
        raise
    return f


def read_h5_record(
    f: h5py.File, *, image_id: str, image_h: int, image_w: int, start: int, count: int
) -> RegionFeatures:
    """One record of an open file of our layout: rows ``start:start + count`` of the per-box
    datasets (``box_offset`` and ``num_boxes`` of the image)."""
    arrays = {name: f[name][start : start + count] for name in _PER_BOX}
    if count == 0:
        arrays["features"] = np.zeros((0, int(f.attrs["feature_dim"])), np.float32)
    return RegionFeatures(image_id=image_id, image_h=image_h, image_w=image_w, **arrays)


def iter_h5(path: str | os.PathLike[str]) -> Iterator[RegionFeatures]:
    """Records of one of our HDF5 files, in file order."""
    with open_h5(path) as f:
        ids = f["img_id"].asstr()[()] if f["img_id"].shape[0] else []
        heights, widths = f["img_h"][()], f["img_w"][()]
        counts, offsets = f["num_boxes"][()], f["box_offset"][()]
        for index, image_id in enumerate(ids):
            yield read_h5_record(
                f,
                image_id=str(image_id),
                image_h=int(heights[index]),
                image_w=int(widths[index]),
                start=int(offsets[index]),
                count=int(counts[index]),
            )


def _h5_ids(path: Path) -> list[str]:
    with h5py.File(path, "r") as f:
        _check_h5(f, path)
        return [str(x) for x in f["img_id"].asstr()[()]] if f["img_id"].shape[0] else []


def write_h5(
    path: str | os.PathLike[str],
    regions: Iterable[RegionFeatures],
    *,
    feature_dim: int = 0,
    chunk: int = 64,
    before_replace: Callable[[], None] | None = None,
) -> int:
    """Write a new HDF5 file atomically (:func:`weights.files.atomic_path`); returns the record
    count.

    ``feature_dim`` fixes ``D`` when there may be no record at all. ``before_replace`` runs
    once every record is written, just before the new file replaces ``path``.
    """
    path = Path(path)
    count = 0
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        pending: list[RegionFeatures] = []
        for region in regions:
            pending.append(region)
            if len(pending) >= chunk:
                _append_h5(f, pending)
                count += len(pending)
                pending = []
        _append_h5(f, pending)
        count += len(pending)
        if "img_id" not in f:
            _create_h5_layout(f, feature_dim=feature_dim)
        if before_replace is not None:
            before_replace()
    return count


class H5Writer:
    """HDF5 output that is a complete file at every moment (see the module docstring).

    Args:
        path: the ``.h5`` file.
        resume: keep what the file and its journal hold; otherwise start empty.
        feature_dim: ``D``, used only to lay out a file that ends up with no record.
        fold_min: fold the journal into the file once it holds this many records (or as many
            as the file, whichever is more), and always on :meth:`close`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        resume: bool,
        feature_dim: int = 0,
        fold_min: int = 256,
    ) -> None:
        self.path = Path(path)
        self._feature_dim = feature_dim
        self._fold_min = max(1, fold_min)
        # Left by a run killed while folding; the real file is intact. Only names exactly of
        # weights.files.atomic_path's making are ours to remove.
        for leftover in self.path.parent.glob(f".{glob.escape(self.path.name)}.*.tmp"):
            if is_temporary_name(leftover.name, self.path.name):
                leftover.unlink(missing_ok=True)
        self._file_ids: set[str] = set()
        if resume and self.path.exists():
            self._file_ids = set(_h5_ids(self.path))
        elif self.path.exists():
            self.path.unlink()
        self._journal = TsvWriter(journal_path(self.path), resume=resume)
        self._pending = len(self._journal.existing_ids() - self._file_ids)
        self._closed = False

    def existing_ids(self) -> set[str]:
        """Ids complete in the file or its journal when the writer was opened."""
        return self._file_ids | self._journal.existing_ids()

    def write(self, region: RegionFeatures) -> None:
        """Append ``region`` to the journal (durable on return); fold when it is due."""
        self._journal.write(region)
        self._pending += 1
        if self._pending >= max(self._fold_min, len(self._file_ids)):
            self.fold()

    def fold(self) -> None:
        """Rewrite the HDF5 file with the journal's records added, then empty the journal."""
        journal = self._journal.path
        fresh = [r for r in iter_tsv(journal) if r.image_id not in self._file_ids]
        if fresh or not self.path.exists():
            with atomic_path(self.path) as tmp:
                if self.path.exists():
                    shutil.copyfile(self.path, tmp)
                with h5py.File(tmp, "a" if self.path.exists() else "w") as f:
                    _append_h5(f, fresh)
                    if "img_id" not in f:
                        _create_h5_layout(f, feature_dim=self._feature_dim)
            self._file_ids.update(r.image_id for r in fresh)
        # A kill right here leaves records in both places; the next fold skips them by id.
        self._journal.truncate()
        self._pending = 0

    def close(self) -> None:
        """Fold what is left and remove the journal."""
        if self._closed:
            return
        self.fold()
        self._journal.close()
        self._journal.path.unlink()
        fsync_directory(self.path.parent)
        self._closed = True


# --- both ----------------------------------------------------------------------------------


def existing_paths(path: str | os.PathLike[str]) -> list[Path]:
    """Files a run writing ``path`` would clobber: the output and, for HDF5, its journal."""
    path = Path(path)
    candidates = [path]
    if output_format(path) == "hdf5":
        candidates.append(journal_path(path))
    return [p for p in candidates if p.exists()]


def check_output_policy(path: str | os.PathLike[str], mode: WriteMode) -> None:
    """Whether a run in ``mode`` may write ``path``: the one place that decides it.

    Raises:
        FileExistsError: ``create`` and the output (or its journal) exists; names the flags.
        FileNotFoundError: the output's folder does not exist.
        ValueError: an unknown ``mode``.
    """
    path = Path(path)
    if mode not in ("create", "overwrite", "resume"):
        raise ValueError(f"mode must be create, overwrite or resume, got {mode!r}")
    clobbered = existing_paths(path)
    if mode == "create" and clobbered:
        raise FileExistsError(
            f"output {clobbered[0]} already exists; pass --resume to finish that run or "
            "--overwrite to replace it"
        )
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output directory {path.parent} does not exist; create it first")


def open_writer(
    path: str | os.PathLike[str], *, mode: WriteMode, feature_dim: int = 0, fold_min: int = 256
) -> TsvWriter | H5Writer:
    """Open ``path`` for writing.

    Args:
        mode: ``create`` refuses existing output, ``overwrite`` starts afresh, ``resume`` keeps
            complete records (see :func:`check_output_policy`).
        feature_dim: ``D`` for an HDF5 file that may end up empty.
        fold_min: see :class:`H5Writer`.
    """
    fmt = output_format(path)
    path = Path(path)
    check_output_policy(path, mode)
    if mode == "overwrite":
        for existing in existing_paths(path):
            existing.unlink()
    if fmt == "tsv":
        return TsvWriter(path, resume=mode == "resume")
    return H5Writer(path, resume=mode == "resume", feature_dim=feature_dim, fold_min=fold_min)


def recorded_ids(path: str | os.PathLike[str], *, allow_partial: bool = True) -> set[str]:
    """Ids of the complete records a ``--resume`` of ``path`` keeps, read without changing
    anything: a TSV's complete lines, an HDF5 file's records and those of its journal. Empty
    when nothing exists yet.

    An incomplete last line (what a kill leaves) is not counted; with ``allow_partial=False``
    it is a ``ValueError`` instead (a file that may not be ours). A line that is not a record
    followed by more lines is always a ``ValueError``; so is an HDF5 file of another layout.
    """
    path = Path(path)
    tsv = path if output_format(path) == "tsv" else journal_path(path)
    ids = set() if tsv == path or not path.exists() else set(_h5_ids(path))
    if tsv.exists():
        complete, bad_at = _scan_tsv(tsv)
        if bad_at is not None and not allow_partial:
            raise ValueError(
                f"{tsv}: the text from byte {bad_at} on is not an obj36 record, and no manifest "
                "says this tool wrote the file"
            )
        ids.update(complete)
    return ids


def read_features(path: str | os.PathLike[str]) -> Iterator[RegionFeatures]:
    """Records of a TSV or HDF5 feature file, in file order."""
    if output_format(path) == "tsv":
        return iter_tsv(path)
    return iter_h5(path)


def read_ids(path: str | os.PathLike[str]) -> list[str]:
    """Image ids of a TSV or HDF5 feature file, in file order (without decoding arrays)."""
    path = Path(path)
    if output_format(path) == "tsv":
        ids, bad_at = _scan_tsv(path)
        if bad_at is not None:
            raise ValueError(f"{path}: incomplete last record; run with --resume to repair it")
        return ids
    return _h5_ids(path)


# --- merging -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureFileFacts:
    """What ``merge`` checks of an input file before writing anything, read without decoding
    any array.

    Attributes:
        ids: image ids, in file order.
        feature_dims: the feature dimensions ``D`` its records have: one value for a sound
            file, none when no record has a box (an HDF5 file with records has its
            ``feature_dim``).
        min_boxes: fewest boxes of a record (None without records).
        max_boxes: most boxes of a record (None without records).
    """

    ids: tuple[str, ...]
    feature_dims: frozenset[int]
    min_boxes: int | None
    max_boxes: int | None


def _tsv_facts(path: Path) -> FeatureFileFacts:
    ids: list[str] = []
    dims: set[int] = set()
    counts: list[int] = []
    with open(path, "rb") as stream:
        for number, line in enumerate(stream, start=1):
            fields = _split_line(line) if line.endswith(b"\n") else None
            if fields is None:
                raise ValueError(
                    f"{path}: line {number} is not a complete obj36 TSV record (a run of this "
                    "tool that is still writing the file, or was killed, leaves an incomplete "
                    "last line: finish it first with --resume)"
                )
            n = int(fields[7])
            if n:
                dims.add(_b64_size(fields[9]) // (4 * n))
            ids.append(_unquote(fields[0]))
            counts.append(n)
    return FeatureFileFacts(
        ids=tuple(ids),
        feature_dims=frozenset(dims),
        min_boxes=min(counts, default=None),
        max_boxes=max(counts, default=None),
    )


def _h5_facts(path: Path) -> FeatureFileFacts:
    if not h5py.is_hdf5(path):
        raise ValueError(f"{path}: not an HDF5 file")
    with h5py.File(path, "r") as f:
        layout = f.attrs.get("format")
        if layout != H5_FORMAT_NAME:
            raise ValueError(
                f"{path}: an HDF5 file of another layout (root attribute format is "
                f"{layout!r}, not {H5_FORMAT_NAME!r}); merge reads feature files of this tool"
            )
        version = int(f.attrs.get("format_version", -1))
        if version != H5_FORMAT_VERSION:
            raise ValueError(f"{path}: format_version {version}, merge reads {H5_FORMAT_VERSION}")
        ids = tuple(str(x) for x in f["img_id"].asstr()[()]) if f["img_id"].shape[0] else ()
        counts = [int(n) for n in f["num_boxes"][()]]
        dim = int(f.attrs["feature_dim"])
    return FeatureFileFacts(
        ids=ids,
        feature_dims=frozenset({dim} if ids else ()),
        min_boxes=min(counts, default=None),
        max_boxes=max(counts, default=None),
    )


def feature_file_facts(path: str | os.PathLike[str]) -> FeatureFileFacts:
    """The ids, feature dimensions and box counts of a TSV or HDF5 feature file.

    Raises:
        ValueError: an unknown suffix, a line that is not a complete record (an incomplete
            last line included), not an HDF5 file, or an HDF5 file of another layout.
    """
    path = Path(path)
    return _tsv_facts(path) if output_format(path) == "tsv" else _h5_facts(path)


def _one_dimension(regions: Iterable[RegionFeatures]) -> Iterator[RegionFeatures]:
    """``regions`` unchanged; ``ValueError`` at the first record whose feature dimension
    differs from the first record's (records without boxes have none)."""
    first: tuple[str, int] | None = None
    for region in regions:
        if region.num_boxes:
            dim = int(region.features.shape[1])
            if first is None:
                first = (region.image_id, dim)
            elif dim != first[1]:
                raise ValueError(
                    f"image {region.image_id!r} has {dim}-d features, image {first[0]!r} "
                    f"{first[1]}-d; one feature file holds one feature dimension"
                )
        yield region


def merge_outputs(
    inputs: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    feature_dim: int = 0,
    before_replace: Callable[[], None] | None = None,
) -> int:
    """Merge feature files (TSV and/or HDF5, e.g. shard outputs) into ``output``.

    ``before_replace`` runs once every record is written, just before the merged file
    replaces ``output`` (a refused or failed merge never runs it).

    Records are interleaved by image id (each shard of one run is sorted by id), so merging the
    shards of a run gives the file a single run would have written. The output is written to a
    temporary file and renamed, so it is complete or absent. Returns the record count.

    Raises:
        ValueError: an id occurs in more than one input, an HDF5 input has a journal (records
            a run has not folded in yet), the inputs' records have different feature
            dimensions, or an input is damaged (no temporary file is left).
        FileExistsError: ``output`` exists and ``overwrite`` is false.
    """
    output = Path(output)
    fmt = output_format(output)
    if not inputs:
        raise ValueError("merge needs at least one input file")
    resolved_out = output.resolve()
    for item in inputs:
        if Path(item).resolve() == resolved_out:
            raise ValueError(f"merge: the output {output} is also an input")
    if output.exists() and not overwrite:
        raise FileExistsError(f"output {output} already exists; pass --overwrite to replace it")
    for item in inputs:
        if output_format(item) == "hdf5" and journal_path(item).exists():
            raise ValueError(
                f"{item} has a journal {journal_path(item)} of records not yet folded into it; "
                "finish that run first with --resume"
            )
    seen: dict[str, Path] = {}
    for item in inputs:
        for image_id in read_ids(item):
            if image_id in seen:
                raise ValueError(
                    f"image id {image_id!r} is in both {seen[image_id]} and {item}; "
                    "merge inputs must not overlap"
                )
            seen[image_id] = Path(item)
    streams = [read_features(item) for item in inputs]
    merged = _one_dimension(heapq.merge(*streams, key=lambda region: region.image_id))
    if fmt == "hdf5":
        return write_h5(output, merged, feature_dim=feature_dim, before_replace=before_replace)
    count = 0
    with atomic_path(output) as tmp, open(tmp, "wb") as stream:
        for region in merged:
            stream.write(encode_tsv_line(region))
            count += 1
        if before_replace is not None:
            before_replace()
    return count
