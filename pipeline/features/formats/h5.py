"""Our HDF5 layout (:data:`H5_LAYOUT`): create, check, append, read by record, and the two
writers: :func:`write_h5` (a new file, atomically) and :class:`H5Writer` (an output that is a
complete file at every moment of a run).

While a run is going, :class:`H5Writer` appends records to a journal beside the file
(``out.h5.journal.tsv``, the TSV format of :mod:`pipeline.features.formats.tsv`); the HDF5 file is
only ever replaced whole (written to a temporary file beside it, fsynced, then renamed:
:mod:`weights.files`), so at any moment it is a complete, readable file. The journal is folded
into it every time it holds as many records as the file (at least ``fold_min``) and when the
writer closes, so rewriting stays linear in the output size overall.

Split from :mod:`pipeline.features.output` (which re-exports the public names).
"""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from detector.structures import ARRAY_DTYPES, RegionFeatures
from pipeline.features.formats.tsv import TsvWriter, iter_tsv
from weights.files import atomic_path, fsync_directory, is_temporary_name

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
PER_IMAGE = ("img_h", "img_w", "num_boxes", "box_offset")
PER_BOX = ("boxes", "features", "objects_id", "objects_conf", "attrs_id", "attrs_conf")


def journal_path(path: str | os.PathLike[str]) -> Path:
    """Where an HDF5 output keeps the records not yet folded in: ``out.h5.journal.tsv``."""
    path = Path(path)
    return path.with_name(path.name + ".journal.tsv")


def _create_h5_layout(f: h5py.File, *, feature_dim: int) -> None:
    f.attrs["format"] = H5_FORMAT_NAME
    f.attrs["format_version"] = H5_FORMAT_VERSION
    f.attrs["feature_dim"] = feature_dim
    f.create_dataset(
        "img_id", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype("utf-8"), chunks=(1024,)
    )
    for name in PER_IMAGE:
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


def check_h5(
    f: h5py.File, path: Path, *, remedy: str = "choose another --out or pass --overwrite"
) -> None:
    """``f`` is a feature file of this tool's layout and version; else a ``ValueError`` naming
    ``path``, what it found and the caller's ``remedy`` (the one check of the layout, for the
    writers that append and for merge)."""
    layout = f.attrs.get("format")
    if layout != H5_FORMAT_NAME:
        raise ValueError(
            f"{path}: an HDF5 file of another layout (root attribute format is {layout!r}, not "
            f"{H5_FORMAT_NAME!r}), not a feature file of this tool; {remedy}"
        )
    version = int(f.attrs.get("format_version", -1))
    if version != H5_FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {version}, this tool reads {H5_FORMAT_VERSION}; {remedy}"
        )


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
    for name in PER_BOX:
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
        check_h5(f, path)
    except ValueError:
        f.close()
        raise
    return f


def read_h5_record(
    f: h5py.File, *, image_id: str, image_h: int, image_w: int, start: int, count: int
) -> RegionFeatures:
    """One record of an open file of our layout: rows ``start:start + count`` of the per-box
    datasets (``box_offset`` and ``num_boxes`` of the image)."""
    arrays = {name: f[name][start : start + count] for name in PER_BOX}
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


def h5_ids(path: Path) -> list[str]:
    with h5py.File(path, "r") as f:
        check_h5(f, path)
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
            self._file_ids = set(h5_ids(self.path))
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
