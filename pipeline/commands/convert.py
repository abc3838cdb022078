"""``extract_features convert IN... --to FORMAT OUT``: the flags and the wiring; the
conversion is :mod:`pipeline.convert`. Also runnable as ``python -m pipeline.commands.convert``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.convert import ConvertSettings, run_convert
from pipeline.errors import UsageError
from pipeline.features.formats.registry import FORMATS, get_format
from weights.command import Command, run_command


class _IntermixedParser(argparse.ArgumentParser):
    """Paths may stand on both sides of the flags (``IN... --to FORMAT OUT``)."""

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        return self.parse_intermixed_args(args, namespace)


def build_convert_parser() -> argparse.ArgumentParser:
    """The ``extract_features convert`` argument parser."""
    parser = _IntermixedParser(
        prog="extract_features convert",
        description=(
            "Convert feature files between formats, record by record with flat memory: "
            + ", ".join(FORMATS)
            + ". Inputs of any format (told by name and content) are joined in the order "
            "given; an id in two inputs is refused. The output is written whole or not at "
            "all, under a lock, with OUT.manifest.json naming every input and its sha256. "
            "Formats that cannot hold every field say so before starting; docs/formats.md "
            "lists what each loses and how a conversion back fills it. An input named "
            "'convert' is given as ./convert."
        ),
    )
    parser.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="input files or folders, then the output (or give -o)",
    )
    parser.add_argument("--to", required=True, choices=tuple(FORMATS), help="output format")
    parser.add_argument("-o", "--out", type=Path, default=None, help="the output file or folder")
    parser.add_argument(
        "--feature-dtype",
        choices=("float32", "float16"),
        default=None,
        help="stored precision of the features where the format allows both (h5 and tsv: "
        "float32 only; lmdb: float16 only) (default: the format's first, float32 if allowed)",
    )
    parser.add_argument(
        "--ban-ids",
        choices=("strict", "trailing-digits"),
        default="strict",
        help="ban-h5 keys images by int: strict (every id an integer) or trailing-digits "
        "(the digits at the end of each id; NAME_ids.json keeps the way back)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output, and start again rather than continue an interrupted "
        "conversion (OUT.partial)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted conversion in OUT.partial (same inputs and settings): "
        "tsv and npz-dir keep what was written, other formats are written again",
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="no progress, no notes")
    verbosity.add_argument(
        "-v", "--verbose", action="store_true", help="print the traceback of an unexpected error"
    )
    return parser


def validate_convert(args: argparse.Namespace) -> ConvertSettings:
    """The conversion's settings from its flags; ``UsageError`` for a bad combination."""
    paths = list(args.paths)
    out = args.out if args.out is not None else (paths.pop() if len(paths) > 1 else None)
    if out is None or not paths:
        raise UsageError("convert needs at least one input and an output: IN... --to FORMAT OUT")
    spec = get_format(args.to)
    try:
        dtype = spec.stored_dtype(args.feature_dtype)
    except ValueError as error:
        raise UsageError(str(error)) from None
    return ConvertSettings(
        inputs=tuple(paths),
        out=out,
        to=spec.name,
        feature_dtype=dtype,
        ban_ids=args.ban_ids,
        overwrite=args.overwrite,
        resume=args.resume,
        quiet=args.quiet,
    )


CONVERT_COMMAND = Command(
    name="convert",
    summary="convert feature files between formats (tsv, h5, ban-h5, npz-dir, lmdb, parquet)",
    build_parser=build_convert_parser,
    run=lambda args: run_convert(validate_convert(args)),
    disk_full_remedy="the output is written whole or not at all; free some space and finish "
    "the conversion with --resume (the same command plus --resume)",
)


def main(argv: Sequence[str] | None = None) -> int:
    """Convert feature files; see ``extract_features convert --help``."""
    return run_command(CONVERT_COMMAND, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
