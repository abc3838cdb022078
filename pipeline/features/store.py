"""Random access to feature files by image id: :class:`FeatureStore`.

LXMERT's own loader reads a whole TSV into memory (hundreds of GB for COCO). The store keeps
only an index: for a TSV the byte range of each line (:mod:`pipeline.features.index`, built once
and cached), for our HDF5 layout its ``box_offset`` and ``num_boxes`` datasets. A record is
read from disk when it is asked for, with the writers' own decoders.

Files are opened lazily in each process and never pickled, so a store can be handed to
DataLoader workers, forked or spawned: each opens its own handles on first access.

What is wrong with a file (a corrupt record, a file changed since it was opened) is a
:class:`FeatureDataError`, naming the file and line: the user's data, never the code's fault.
A TSV index that a read finds wrong (its stamp matched, its offsets did not) is rebuilt once
and the read retried.
"""

from __future__ import annotations

import bisect
import operator
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol, SupportsIndex

import h5py
import numpy as np
import torch.utils.data

from detector.structures import RegionFeatures
from pipeline.features.formats.registry import open_part, store_format
from pipeline.features.index import TsvIndex, load_tsv_index, rebuild_tsv_index
from pipeline.features.output import (
    decode_tsv_line,
    journal_path,
    open_h5,
    read_h5_record,
    tsv_line_id,
)


class _Part(Protocol):
    """One file of a store."""

    path: Path
    ids: tuple[str, ...]

    def read(self, local: int) -> RegionFeatures: ...

    def where(self, local: int) -> str: ...

    def close(self) -> None: ...


class FeatureDataError(ValueError):
    """A feature file's record cannot be read as it should: corrupt bytes, or the file changed
    since it was opened. Names the file and line (or record): a fault of the data, which
    commands report as a usage error (exit 2)."""


class StaleIndexError(FeatureDataError):
    """A TSV line is not where its index says (:meth:`FeatureStore.get` rebuilds the index and
    retries once)."""


def _changed(path: Path, what: str) -> FeatureDataError:
    return FeatureDataError(
        f"{path}: {what}; the file changed after the feature store opened it: open it again"
    )


class _TsvPart:
    """An obj36 TSV read by byte offsets (``os.pread``: no shared file position)."""

    def __init__(self, path: Path, index: TsvIndex, *, cache_dir: Path | None) -> None:
        self.path = path
        self.ids = index.ids
        self._offsets = index.offsets
        self.index_file = index.location
        self.cache_dir = cache_dir
        self._fd: int | None = None
        self._pid: int | None = None

    def _handle(self) -> int:
        if self._fd is not None and self._pid != os.getpid():
            os.close(self._fd)  # this process's copy of its parent's descriptor
            self._fd = None
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            self._pid = os.getpid()
        return self._fd

    def where(self, local: int) -> str:
        return f"{self.path}:{local + 1}"

    def read(self, local: int) -> RegionFeatures:
        start, end = int(self._offsets[local]), int(self._offsets[local + 1])
        line = os.pread(self._handle(), end - start, start)
        source = self.where(local)
        if len(line) != end - start:
            raise StaleIndexError(f"{source}: the line ends past the end of the file")
        if tsv_line_id(line) != self.ids[local]:
            raise StaleIndexError(
                f"{source}: line {local + 1} holds image {tsv_line_id(line)!r}, indexed as "
                f"{self.ids[local]!r}"
            )
        try:
            return decode_tsv_line(line, source=source)
        except ValueError as error:
            raise FeatureDataError(str(error)) from None

    def reindexed(self) -> _TsvPart:
        """This file with a fresh index (:func:`rebuild_tsv_index`)."""
        index = rebuild_tsv_index(self.path, cache_dir=self.cache_dir)
        return _TsvPart(self.path, index, cache_dir=self.cache_dir)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # in a forked child, only the child's copy
        self._fd = self._pid = None

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_fd": None, "_pid": None}


class _H5Part:
    """One of our HDF5 files; its per-image datasets are read once, boxes on demand."""

    def __init__(self, path: Path) -> None:
        if journal_path(path).exists():
            raise ValueError(
                f"{path} has a journal {journal_path(path)} of records not yet folded into it; "
                "finish that run first (extract_features --resume)"
            )
        stat = os.stat(path)
        self.path = path
        self._stamp = (stat.st_size, stat.st_mtime_ns)
        with open_h5(path) as f:
            ids = f["img_id"].asstr()[()] if f["img_id"].shape[0] else []
            self.ids = tuple(str(image_id) for image_id in ids)
            columns = ("img_h", "img_w", "box_offset", "num_boxes")
            self._per_image = np.stack([np.asarray(f[name][()], np.int64) for name in columns])
        self._file: h5py.File | None = None
        self._pid: int | None = None

    def _handle(self) -> h5py.File:
        if self._file is not None and self._pid != os.getpid():
            self._file.close()  # this process's copy of its parent's handle
            self._file = None
        if self._file is None:
            stat = os.stat(self.path)
            if (stat.st_size, stat.st_mtime_ns) != self._stamp:
                raise _changed(self.path, "its size or modification time differs")
            self._file = open_h5(self.path)
            self._pid = os.getpid()
        return self._file

    def where(self, local: int) -> str:
        return f"{self.path} (record {local + 1})"

    def read(self, local: int) -> RegionFeatures:
        image_h, image_w, start, count = (int(v) for v in self._per_image[:, local])
        try:
            return read_h5_record(
                self._handle(),
                image_id=self.ids[local],
                image_h=image_h,
                image_w=image_w,
                start=start,
                count=count,
            )
        except (ValueError, KeyError, OSError) as error:  # h5py's errors of a damaged file
            if isinstance(error, FeatureDataError):
                raise
            raise FeatureDataError(f"{self.where(local)}: {error}") from None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()  # in a forked child, only the child's copy
        self._file = self._pid = None

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_file": None, "_pid": None}


