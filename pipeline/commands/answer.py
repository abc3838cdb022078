"""``answer IMAGE QUESTION...``: ask LXMERT about one image from the command line;
``answer --questions FILE``: many questions about many images, one JSON line each."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from pipeline.commands.question_file import QuestionRow, read_question_file
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
from weights.defaults import DEFAULT_ENCODER, SHAPES_DETECTOR, SHAPES_ENCODER
from weights.files import atomic_write_text

if TYPE_CHECKING:
    from detector.precision import Precision
    from encoder.explain import Explanation
    from pipeline.api import Answer, Pipeline

#: Regions listed per question by ``--explain`` without ``--json`` (JSON lists all).
EXPLAIN_TOP_REGIONS = 5


def build_parser() -> argparse.ArgumentParser:
    """The ``answer`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="answer",
        description="Answer questions about an image: detector regions -> LXMERT -> answers. "
        "The detector runs once for all questions. Without --detector/--encoder the real models "
        f"are used; the shipped shapes-world pair runs offline: --detector {SHAPES_DETECTOR} "
        f"--encoder {SHAPES_ENCODER}.",
        epilog=f"exit codes: {EXIT_OK} answered; {EXIT_USAGE} bad arguments, unreadable image "
        f"or models that cannot be loaded; {EXIT_ERROR} unexpected error; "
        f"{EXIT_INTERRUPTED} interrupted (Ctrl-C).",
    )
    parser.add_argument(
        "image", nargs="?", help="image file (any format Pillow/OpenCV read); not with --questions"
    )
    parser.add_argument("questions", nargs="*", metavar="QUESTION", help="questions to ask")
    parser.add_argument(
        "--questions",
        dest="question_file",
        type=Path,
        metavar="FILE",
        help='many questions about many images: JSON Lines ({"image", "question", '
        '"question_id"?} per line) or CSV with a header row image,question[,question_id]; '
        "relative images are read from FILE's folder. Prints one JSON line per question, in "
        "the file's order (question_id, image, question, answers with probabilities); the "
        "models load once and the detector runs once per distinct image",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="with --questions: write the JSON Lines to FILE (atomically) instead of stdout",
    )
    parser.add_argument(
        "-k", "--top-k", type=int, default=1, help="answers per question (default: %(default)s)"
    )
    add_detector_flag(parser)
    add_encoder_flag(
        parser,
        default=DEFAULT_ENCODER,
        help="LXMERT registry name, preset, save_pretrained directory, or an original LXMERT "
        ".pth (model_LXRT.pth, a task's BEST.pth) (default: %(default)s)",
    )
    add_device_flag(parser)
    add_precision_flags(parser, deprecated_autocast=False)
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object per question instead of text"
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="also say why: each region's and each question word's relevance to the top answer "
        "(Chefer et al. 2021); with --json in an 'explanation' object, else the top "
        f"{EXPLAIN_TOP_REGIONS} regions and every word as indented lines",
    )
    add_verbose_flag(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Answer ``args.questions`` about ``args.image`` (or the questions of
    ``--questions FILE``) and print the answers."""
    if args.top_k < 1:
        raise UsageError("--top-k must be >= 1")
    if args.question_file is not None:
        return _answer_file(args)
    if args.out is not None:
        raise UsageError("--out goes with --questions FILE (one answer list per question)")
    if args.image is None or not args.questions:
        raise UsageError("give IMAGE and at least one QUESTION, or --questions FILE")
    not_utf8 = non_utf8_message(args.questions, what="question")
    if not_utf8 is not None:
        raise UsageError(not_utf8)
    check_image_file(args.image)
    device, precision = _device_and_precision(args)
    from detector.image import ImageError
    from pipeline.api import answer

    try:
        if args.explain:
            _answer_and_explain(args, device=device, precision=precision)
            return EXIT_OK
        results = answer(
            args.image,
            list(args.questions),
            top_k=args.top_k,
            detector=args.detector,
            encoder=args.encoder,
            device=device,
            precision=precision,
        )
    except (ImageError, *MODEL_LOAD_ERRORS) as error:  # type: ignore[misc]
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        raise UsageError(str(message)) from None
    _print_answers(args, cast("list[Answer]", results))
    return EXIT_OK


def _device_and_precision(args: argparse.Namespace) -> tuple[str, Precision]:
    """The models named (every one that does not resolve in one message, before torch is
    imported), then ``--device`` and ``--precision`` (:func:`~pipeline.flags.
    device_and_precision`)."""
    check_models([("--detector", args.detector), ("--encoder", args.encoder)], download=True)
    return device_and_precision(args, prog="answer")


def _answer_file(args: argparse.Namespace) -> int:
    """``--questions FILE``: every question of the file, one JSON line each, in file order."""
    if args.image is not None or args.questions:
        raise UsageError("--questions FILE takes no IMAGE or QUESTION arguments")
    if args.explain:
        raise UsageError("--explain answers questions given on the command line, not --questions")
    rows = read_question_file(args.question_file)
    for row in rows:
        if non_utf8_message([row.question], what="question") is not None:
            raise UsageError(f"--questions {args.question_file}:{row.line}: not valid UTF-8")
    device, precision = _device_and_precision(args)
    from detector.image import ImageError
    from pipeline.api import default_pipeline

    try:
        pipeline = default_pipeline(args.detector, args.encoder, device, precision)
        answers = answer_rows(pipeline, rows, top_k=args.top_k)
    except (ImageError, *MODEL_LOAD_ERRORS) as error:  # type: ignore[misc]
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        raise UsageError(str(message)) from None
    lines = "".join(json.dumps(record) + "\n" for record in answers)
    if args.out is None:
        sys.stdout.write(lines)
    else:
        atomic_write_text(args.out, lines)
    return EXIT_OK


def answer_rows(
    pipeline: Pipeline, rows: list[QuestionRow], *, top_k: int
) -> list[dict[str, object]]:
    """One record per row, in row order: the detector once per distinct image (in order of
    first appearance), LXMERT once per image on all of its questions."""
    from tqdm import tqdm

    by_image: dict[Path, list[int]] = {}
    for index, row in enumerate(rows):
        by_image.setdefault(row.path, []).append(index)
    records: list[dict[str, object] | None] = [None] * len(rows)
    with tqdm(total=len(rows), unit="q", disable=None, file=sys.stderr) as progress:
        for path, indices in by_image.items():
            [region] = pipeline.regions([path])
            asked = [rows[index].question for index in indices]
            ranked = pipeline.encoder.answer([region] * len(asked), asked, k=top_k)
            for index, best in zip(indices, ranked, strict=True):
                row = rows[index]
                records[index] = {
                    "question_id": row.question_id,
                    "image": row.image,
                    "question": row.question,
                    "answers": [{"answer": a.answer, "probability": a.probability} for a in best],
                }
            progress.update(len(indices))
    return [record for record in records if record is not None]


def _answer_and_explain(args: argparse.Namespace, *, device: str, precision: str) -> None:
    """``--explain``: detect once, then per question its answers and why the top one."""
    from pipeline.api import default_pipeline

    pipeline = default_pipeline(args.detector, args.encoder, device, precision)  # type: ignore[arg-type]
    [region] = pipeline.regions([args.image])
    for question in args.questions:
        [found] = pipeline.answer_regions([region], [question], top_k=args.top_k)
        result = cast("Answer", found)
        explained = pipeline.explain_regions(region, question)
        if args.json:  # one object per question, as without --explain, plus "explanation"
            ranked: list[tuple[str, float | None]] = (
                [(result, None)] if isinstance(result, str) else list(result)
            )
            answers = [{"answer": a, "probability": p} for a, p in ranked]
            record = {"question": question, "answers": answers}
            print(json.dumps({**record, "explanation": explained.to_json()}))
        else:
            _print_answers(args, [result], questions=[question])
            _print_explanation(explained)


def _print_explanation(explained: Explanation) -> None:
    """The top regions (score, index, label, box in raw pixels) and every word, indented."""
    print(f"  why {explained.answer!r} ({explained.method}): regions")
    for region in explained.image.top(EXPLAIN_TOP_REGIONS):
        box = ", ".join(f"{v:.0f}" for v in region.box)
        print(f"    {region.score:.3f}  region {region.index}  {region.label}  [{box}]")
    words = "  ".join(f"{w.word} {w.score:.3f}" for w in explained.words)
    print(f"  words: {words}")


def _print_answers(
    args: argparse.Namespace, results: list[Answer], *, questions: list[str] | None = None
) -> None:
    for question, result in zip(questions or args.questions, results, strict=True):
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


ANSWER_COMMAND = Command(
    name="answer", summary="answer questions about an image", build_parser=build_parser, run=run
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``answer`` command."""
    return run_command(ANSWER_COMMAND, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
