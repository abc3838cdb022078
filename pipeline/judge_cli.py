"""``judge LEFT RIGHT STATEMENT...``: NLVR2 from the command line: is each statement true of
the image pair?"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from pipeline.exits import EXIT_ERROR, EXIT_OK, EXIT_USAGE
from pipeline.text_args import non_utf8_message
from weights.defaults import (
    DEFAULT_DETECTOR,
    DEFAULT_DEVICE,
    NO_NLVR2_CHECKPOINT,
    SHAPES_DETECTOR,
    SHAPES_NLVR2,
    DeviceError,
    resolve_device,
)

if TYPE_CHECKING:
    from pipeline.api import Judgement

PROG = "judge"


def build_parser() -> argparse.ArgumentParser:
    """The ``judge`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Is each statement true of the two images (NLVR2)? Detector regions of "
        "both images -> LXMERT NLVR2 model -> True/False. LXMERT released no NLVR2 "
        f"checkpoint, so --encoder is required; the shipped shapes-world model runs offline: "
        f"--detector {SHAPES_DETECTOR} --encoder {SHAPES_NLVR2}.",
        epilog=f"exit codes: {EXIT_OK} judged; {EXIT_USAGE} bad arguments, unreadable image "
        f"or models that cannot be loaded; {EXIT_ERROR} unexpected error.",
    )
    parser.add_argument("left", help="left image file")
    parser.add_argument("right", help="right image file")
    parser.add_argument("statements", nargs="+", metavar="STATEMENT", help="statements to judge")
    parser.add_argument(
        "-k",
        "--top-k",
        type=int,
        default=1,
        help="1: True/False; 2: both verdicts with probabilities (default: %(default)s)",
    )
    parser.add_argument(
        "--detector",
        default=DEFAULT_DETECTOR,
        metavar="NAME|PATH",
        help="detector registry name or checkpoint file (default: %(default)s)",
    )
    parser.add_argument(
        "--encoder",
        metavar="NAME|DIR",
        help=f"NLVR2 model: registry name ({SHAPES_NLVR2}) or a directory written by "
        "lxmert-finetune train --task nlvr2 (required: there is no default)",
    )
    parser.add_argument(
        "--device",
        default=DEFAULT_DEVICE,
        help="cpu, cuda, cuda:N, or auto (cuda when available) (default: %(default)s)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object per statement instead of text"
    )
    return parser


def _error(message: object) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _judge(args: argparse.Namespace, device: str) -> list[Judgement] | int:
    """The verdicts, or the exit code of an error already reported."""
    try:
        from detector.image import ImageError
        from pipeline.api import judge

        try:
            return cast(
                "list[Judgement]",
                judge(
                    args.left,
                    args.right,
                    list(args.statements),
                    top_k=args.top_k,
                    detector=args.detector,
                    encoder=args.encoder,
                    device=device,
                ),
            )
        except (ImageError, FileNotFoundError, KeyError, ValueError) as error:
            return _error(error.args[0] if isinstance(error, KeyError) and error.args else error)
    except Exception as error:
        print(f"{PROG}: unexpected error: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``judge`` command."""
    args = build_parser().parse_args(argv)
    if args.top_k not in (1, 2):
        return _error("--top-k must be 1 (True/False) or 2 (both verdicts)")
    not_utf8 = non_utf8_message(args.statements, what="statement")
    if not_utf8 is not None:
        return _error(not_utf8)
    if args.encoder is None:
        return _error(f"--encoder is required. {NO_NLVR2_CHECKPOINT}")
    try:
        device = resolve_device(
            args.device, on_fallback=lambda message: print(f"{PROG}: {message}", file=sys.stderr)
        )
    except DeviceError as error:
        return _error(f"--device {args.device}: {error}")
    results = _judge(args, str(device))
    if isinstance(results, int):
        return results
    for statement, result in zip(args.statements, results, strict=True):
        ranked: list[tuple[bool, float | None]] = (
            [(result, None)] if isinstance(result, bool) else list(result)
        )
        if args.json:
            verdicts = [{"verdict": v, "probability": p} for v, p in ranked]
            print(json.dumps({"statement": statement, "verdicts": verdicts}))
        elif isinstance(result, bool):
            print(f"{statement}\t{result}")
        else:
            print(f"{statement}\t" + ", ".join(f"{v} ({p:.3f})" for v, p in result))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
