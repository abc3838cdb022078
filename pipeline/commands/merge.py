"""``extract_features merge FILE... --out X``: the flags and the wiring; the merge rules are
:mod:`pipeline.merge`. Also runnable as ``python -m pipeline.commands.merge``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.merge import MergeSettings, run_merge
from weights.command import Command, run_command


def build_merge_parser() -> argparse.ArgumentParser:
    """The ``extract_features merge`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="extract_features merge",
        description=(
            "Merge feature files (typically the shard outputs of one run) into one. Records are "
            "interleaved by image id, so the shards of a run merge into exactly the file a "
            "single run would have written. Inputs and output may be TSV or HDF5 in any mix. "
            "Refused (exit 2, nothing written): an id in two inputs, an input whose run did not "
            "finish (finish it with --resume), missing or doubled shards, inputs made with "
            "different settings, and files without a manifest whose feature dimension or box "
            "counts differ from the others'. The output is written to a temporary file and "
            "renamed; the inputs' manifests are combined into OUT.<ext>.manifest.json."
        ),
    )
    parser.add_argument("inputs", nargs="+", type=Path, metavar="FILE", help="files to merge")
    parser.add_argument("-o", "--out", required=True, type=Path, help="merged *.tsv or *.h5")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="merge shards K/N that do not cover 1..N; the manifest lists the missing ones",
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    verbosity.add_argument(
        "-v", "--verbose", action="store_true", help="print the traceback of an unexpected error"
    )
    return parser


def validate_merge(args: argparse.Namespace) -> MergeSettings:
    """The merge's settings from its parsed flags."""
    return MergeSettings(
        inputs=tuple(args.inputs),
        out=args.out,
        overwrite=args.overwrite,
        allow_partial=args.allow_partial,
        quiet=args.quiet,
    )


MERGE_COMMAND = Command(
    name="merge",
    summary="join feature files (the shards of one run) into one",
    build_parser=build_merge_parser,
    run=lambda args: run_merge(validate_merge(args)),
    disk_full_remedy="the merged file is written whole or not at all; free some space and run "
    "the merge again",
)


def main(argv: Sequence[str] | None = None) -> int:
    """Merge feature files; see ``extract_features merge --help``."""
    return run_command(MERGE_COMMAND, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