def _open_part(path: Path, *, cache_dir: Path | None) -> _Part:
    # Every other format (ban-h5, npz-dir, UNITER lmdb, parquet) has its reader in
    # pipeline.features.formats; TSV and our HDF5 keep the store's own indexed readers.
    fmt = store_format(path)
    if fmt == "tsv":
        return _TsvPart(path, load_tsv_index(path, cache_dir=cache_dir), cache_dir=cache_dir)
    if fmt == "h5":
        return _H5Part(path)
    return open_part(path, fmt)


class FeatureStore(torch.utils.data.Dataset[RegionFeatures]):
    """Records of one or several feature files, by position or by image id, read on demand.

    Positions follow the files in the order given, each in file order. Memory holds the ids and
    the index only (a few dozen bytes per image), never the features. Build it with
    :meth:`open`. Picklable: a copy reopens its files on first access (DataLoader workers).
    """

    def __init__(self, *, parts: Sequence[_Part]) -> None:
        self._join(parts)

    def _join(self, parts: Sequence[_Part]) -> None:
        """Positions and the id lookup of ``parts`` joined in order."""
        self._parts = tuple(parts)
        self._starts: list[int] = []
        lookup: dict[str, int] = {}
        total = 0
        for part in self._parts:
            self._starts.append(total)
            for local, image_id in enumerate(part.ids):
                if image_id in lookup:
                    raise ValueError(
                        f"image id {image_id!r} is in {self._where(lookup[image_id])} and in "
                        f"{part.where(local)}; joined feature files must not share an id"
                    )
                lookup[image_id] = total + local
            total += len(part.ids)
        self._lookup = lookup
        self._ids = tuple(image_id for part in self._parts for image_id in part.ids)

    @classmethod
    def open(cls, *paths: str | os.PathLike[str], cache_dir: Path | None = None) -> FeatureStore:
        """Open and join feature files: obj36 TSVs (ours or LXMERT's), our HDF5 files, and
        every format of :mod:`pipeline.features.formats` (ban-h5, npz-dir, UNITER lmdb, parquet).

        Args:
            paths: one or more ``.tsv``/``.h5``/``.hdf5`` files, e.g. the shards of one run or
                train2014 and val2014.
            cache_dir: where TSV indexes go when they cannot lie beside their TSV (default
                :func:`pipeline.features.index.index_cache_dir`).

        Raises:
            ValueError: no path; an unknown suffix; a TSV line before the last that is not a
                complete record (names the file and line); an HDF5 file of another layout or
                with an unfolded journal; an id in two places (names both).
            FileNotFoundError: a file does not exist.
        """
        if not paths:
            raise ValueError("FeatureStore.open needs at least one feature file")
        parts = [_open_part(Path(path), cache_dir=cache_dir) for path in paths]
        return cls(parts=parts)

    @property
    def paths(self) -> tuple[Path, ...]:
        """The files, in the order given."""
        return tuple(part.path for part in self._parts)

    def __len__(self) -> int:
        return len(self._ids)

    def _locate(self, index: int) -> tuple[_Part, int]:
        part = bisect.bisect_right(self._starts, index) - 1
        return self._parts[part], index - self._starts[part]

    def _where(self, index: int) -> str:
        part, local = self._locate(index)
        return part.where(local)

    def __getitem__(self, index: SupportsIndex) -> RegionFeatures:
        """Record ``index`` of the joined order (an int or numpy integer; negative counts
        from the end).

        Raises:
            IndexError: out of range.
            FeatureDataError: a corrupt record (names file and line), or a file changed
                since :meth:`open` (a TSV whose lines moved is indexed again, once).
        """
        position = operator.index(index)
        if position < 0:
            position += len(self._ids)
        if not 0 <= position < len(self._ids):
            raise IndexError(f"record {index} of a feature store of {len(self._ids)}")
        part, local = self._locate(position)
        try:
            return part.read(local)
        except StaleIndexError:
            if not isinstance(part, _TsvPart):
                raise
            return self._read_reindexed(part, self._ids[position])

    def _read_reindexed(self, stale: _TsvPart, image_id: str) -> RegionFeatures:
        """Record ``image_id`` after rebuilding the index of ``stale`` (a TSV whose index
        pointed at the wrong bytes), once; a second miss names the index file to delete."""
        stale.close()
        try:
            fresh = stale.reindexed()
            self._join([fresh if part is stale else part for part in self._parts])
        except ValueError as error:  # a line that is not a record; an id now in two files
            raise FeatureDataError(str(error)) from None
        position = self._lookup.get(image_id)
        if position is None:
            raise _changed(fresh.path, f"image {image_id!r} is no longer in it")
        part, local = self._locate(position)
        try:
            return part.read(local)
        except StaleIndexError as error:
            index = fresh.index_file or "the index (held in memory)"
            raise FeatureDataError(
                f"{error}; rebuilding the index did not help: delete {index} and open "
                f"{fresh.path} again"
            ) from None

    def ids(self) -> tuple[str, ...]:
        """Image ids in the joined order."""
        return self._ids

    def __contains__(self, image_id: object) -> bool:
        return isinstance(image_id, str) and image_id in self._lookup

    def get(self, image_id: str) -> RegionFeatures:
        """The record of ``image_id``; ``KeyError`` naming the id and the files."""
        position = self._lookup.get(image_id)
        if position is None:
            files = ", ".join(str(path) for path in self.paths)
            raise KeyError(f"image id {image_id!r} is not in the feature files {files}")
        return self[position]

    def close(self) -> None:
        """Close this process's open files (a later access opens them again)."""
        for part in self._parts:
            part.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
