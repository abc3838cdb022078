"""``extract_features merge SHARD... --out X``: join feature files (the shards of one run).

Also runnable as ``python -m pipeline.merge SHARD... --out X``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.command import Command, run_command
from pipeline.exits import EXIT_OK, UsageError
from pipeline.lock import hold_output_lock
from pipeline.manifest import manifest_path, now_utc, read_manifest, write_manifest
from pipeline.writers import merge_outputs


@dataclass(frozen=True)
class MergeSettings:
    """What ``extract_features merge`` was asked to do."""

    inputs: tuple[Path, ...]
    out: Path
    overwrite: bool
    quiet: bool


def build_merge_parser() -> argparse.ArgumentParser:
    """The ``extract_features merge`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="extract_features merge",
        description=(
            "Merge feature files (typically the shard outputs of one run) into one. Records are "
            "interleaved by image id, so the shards of a run merge into exactly the file a "
            "single run would have written. Inputs and output may be TSV or HDF5 in any mix; "
            "an id present in two inputs is an error. The output is written to a temporary "
            "file and renamed. Shard manifests are combined into OUT.<ext>.manifest.json."
        ),
    )
    parser.add_argument("inputs", nargs="+", type=Path, metavar="FILE", help="files to merge")
    parser.add_argument("-o", "--out", required=True, type=Path, help="merged *.tsv or *.h5")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    verbosity.add_argument(
        "-v", "--verbose", action="store_true", help="print the traceback of an unexpected error"
    )
    return parser


def validate_merge(args: argparse.Namespace) -> MergeSettings:
    """The merge's settings from its parsed flags."""
    return MergeSettings(
        inputs=tuple(args.inputs), out=args.out, overwrite=args.overwrite, quiet=args.quiet
    )


def _sources(inputs: Sequence[Path]) -> tuple[list[dict[str, Any]], list[Any]]:
    """Each input with its manifest (when it has one), and every failure they list."""
    sources: list[dict[str, Any]] = []
    failures: list[Any] = []
    for path in inputs:
        entry: dict[str, Any] = {"path": str(path)}
        if manifest_path(path).is_file():
            shard_manifest = read_manifest(manifest_path(path))
            entry["manifest"] = shard_manifest
            failures.extend(shard_manifest.get("failures", []))
        sources.append(entry)
    return sources, failures


def run_merge(settings: MergeSettings) -> int:
    """Join the inputs into the output and write its manifest; returns the exit code.

    Raises:
        UsageError: a missing input, an existing output without ``--overwrite``, overlapping
            or damaged inputs.
    """
    for path in settings.inputs:
        if not path.is_file():
            raise UsageError(f"merge input {path} does not exist")
    with contextlib.ExitStack() as stack:
        hold_output_lock(stack, settings.out)
        try:
            count = merge_outputs(settings.inputs, settings.out, overwrite=settings.overwrite)
        except (FileExistsError, ValueError) as error:
            raise UsageError(str(error)) from error
        sources, failures = _sources(settings.inputs)
        write_manifest(
            manifest_path(settings.out),
            {
                "status": "merged",
                "output": str(settings.out),
                "updated": now_utc(),
                "counts": {"records_in_output": count, "failed": len(failures)},
                "failures": failures,
                "sources": sources,
            },
        )
    if not settings.quiet:
        print(
            f"extract_features merge: {count} records from {len(settings.inputs)} files "
            f"-> {settings.out}",
            file=sys.stderr,
        )
    return EXIT_OK


MERGE_COMMAND = Command(
    name="merge",
    summary="join feature files (the shards of one run) into one",
    build_parser=build_merge_parser,
    run=lambda args: run_merge(validate_merge(args)),
)


def main(argv: Sequence[str] | None = None) -> int:
    """Merge feature files; see ``extract_features merge --help``."""
    return run_command(MERGE_COMMAND, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
