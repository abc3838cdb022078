"""``lxmert-finetune evaluate``: accuracy and prediction files of a QA or NLVR2 model.

    lxmert-finetune evaluate --model DIR --questions FILE [FILE...] --features STORE [...] \\
        [--annotations VQA.json] [--predictions OUT.json|OUT.csv] [--report OUT.json]

validate (outputs ours, :mod:`pipeline.commands.finetune.outputs`) -> read questions and stores ->
load the model -> predict (``encoder.finetune``) -> score, print, write atomically. Nothing is
written when a step fails or on Ctrl-C (exit 130).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.commands.finetune.common import (
    PROG,
    add_common_flags,
    existing,
    open_stores,
    read_entries,
    say,
)
from pipeline.commands.finetune.data_errors import data_errors_are_usage
from pipeline.commands.finetune.outputs import REPORT_KIND, check_outputs
from pipeline.errors import EXIT_INTERRUPTED, EXIT_OK, UsageError
from pipeline.flags import MODEL_LOAD_ERRORS
from weights.command import Command, configure_logging, positive_int
from weights.files import atomic_write_text

if TYPE_CHECKING:
    from encoder.config import EncoderConfig
    from encoder.finetune import (
        AccuracyReport,
        FinetuneConfig,
        HumanAnswers,
        QuestionEntry,
        Task,
    )

#: What to do after a feature record failed to read during ``evaluate``.
_EVALUATE_REMEDY = "nothing was written: repair or re-extract the file and run the command again"


def build_evaluate_parser() -> argparse.ArgumentParser:
    """Flags of ``lxmert-finetune evaluate``."""
    parser = argparse.ArgumentParser(
        prog=f"{PROG} evaluate",
        description="accuracy and prediction files of a QA or NLVR2 model",
    )
    parser.add_argument(
        "--model",
        required=True,
        metavar="DIR|NAME",
        help="a train --out directory, another save_pretrained one, or a name",
    )
    parser.add_argument(
        "--questions",
        nargs="+",
        type=Path,
        required=True,
        metavar="FILE",
        help="LXMERT JSON question files (NLVR2 statement files with --task nlvr2)",
    )
    parser.add_argument(
        "--task",
        choices=("vqa", "gqa", "nlvr2"),
        help="metric and submission format (default: the model's finetune.json, else vqa)",
    )
    parser.add_argument(
        "--annotations",
        type=Path,
        metavar="FILE",
        help="official VQA annotation file: score by the ten human answers",
    )
    parser.add_argument(
        "--predictions",
        type=Path,
        metavar="OUT.json|OUT.csv",
        help="VQA [{question_id, answer}] / GQA [{questionId, prediction}] / NLVR2 CSV "
        "identifier,prediction (True/False)",
    )
    parser.add_argument("--report", type=Path, metavar="OUT.json", help="the scores as JSON")
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=256,
        help="questions (NLVR2: statements) per forward pass (default: %(default)s)",
    )
    add_common_flags(parser)
    return parser


def check_evaluate_outputs(args: argparse.Namespace) -> None:
    """``--predictions`` and ``--report`` are neither inputs nor one file, and replace only
    evaluate's own outputs (:func:`pipeline.commands.finetune.outputs.check_outputs`)."""
    inputs = [("--questions", path) for path in args.questions]
    inputs += [("--features", path) for path in args.features]
    inputs += [("--annotations", args.annotations)] if args.annotations else []
    inputs += [("--model", Path(args.model))] if Path(args.model).exists() else []
    check_outputs({"--predictions": args.predictions, "--report": args.report}, inputs)


def _model_record(model: str) -> dict[str, object]:
    """The ``finetune.json`` of a model directory, or {} when there is none."""
    from encoder.finetune import FINETUNE_FILE

    path = Path(model) / FINETUNE_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"{path}: unreadable ({err})") from None
    return data if isinstance(data, dict) else {}


def _prediction_text(records: list[dict[str, int | str]], path: Path) -> str:
    if path.suffix.lower() == ".csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        keys = list(records[0]) if records else ["question_id", "answer"]
        writer.writerow(keys)
        writer.writerows([[r[k] for k in keys] for r in records])
        return buffer.getvalue()
    return json.dumps(records) + "\n"


def _check_files(args: argparse.Namespace) -> None:
    """The named files, then the outputs' ownership, before torch is imported: a usage
    error is said at once."""
    existing(args.questions, "--questions")
    existing(args.features, "--features")
    existing([args.annotations] if args.annotations else [], "--annotations")
    check_evaluate_outputs(args)


