"""Feature-file outputs: which format a name is, whether a run may write it, opening its
writer, what a ``--resume`` keeps, and merging finished files into one.

The formats themselves live beside the other formats: LXMERT's obj36 TSV in
:mod:`pipeline.features.formats.tsv` (a kill leaves at most one partial last line, which ``resume``
cuts away) and our HDF5 layout in :mod:`pipeline.features.formats.h5` (a complete file at every
moment, with a journal of the records not yet folded in). Their public names are re-exported here,
so ``from pipeline.features.output import encode_tsv_line`` and the like keep working.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import h5py

from detector.structures import RegionFeatures
from pipeline.features.formats.h5 import (
    H5_FORMAT_NAME,
    H5_FORMAT_VERSION,
    H5_LAYOUT,
    H5Writer,
    check_h5,
    h5_ids,
    iter_h5,
    journal_path,
    open_h5,
    read_h5_record,
    write_h5,
)
from pipeline.features.formats.tsv import (
    TsvWriter,
    b64_size,
    decode_tsv_line,
    encode_tsv_line,
    iter_tsv,
    scan_tsv,
    split_tsv_line,
    tsv_line_id,
    unquote_id,
)
from pipeline.features.suffixes import H5_SUFFIXES, TSV_SUFFIXES
from weights.files import atomic_path

__all__ = [
    "H5_FORMAT_NAME",
    "H5_FORMAT_VERSION",
    "H5_LAYOUT",
    "FeatureFileFacts",
    "FeatureWriter",
    "Format",
    "H5Writer",
    "TsvWriter",
    "WriteMode",
    "check_output_policy",
    "decode_tsv_line",
    "encode_tsv_line",
    "existing_paths",
    "feature_file_facts",
    "iter_h5",
    "iter_tsv",
    "journal_path",
    "merge_outputs",
    "open_h5",
    "open_writer",
    "output_format",
    "read_features",
    "read_h5_record",
    "read_ids",
    "recorded_ids",
    "tsv_line_id",
    "write_h5",
]

Format = Literal["tsv", "hdf5"]
WriteMode = Literal["create", "overwrite", "resume"]


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
    if suffix in TSV_SUFFIXES:
        return "tsv"
    if suffix in H5_SUFFIXES:
        return "hdf5"
    raise ValueError(f"output {path}: unknown format; name it *.tsv (LXMERT obj36) or *.h5")


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
    ids = set() if tsv == path or not path.exists() else set(h5_ids(path))
    if tsv.exists():
        complete, bad_at = scan_tsv(tsv)
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
        ids, bad_at = scan_tsv(path)
        if bad_at is not None:
            raise ValueError(f"{path}: incomplete last record; run with --resume to repair it")
        return ids
    return h5_ids(path)


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
            fields = split_tsv_line(line) if line.endswith(b"\n") else None
            if fields is None:
                raise ValueError(
                    f"{path}: line {number} is not a complete obj36 TSV record (a run of this "
                    "tool that is still writing the file, or was killed, leaves an incomplete "
                    "last line: finish it first with --resume)"
                )
            n = int(fields[7])
            if n:
                dims.add(b64_size(fields[9]) // (4 * n))
            ids.append(unquote_id(fields[0]))
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
        check_h5(f, path, remedy="merge reads feature files of this tool")
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
