"""``answer IMAGE QUESTION...``: ask LXMERT about one image from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from pipeline.exits import EXIT_ERROR, EXIT_OK, EXIT_USAGE
from pipeline.precision_flags import add_precision_flags, precision_from_args
from pipeline.text_args import non_utf8_message
from weights.defaults import (
    DEFAULT_DETECTOR,
    DEFAULT_DEVICE,
    DEFAULT_ENCODER,
    SHAPES_DETECTOR,
    SHAPES_ENCODER,
    DeviceError,
    resolve_device,
)

if TYPE_CHECKING:
    from pipeline.api import Answer


def build_parser() -> argparse.ArgumentParser:
    """The ``answer`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="answer",
        description="Answer questions about an image: detector regions -> LXMERT -> answers. "
        "The detector runs once for all questions. Without --detector/--encoder the real models "
        f"are used; the shipped shapes-world pair runs offline: --detector {SHAPES_DETECTOR} "
        f"--encoder {SHAPES_ENCODER}.",
        epilog=f"exit codes: {EXIT_OK} answered; {EXIT_USAGE} bad arguments, unreadable image "
        f"or models that cannot be loaded; {EXIT_ERROR} unexpected error.",
    )
    parser.add_argument("image", help="image file (any format Pillow/OpenCV read)")
    parser.add_argument("questions", nargs="+", metavar="QUESTION", help="questions to ask")
    parser.add_argument(
        "-k", "--top-k", type=int, default=1, help="answers per question (default: %(default)s)"
    )
    parser.add_argument(
        "--detector",
        default=DEFAULT_DETECTOR,
        metavar="NAME|PATH",
        help="detector registry name or checkpoint file (default: %(default)s)",
    )
    parser.add_argument(
        "--encoder",
        default=DEFAULT_ENCODER,
        metavar="NAME|DIR",
        help="LXMERT registry name, preset or save_pretrained directory (default: %(default)s)",
    )
    parser.add_argument(
        "--device",
        default=DEFAULT_DEVICE,
        help="cpu, cuda, cuda:N, or auto (cuda when available) (default: %(default)s)",
    )
    add_precision_flags(parser, deprecated_autocast=False)
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object per question instead of text"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``answer`` command."""
    args = build_parser().parse_args(argv)
    if args.top_k < 1:
        print("answer: error: --top-k must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    not_utf8 = non_utf8_message(args.questions, what="question")
    if not_utf8 is not None:
        print(f"answer: error: {not_utf8}", file=sys.stderr)
        return EXIT_USAGE
    try:
        device = resolve_device(
            args.device, on_fallback=lambda message: print(f"answer: {message}", file=sys.stderr)
        )
    except DeviceError as error:
        print(f"answer: error: --device {args.device}: {error}", file=sys.stderr)
        return EXIT_USAGE
    precision = precision_from_args(args, prog="answer")
    try:
        from detector.precision import check_precision

        check_precision(precision, device)
    except ValueError as error:
        print(f"answer: error: --precision {precision}: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        from detector.image import ImageError
        from pipeline.api import answer

        try:
            results = answer(
                args.image,
                list(args.questions),
                top_k=args.top_k,
                detector=args.detector,
                encoder=args.encoder,
                device=str(device),
                precision=precision,
            )
        except (ImageError, FileNotFoundError, KeyError, ValueError) as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            print(f"answer: error: {message}", file=sys.stderr)
            return EXIT_USAGE
    except Exception as error:
        print(f"answer: unexpected error: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_ERROR
    for question, result in zip(args.questions, cast("list[Answer]", results), strict=True):
        ranked: list[tuple[str, float | None]] = (
            [(result, None)] if isinstance(result, str) else list(result)
        )
        if args.json:
            print(
                json.dumps(
                    {
                        "question": question,
                        "answers": [{"answer": a, "probability": p} for a, p in ranked],
                    }
                )
            )
        elif isinstance(result, str):
            print(f"{question}\t{result}")
        else:
            shown = ", ".join(f"{a} ({p:.3f})" for a, p in result)
            print(f"{question}\t{shown}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
