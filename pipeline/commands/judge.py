"""``judge LEFT RIGHT STATEMENT...``: NLVR2 from the command line: is each statement true of
the image pair?"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from pipeline.commands.text_args import non_utf8_message
from pipeline.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError
from pipeline.flags import (
    MODEL_LOAD_ERRORS,
    add_detector_flag,
    add_device_flag,
    add_encoder_flag,
    add_precision_flags,
    check_image_file,
    check_models,
    device_and_precision,
)
from weights.command import Command, add_verbose_flag, run_command
from weights.defaults import NO_NLVR2_CHECKPOINT, SHAPES_DETECTOR, SHAPES_NLVR2

if TYPE_CHECKING:
    from detector.precision import Precision
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
        f"or models that cannot be loaded; {EXIT_ERROR} unexpected error; "
        f"{EXIT_INTERRUPTED} interrupted (Ctrl-C).",
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
    add_detector_flag(parser)
    add_encoder_flag(
        parser,
        default=None,
        help=f"NLVR2 model: registry name ({SHAPES_NLVR2}) or a directory written by "
        "lxmert-finetune train --task nlvr2 (required: there is no default)",
    )
    add_device_flag(parser)
    add_precision_flags(parser, deprecated_autocast=False)
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object per statement instead of text"
    )
    add_verbose_flag(parser)
    return parser


def _judge(args: argparse.Namespace, device: str, precision: Precision) -> list[Judgement]:
    """The verdicts; an unreadable image or a model that cannot be loaded is a usage error."""
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
                precision=precision,
            ),
        )
    except (ImageError, *MODEL_LOAD_ERRORS) as error:  # type: ignore[misc]
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        raise UsageError(str(message)) from None


def run(args: argparse.Namespace) -> int:
    """Judge ``args.statements`` of the pair ``args.left``, ``args.right``; print verdicts."""
    if args.top_k not in (1, 2):
        raise UsageError("--top-k must be 1 (True/False) or 2 (both verdicts)")
    not_utf8 = non_utf8_message(args.statements, what="statement")
    if not_utf8 is not None:
        raise UsageError(not_utf8)
    if args.encoder is None:
        raise UsageError(f"--encoder is required. {NO_NLVR2_CHECKPOINT}")
    check_image_file(args.left, role="left image")
    check_image_file(args.right, role="right image")
    check_models([("--detector", args.detector), ("--encoder", args.encoder)], download=True)
    results = _judge(args, *device_and_precision(args, prog=PROG))
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


JUDGE_COMMAND = Command(
    name="judge",
    summary="judge statements about an image pair (NLVR2)",
    build_parser=build_parser,
    run=run,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``judge`` command."""
    return run_command(JUDGE_COMMAND, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