def run_evaluate(args: argparse.Namespace) -> int:
    """``evaluate``: validate -> plan -> predict -> score and write."""
    configure_logging(quiet=False, verbose=args.verbose, names=("encoder",))
    _check_files(args)
    from encoder.build import load_encoder
    from encoder.config import config_for
    from encoder.finetune import (
        DataError,
        FinetuneConfig,
        QADataset,
        predict,
        read_vqa_annotations,
    )
    from weights.defaults import resolve_device

    record = _model_record(args.model)
    saved_task = record.get("task")
    task: Task = args.task or (saved_task if saved_task in ("gqa", "nlvr2") else "vqa")
    saved = record.get("config")
    length = saved.get("max_question_length", 20) if isinstance(saved, dict) else 20
    try:
        recipe = FinetuneConfig(
            num_boxes=args.num_boxes,
            precision=args.precision,
            eval_batch_size=args.batch_size,
            workers=args.workers,
            max_question_length=int(length),
        )
        annotations = read_vqa_annotations(args.annotations) if args.annotations else None
    except (DataError, ValueError) as err:
        raise UsageError(str(err)) from None
    if task == "nlvr2":
        return run_evaluate_nlvr2(args, recipe)
    store = open_stores(existing(args.features, "--features"))
    entries, skipped = read_entries(
        existing(args.questions, "--questions"),
        store,
        skip_missing=args.skip_missing,
        flag="--questions",
    )
    try:
        settings = replace_length(config_for(args.model), recipe.max_question_length)
        encoder = load_encoder(settings, device=resolve_device(args.device, on_fallback=say))
    except MODEL_LOAD_ERRORS as err:
        raise UsageError(f"cannot load --model {args.model}: {err}") from None
    if encoder.answers is None:
        raise UsageError(f"--model {args.model} has no QA head")
    try:
        with data_errors_are_usage(remedy=_EVALUATE_REMEDY):
            predictions = predict(
                encoder,
                QADataset(entries, store, encoder.answers, num_boxes=recipe.num_boxes),
                config=recipe,
            )
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing written", file=sys.stderr)
        return EXIT_INTERRUPTED
    _finish_evaluate(args, task, entries, predictions, annotations, skipped)
    return EXIT_OK


def run_evaluate_nlvr2(args: argparse.Namespace, recipe: FinetuneConfig) -> int:
    """``evaluate --task nlvr2``: statements -> NLVR2 model -> accuracy, consistency, CSV."""
    from encoder.build import load_encoder
    from encoder.config import config_for
    from encoder.finetune import PairDataset, predict_pairs
    from pipeline.commands.finetune.nlvr2 import finish_evaluate, read_pairs
    from weights.defaults import resolve_device

    if args.annotations is not None:
        raise UsageError("--annotations are VQA's human answers; NLVR2 files carry their labels")
    if args.predictions is not None and args.predictions.suffix.lower() != ".csv":
        raise UsageError(
            f"--predictions {args.predictions}: NLVR2 predictions are a CSV "
            "(identifier,prediction); give a .csv file"
        )
    store = open_stores(existing(args.features, "--features"))
    entries, skipped = read_pairs(
        existing(args.questions, "--questions"),
        store,
        skip_missing=args.skip_missing,
        flag="--questions",
        need_labels=False,
    )
    try:
        settings = replace(
            config_for(args.model), head="nlvr2", max_question_length=recipe.max_question_length
        )
        encoder = load_encoder(settings, device=resolve_device(args.device, on_fallback=say))
    except MODEL_LOAD_ERRORS as err:
        raise UsageError(f"cannot load --model {args.model}: {err}") from None
    try:
        with data_errors_are_usage(remedy=_EVALUATE_REMEDY):
            dataset = PairDataset(entries, store, num_boxes=recipe.num_boxes)
            probabilities = predict_pairs(encoder, dataset, config=recipe)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing written", file=sys.stderr)
        return EXIT_INTERRUPTED
    finish_evaluate(
        entries,
        probabilities,
        predictions=args.predictions,
        report=args.report,
        skipped=skipped,
    )
    return EXIT_OK


def _finish_evaluate(
    args: argparse.Namespace,
    task: Task,
    entries: Sequence[QuestionEntry],
    predictions: Sequence[str],
    annotations: Mapping[int | str, HumanAnswers] | None,
    skipped: int,
) -> None:
    """Score (when there are labels or annotations), print, and write the files asked for."""
    from encoder.finetune import DataError, prediction_records, question_scores

    labelled = annotations is not None or any(e.label for e in entries)
    report: dict[str, object] = {
        "kind": REPORT_KIND,
        "task": task,
        "questions": len(entries),
        "skipped": skipped,
    }
    if labelled:
        try:
            scores = question_scores(entries, predictions, task=task, annotations=annotations)
        except DataError as err:
            raise UsageError(str(err)) from None
        report.update(asdict(scores))
        print(_score_lines(scores))
    else:
        print(f"{len(entries)} questions without labels: predictions only")
    if args.predictions is not None:
        records = prediction_records(entries, predictions, task=task)
        atomic_write_text(args.predictions, _prediction_text(records, args.predictions))
    if args.report is not None:
        atomic_write_text(args.report, json.dumps(report, indent=1) + "\n")


def replace_length(settings: EncoderConfig, length: int) -> EncoderConfig:
    """``settings`` with head ``qa`` and questions cut at ``length`` tokens."""
    return replace(settings, head="qa", max_question_length=length)


def _score_lines(scores: AccuracyReport) -> str:
    lines = [f"accuracy {scores.overall:.4f} over {scores.count} questions"]
    for kind, values in scores.per_type.items():
        for name, value in values.items():
            lines.append(f"  {kind} {name}: {value:.4f} ({scores.type_counts[kind][name]})")
    return "\n".join(lines)


EVALUATE_COMMAND = Command(
    name="evaluate",
    summary="accuracy and prediction files of a QA or NLVR2 model",
    build_parser=build_evaluate_parser,
    run=run_evaluate,
)
