"""Extraction into the formats written through a TSV: ``--format npz-dir|lmdb|parquet``.

A run whose output is one of :data:`STAGED_FORMATS` writes LXMERT's obj36 TSV inside the work
folder ``OUT.partial/`` (beside OUT, under OUT's lock), with its manifest there, and so every
guarantee of a TSV run: each record whole on disk when written, a kill losing at most the last
one, ``--resume`` going on after the complete ones. Once the run has been through every image,
the TSV is converted into OUT's format inside the work folder, moved into place (an existing
OUT stays as it was until then), OUT's manifest is written, and the work folder is removed.

``--resume`` finds, in this order: the work folder of an interrupted run (continued, then
converted), or a finished OUT. A finished OUT with images left to do is first converted back
into the work folder's TSV, which only a lossless format stored at float32 allows (npz-dir,
parquet); otherwise the run is refused before anything is written. A run with ``--shard``
writes TSV or HDF5 shards (``merge`` joins those; ``convert`` makes any format of the result).
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.features.formats.common import WriteOptions
from pipeline.features.formats.partial import partial_path
from pipeline.features.formats.registry import FORMATS, LOSSLESS, detect_format, open_part
from pipeline.features.manifest import manifest_path, now_utc, own_manifest, write_manifest
from pipeline.features.suffixes import (
    H5_SUFFIXES,
    OUTPUT_FORMATS,
    PARQUET_SUFFIXES,
    STAGED_FORMATS,
    TSV_SUFFIXES,
)
from weights.files import atomic_path, fsync_directory

__all__ = [
    "OUTPUT_FORMATS",
    "STAGED_FORMATS",
    "FinishedOutput",
    "check_can_extend",
    "check_staged_output",
    "finish_staged",
    "finished_output",
    "output_format_of",
    "staging_path",
    "unstage",
]


def output_format_of(out: Path, given: str | None) -> str:
    """The format ``--out OUT`` (and ``--format``, when given) names.

    Raises:
        ValueError: a suffix of another format, or a name without a suffix and no
            ``--format``; the message names the flags to use.
    """
    suffix = out.suffix.lower()
    by_suffix = {**dict.fromkeys(TSV_SUFFIXES, "tsv"), **dict.fromkeys(H5_SUFFIXES, "h5")}
    by_suffix.update(dict.fromkeys(PARQUET_SUFFIXES, "parquet"))
    named = by_suffix.get(suffix)
    if given is None:
        if named is None:
            raise ValueError(
                f"--out {out}: unknown format; name it *.tsv (LXMERT obj36), *.h5 or "
                "*.parquet, or give --format npz-dir or --format lmdb for a folder"
            )
        return named
    if named is not None and named != given:
        raise ValueError(f"--out {out} names a {named} file, but --format is {given}")
    if named is None and suffix and not FORMATS[given].folder:
        wanted = " or ".join(f"*{x}" for x in FORMATS[given].suffixes)
        raise ValueError(f"--out {out}: a --format {given} output is named {wanted}")
    return given


def staging_path(out: Path) -> Path:
    """``feats.parquet`` -> ``feats.parquet.partial/feats.parquet.tsv``: the TSV a run into a
    staged format writes."""
    return partial_path(out) / (out.name + ".tsv")


def check_staged_output(out: Path, fmt: str, mode: str) -> None:
    """Whether a run in ``mode`` may write ``out`` in staged format ``fmt`` (nothing written):
    the output and its work folder must be this tool's, then ``create`` needs both absent.

    Raises:
        FileExistsError: ``create`` and the output or its work folder exists.
        FileNotFoundError: the output's folder does not exist.
        ValueError: a symbolic link, a file where a folder goes (or the reverse), an output
            or work folder this tool did not write.
    """
    spec = FORMATS[fmt]
    work = partial_path(out)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"output directory {out.parent} does not exist; create it first")
    if out.is_symlink():
        raise ValueError(
            f"--out {out} is a symbolic link; name the output itself (its work folder and "
            "manifest are written beside the name given)"
        )
    if out.exists() and out.is_dir() != spec.folder:
        kind = "folder" if spec.folder else "file"
        raise ValueError(f"--out {out}: --format {fmt} writes a {kind}, and {out} is not one")
    if (work.exists() or work.is_symlink()) and not _is_our_work_folder(work, out):
        raise ValueError(
            f"{work} is in the way and is not the work folder of an extraction into {out} "
            f"(no {manifest_path(staging_path(out)).name} of this tool in it); move it away"
        )
    # An output is ours by its manifest, or by our work folder (a kill between moving a
    # first output into place and writing its manifest leaves just that).
    claimed = own_manifest(out) is not None or own_manifest(staging_path(out)) is not None
    if out.exists() and not claimed:
        raise ValueError(
            f"--out {out} exists and no manifest of this tool says it wrote it "
            f"({manifest_path(out)}); it is never replaced or added to: choose another --out"
        )
    if mode == "create" and (out.exists() or work.exists()):
        found = out if out.exists() else work
        raise FileExistsError(
            f"output {found} already exists; pass --resume to finish that run or "
            "--overwrite to replace it"
        )


def _is_our_work_folder(work: Path, out: Path) -> bool:
    """``work`` holds our staging manifest, or nothing (a kill right after making it)."""
    if not work.is_dir() or work.is_symlink():
        return False
    return own_manifest(staging_path(out)) is not None or not any(work.iterdir())


@dataclass(frozen=True)
class FinishedOutput:
    """A finished staged output that ``--resume`` will add to.

    Attributes:
        path: the output.
        format: its format.
        ids: the image ids it holds.
        manifest: its manifest.
    """

    path: Path
    format: str
    ids: frozenset[str]
    manifest: dict[str, Any]


def finished_output(out: Path, fmt: str) -> FinishedOutput:
    """What a finished output holds, read without changing it.

    Raises:
        ValueError: not of the format ``--format`` names, or unreadable.
    """
    found = detect_format(out)
    if found != fmt:
        raise ValueError(f"--resume {out}: it is a {found} output, not {fmt}")
    part = open_part(out, fmt)
    try:
        ids = frozenset(part.ids)
    finally:
        part.close()
    manifest = own_manifest(out)
    if manifest is None:  # claimed only by a work folder that lost its TSV
        raise ValueError(
            f"--resume {out}: no manifest of this tool beside it ({manifest_path(out)}), so "
            "its records cannot be added to; pass --overwrite to extract it again"
        )
    return FinishedOutput(path=out, format=fmt, ids=ids, manifest=dict(manifest))


def check_can_extend(finished: FinishedOutput) -> None:
    """``ValueError`` when a finished output cannot take more records exactly (it would be
    read back into a TSV, which only a lossless format at float32 gives bit for bit)."""
    dtype = finished.manifest.get("feature_dtype", "float32")
    if finished.format not in LOSSLESS or dtype != "float32":
        raise ValueError(
            f"--resume {finished.path}: a finished {finished.format} output with features "
            f"stored as {dtype} cannot be read back exactly, so no record is added to it; "
            "extract the new images into another --out (or start again with --overwrite)"
        )


def unstage(finished: FinishedOutput) -> None:
    """Write a finished output back into its work folder's TSV (and the manifest beside it),
    so the run resumes it as a TSV; the output itself is not touched. The manifest comes
    first and the TSV appears whole, so a kill in between leaves a work folder that the next
    ``--resume`` unstages again."""
    staging = staging_path(finished.path)
    staging.parent.mkdir(exist_ok=True)
    manifest = {**finished.manifest, "output": str(staging), "format": "tsv"}
    write_manifest(manifest_path(staging), manifest)
    with atomic_path(staging) as tmp:
        FORMATS["tsv"].write(tmp, FORMATS[finished.format].iterate(finished.path), WriteOptions())


def finish_staged(out: Path, fmt: str, options: WriteOptions, *, quiet: bool) -> int:
    """Convert the work folder's finished TSV into ``out`` (``fmt``), move it into place,
    write its manifest and remove the work folder; returns the record count. Interrupted,
    it leaves the work folder, which ``--resume`` finishes."""
    from tqdm import tqdm

    from pipeline.features.formats.place import move_into_place, remove_output
    from pipeline.features.formats.tsv import iter_tsv

    spec, staging = FORMATS[fmt], staging_path(out)
    work = staging.parent
    target = work / out.name
    remove_output(target, spec)  # what an interrupted conversion left
    records = tqdm(iter_tsv(staging), disable=quiet, unit="rec", desc=f"to {fmt}", file=sys.stderr)
    with records as bar:
        count = spec.write(target, bar, options)
    manifest = own_manifest(staging)
    assert manifest is not None  # the run just wrote it
    move_into_place(target, out, spec)  # the old manifest stays until replaced
    final = {
        **manifest,
        "output": str(out),
        "format": fmt,
        "feature_dtype": options.feature_dtype,
        "updated": now_utc(),
        "staged": {"format": "tsv", "records": count},
    }
    write_manifest(manifest_path(out), final)
    shutil.rmtree(work)
    fsync_directory(out.parent)
    return count
