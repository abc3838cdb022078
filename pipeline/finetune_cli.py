"""``lxmert-finetune``: fine-tune LXMERT on question files over feature stores, and evaluate.

    lxmert-finetune train --task vqa|gqa|nlvr2 --train FILE [FILE...] [--valid FILE] \\
        --features STORE [STORE...] --from NAME|DIR --out DIR [--answers FILE] [--epochs N] \\
        [--batch-size N] [--lr X] [--max-length N] [--num-boxes N] [--precision fp32|bf16] \\
        [--device auto|cpu|cuda[:N]] [--resume] [--skip-missing] [--tiny] [--limit-questions N]
    lxmert-finetune evaluate --model DIR --questions FILE [FILE...] --features STORE [...] \\
        [--annotations VQA.json] [--predictions OUT.json|OUT.csv] [--report OUT.json]
    lxmert-finetune export RUN --format lxmert-original OUT.pth [--data-parallel]

Each sub-command runs validate -> plan -> run -> finish: flags and data are checked (and
question files read, stores opened) before any model loads; the library
(``encoder.finetune``) does the work; the exit code is chosen in one place
(``pipeline.command.run_command``; 130 here on Ctrl-C).

Output of ``train`` (``--out DIR``): the best model so far as a ``save_pretrained``
directory (``config.json``, ``model.safetensors``), ``label2ans.json``, ``finetune.json``
(recipe, equivalent command, data, history), ``last/`` (the last epoch's model, the same
files), ``log.log`` (LXMERT's per-epoch Train/Valid/Best lines) and ``training/last.pt``
(the resume checkpoint). ``answer(..., encoder=DIR)`` and ``Pipeline(encoder=DIR)`` load it,
or ``DIR/last``.

``--task nlvr2`` reads NLVR2 statement files in LXMERT's JSON (``{identifier, img0, img1,
sent, label}``) and trains an NLVR2 model (``encoder.nlvr2``; no answer table, so no
``label2ans.json``) that ``judge(..., encoder=DIR)`` loads; ``evaluate`` then reports accuracy,
consistency over statement groups, and writes NLVR2's ``identifier,prediction`` CSV.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.command import Command, non_negative_int, positive_int, run_command
from pipeline.data_errors import data_errors_are_usage
from pipeline.exits import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError
from pipeline.finetune_distributed import (
    join_group,
    launched_rank,
    leave_group,
    peers_lost_named,
    rank_device,
)
from pipeline.finetune_export import EXPORT_COMMAND
from pipeline.finetune_labels import check_labels
from pipeline.finetune_log import epoch_reporter, write_log
from pipeline.finetune_outputs import REPORT_KIND, check_outputs
from pipeline.finetune_resume import check_resume, run_inputs
from pipeline.finetune_subset import Subset, add_subset_flags, first, tiny_images
from pipeline.model_flags import DEVICE_HELP, MODEL_LOAD_ERRORS
from weights.defaults import DEFAULT_DEVICE
from weights.files import atomic_write_text

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from encoder.answers import AnswerTable
    from encoder.build import Encoder
    from encoder.config import EncoderConfig
    from encoder.finetune import (
        AccuracyReport,
        EpochRecord,
        FinetuneConfig,
        FitResult,
        HumanAnswers,
        PairEntry,
        Progress,
        QuestionEntry,
        RegionSource,
        Task,
    )
    from encoder.finetune.fit import FitData
    from pipeline.store import FeatureStore

PROG = "lxmert-finetune"
#: Resume checkpoint inside ``--out``.
CHECKPOINT = Path("training") / "last.pt"
#: The last epoch's model inside ``--out`` (``--out`` itself holds the best one).
LAST_DIR = "last"


@dataclass(frozen=True)
class TrainSettings:
    """Validated flags of ``train``."""

    task: Task
    train: tuple[Path, ...]
    valid: Path | None
    features: tuple[Path, ...]
    source: str
    out: Path
    answers: Path | None
    recipe: FinetuneConfig
    device: str
    resume: bool
    skip_missing: bool
    log_every: int
    quiet: bool
    subset: Subset

    def command(self) -> str:
        """The equivalent command line, every setting explicit."""
        r = self.recipe
        words = [PROG, "train", "--task", self.task, "--train", *map(str, self.train)]
        words += ["--valid", str(self.valid)] if self.valid else []
        words += ["--features", *map(str, self.features), "--from", self.source]
        words += ["--out", str(self.out)]
        words += ["--answers", str(self.answers)] if self.answers else []
        words += ["--epochs", str(r.epochs), "--batch-size", str(r.batch_size), "--lr", str(r.lr)]
        words += ["--warmup-ratio", str(r.warmup_ratio), "--max-length", str(r.max_question_length)]
        words += ["--num-boxes", str(r.num_boxes), "--seed", str(r.seed)]
        words += ["--precision", r.precision, "--device", self.device]
        words += ["--skip-missing"] if self.skip_missing else []
        return shlex.join(words + self.subset.words())


def _say(message: str) -> None:
    """How every command tells that ``auto`` fell back to the CPU: one line on stderr."""
    print(f"{PROG}: {message}", file=sys.stderr)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--features",
        nargs="+",
        type=Path,
        required=True,
        metavar="STORE",
        help="feature files (TSV or HDF5 from extract_features, or obj36 TSVs), joined",
    )
    parser.add_argument("--device", default=DEFAULT_DEVICE, metavar="DEV", help=DEVICE_HELP)
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: autocast of the forward (default fp32)",
    )
    parser.add_argument(
        "--num-boxes",
        type=positive_int,
        default=36,
        metavar="N",
        help="regions per image, at most (default 36)",
    )
    parser.add_argument(
        "--skip-missing",
        action="store_true",
        help="skip (and count) questions whose image is not in the stores",
    )
    parser.add_argument(
        "--workers", type=non_negative_int, default=0, help="DataLoader workers (default 0)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks of errors")


def build_train_parser() -> argparse.ArgumentParser:
    """Flags of ``lxmert-finetune train``."""
    from encoder.finetune import FinetuneConfig
    from encoder.finetune.config import LXMERT_TASK_LR

    d = FinetuneConfig()
    parser = argparse.ArgumentParser(prog=f"{PROG} train", description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=("vqa", "gqa", "nlvr2"), required=True)
    parser.add_argument("--train", nargs="+", type=Path, required=True, metavar="FILE")
    parser.add_argument("--valid", type=Path, metavar="FILE", help="evaluated after each epoch")
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="NAME|DIR",
        help="registry name (lxmert-base, shapes-lxmert-pretrained) or a directory",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    parser.add_argument(
        "--answers",
        type=Path,
        metavar="FILE",
        help="JSON list of answers (default: every answer of the training labels)",
    )
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=d.epochs,
        help="passes over --train (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=d.batch_size,
        help="questions (NLVR2: statements) per step (default: %(default)s)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        help="peak learning rate of AdamW (default: LXMERT's for the task: "
        + ", ".join(f"{task} {lr:g}" for task, lr in LXMERT_TASK_LR.items())
        + ")",
    )
    parser.add_argument(
        "--warmup-ratio",
        type=float,
        default=d.warmup_ratio,
        help="share of the steps with a linear warm-up, then linear decay (default: %(default)s)",
    )
    parser.add_argument(
        "--max-length",
        type=positive_int,
        default=d.max_question_length,
        help="question tokens with [CLS]/[SEP] (default 20)",
    )
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    add_subset_flags(parser)
    parser.add_argument(
        "--log-every",
        type=positive_int,
        default=50,
        metavar="STEPS",
        help="a progress line every STEPS steps (default: %(default)s)",
    )
    _add_common(parser)
    return parser


def _existing(paths: Sequence[Path], flag: str) -> tuple[Path, ...]:
    for path in paths:
        if not path.is_file():
            raise UsageError(f"{flag} {path}: no such file")
    return tuple(paths)


def _check_out_is_ours(out: Path, *, source: str) -> None:
    """``--out`` must be new, empty, or a folder an earlier ``train`` wrote (it holds our
    ``finetune.json`` or resume checkpoint): a model folder of someone else's, the starting
    model included, is never overwritten."""
    if Path(source).exists() and out.exists() and out.resolve() == Path(source).resolve():
        raise UsageError(f"--out {out} is the starting model (--from); choose another --out")
    if not out.is_dir() or not any(out.iterdir()):
        return
    from encoder.finetune import FINETUNE_FILE

    if not (out / FINETUNE_FILE).exists() and not (out / CHECKPOINT).exists():
        raise UsageError(
            f"--out {out} is a folder this command did not write (no {FINETUNE_FILE}); "
            "choose a new or empty folder"
        )


def validate_train(args: argparse.Namespace) -> TrainSettings:
    """Flags -> :class:`TrainSettings`; :class:`UsageError` for anything wrong, before work."""
    from encoder.finetune import FinetuneConfig
    from encoder.finetune.config import lxmert_recipe_lr

    try:
        recipe = FinetuneConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=lxmert_recipe_lr(args.task) if args.lr is None else args.lr,
            warmup_ratio=args.warmup_ratio,
            max_question_length=args.max_length,
            num_boxes=args.num_boxes,
            seed=args.seed,
            precision=args.precision,
            workers=args.workers,
        )
    except ValueError as err:
        raise UsageError(str(err)) from None
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file; give a directory")
    if (args.out / CHECKPOINT).exists() and not args.resume:
        raise UsageError(
            f"--out {args.out} holds a training run; pass --resume to continue it, or "
            "choose another --out"
        )
    _check_out_is_ours(args.out, source=args.source)
    if args.task == "nlvr2" and args.answers is not None:
        raise UsageError("--answers is for vqa/gqa; an NLVR2 model answers True or False")
    return TrainSettings(
        task=args.task,
        train=_existing(args.train, "--train"),
        valid=_existing([args.valid], "--valid")[0] if args.valid else None,
        features=_existing(args.features, "--features"),
        source=args.source,
        out=args.out,
        answers=_existing([args.answers], "--answers")[0] if args.answers else None,
        recipe=recipe,
        device=args.device,
        resume=args.resume,
        skip_missing=args.skip_missing,
        log_every=args.log_every,
        quiet=args.quiet or launched_rank() != 0,  # under torchrun rank 0 alone speaks
        subset=Subset(tiny=args.tiny, limit_questions=args.limit_questions),
    )


def open_stores(paths: Sequence[Path]) -> FeatureStore:
    """The joined feature stores; :class:`UsageError` naming the file when one cannot open."""
    from pipeline.store import FeatureStore

    try:
        return FeatureStore.open(*paths)
    except (OSError, ValueError, KeyError) as err:
        raise UsageError(f"--features: cannot open {', '.join(map(str, paths))}: {err}") from None


def read_entries(
    paths: Sequence[Path], store: RegionSource, *, skip_missing: bool, flag: str
) -> tuple[tuple[QuestionEntry, ...], int]:
    """Questions of ``paths`` whose image is in ``store`` and the count skipped (bad data and
    missing images without ``--skip-missing`` are :class:`UsageError`\\s naming the entry)."""
    from encoder.finetune import DataError, read_question_files, with_regions

    try:
        entries = read_question_files(paths)
        kept, skipped = with_regions(entries, store, skip_missing=skip_missing)
    except DataError as err:
        raise UsageError(str(err)) from None
    if not kept:
        raise UsageError(f"{flag}: no question left to use in {', '.join(map(str, paths))}")
    if skipped:
        print(
            f"{flag}: skipped {skipped} question(s) whose image is not in --features",
            file=sys.stderr,
        )
    return kept, skipped


def answer_table(settings: TrainSettings, entries: Sequence[QuestionEntry]) -> AnswerTable:
    """``--answers`` or the training labels' answers; :class:`UsageError` when empty."""
    from encoder.answers import load_answer_table
    from encoder.finetune import DataError, answer_table_from_labels

    try:
        if settings.answers is not None:
            table = load_answer_table(settings.answers)
            if len(table) == 0:
                raise DataError(f"--answers {settings.answers}: the answer list is empty")
            return table
        return answer_table_from_labels(entries, name=", ".join(map(str, settings.train)))
    except (DataError, ValueError, FileNotFoundError) as err:
        raise UsageError(str(err)) from None


def _progress_printer(settings: TrainSettings) -> Callable[[Progress], None] | None:
    def show(p: Progress) -> None:
        if p.step % settings.log_every == 0 or p.step == p.steps:
            print(
                f"epoch {p.epoch + 1}/{settings.recipe.epochs} step {p.step}/{p.steps} "
                f"loss {p.loss:.4f} {p.examples_per_s:.0f} examples/s",
                file=sys.stderr,
                flush=True,
            )

    return None if settings.quiet else show


def plan_train(
    settings: TrainSettings, store: FeatureStore
) -> tuple[tuple[QuestionEntry, ...], tuple[QuestionEntry, ...], int]:
    """Training and validation questions whose images are in ``store`` (``--tiny``: in its
    first images), at most ``--limit-questions`` of each, and how many training questions
    were skipped (:func:`read_entries`)."""
    tiny, limit = settings.subset.tiny, settings.subset.limit_questions
    source = tiny_images(store, settings.features) if tiny else store
    skip = settings.skip_missing or tiny  # LXMERT's --tiny drops the others silently
    train, skipped = read_entries(settings.train, source, skip_missing=skip, flag="--train")
    valid: tuple[QuestionEntry, ...] = ()
    if settings.valid is not None:
        valid, _ = read_entries([settings.valid], source, skip_missing=skip, flag="--valid")
    return first(train, limit), first(valid, limit), skipped


def run_train(args: argparse.Namespace) -> int:
    """``train``: validate -> plan (data, answers) -> run (model, fit) -> finish."""
    from encoder.finetune import QADataset, prepare_encoder
    from weights.defaults import resolve_device

    settings = validate_train(args)
    inputs = run_inputs(settings)
    check_resume(settings, checkpoint=settings.out / CHECKPOINT, inputs=inputs)
    store = open_stores(settings.features)
    if settings.task == "nlvr2":
        return run_train_nlvr2(settings, store, inputs=inputs)
    train_entries, valid_entries, skipped = plan_train(settings, store)
    table = answer_table(settings, train_entries)
    source = f"--answers {settings.answers}" if settings.answers else "the training labels"
    check_labels(train_entries, table, table_name=source)
    try:
        device = rank_device(resolve_device(settings.device, on_fallback=_say))
        encoder, kept = prepare_encoder(
            settings.source, answers=table, config=settings.recipe, device=device
        )
    except MODEL_LOAD_ERRORS as err:
        raise UsageError(f"cannot load --from {settings.source}: {err}") from None
    boxes = settings.recipe.num_boxes
    train = QADataset(train_entries, store, table, num_boxes=boxes)
    valid = QADataset(valid_entries, store, table, num_boxes=boxes) if valid_entries else None
    if not settings.quiet:
        print(
            f"{len(train)} training questions ({skipped} skipped), "
            f"{len(valid) if valid else 0} valid; {len(table)} answers, {kept} kept from "
            f"{settings.source}; device {device}",
            file=sys.stderr,
        )
    record = run_record(
        settings,
        skipped=skipped,
        inputs=inputs,
        answers=len(table),
        answers_kept_from_source=kept,
    )
    return fit_and_write(settings, encoder, train, valid, record, inputs=inputs)


def run_record(
    settings: TrainSettings,
    *,
    skipped: int,
    inputs: Mapping[str, object],
    **task_fields: object,
) -> dict[str, object]:
    """``finetune.json``'s record of a training run: the recipe, the command and the data,
    then the task's own fields, then the count of skipped entries and the inputs' fingerprints
    (:func:`pipeline.finetune_resume.run_inputs`; the checkpoint holds the same)."""
    return {
        "task": settings.task,
        "from": settings.source,
        "command": settings.command(),
        "config": asdict(settings.recipe),
        "train": [str(p) for p in settings.train],
        "valid": str(settings.valid) if settings.valid else None,
        "features": [str(p) for p in settings.features],
        **task_fields,
        "skipped_missing": skipped,
        "inputs": dict(inputs),
    }


def run_train_nlvr2(
    settings: TrainSettings, store: FeatureStore, *, inputs: Mapping[str, object]
) -> int:
    """``train --task nlvr2``: plan (statements) -> run (NLVR2 model, fit) -> finish."""
    from encoder.finetune import PairDataset, prepare_nlvr2_encoder
    from pipeline.finetune_nlvr2 import read_pairs
    from weights.defaults import resolve_device

    tiny, limit = settings.subset.tiny, settings.subset.limit_questions
    source = tiny_images(store, settings.features) if tiny else store
    skip = settings.skip_missing or tiny
    train_entries, skipped = read_pairs(
        settings.train, source, skip_missing=skip, flag="--train", need_labels=True
    )
    valid_entries: tuple[PairEntry, ...] = ()
    if settings.valid is not None:
        valid_entries, _ = read_pairs(
            [settings.valid], source, skip_missing=skip, flag="--valid", need_labels=True
        )
    train_entries, valid_entries = first(train_entries, limit), first(valid_entries, limit)
    try:
        device = rank_device(resolve_device(settings.device, on_fallback=_say))
        encoder = prepare_nlvr2_encoder(settings.source, config=settings.recipe, device=device)
    except MODEL_LOAD_ERRORS as err:
        raise UsageError(f"cannot load --from {settings.source}: {err}") from None
    boxes = settings.recipe.num_boxes
    train = PairDataset(train_entries, store, num_boxes=boxes)
    valid = PairDataset(valid_entries, store, num_boxes=boxes) if valid_entries else None
    if not settings.quiet:
        print(
            f"{len(train)} training statements ({skipped} skipped), "
            f"{len(valid) if valid else 0} valid; NLVR2 head on {settings.source}; "
            f"device {device}",
            file=sys.stderr,
        )
    record = run_record(settings, skipped=skipped, inputs=inputs)
    return fit_and_write(settings, encoder, train, valid, record, inputs=inputs)


def fit_and_write(
    settings: TrainSettings,
    encoder: Encoder,
    train: FitData,
    valid: FitData | None,
    record: Mapping[str, object],
    *,
    inputs: Mapping[str, object],
) -> int:
    """Fit, writing the best model into ``--out`` as it improves, then the full record; the
    checkpoint records ``inputs`` (what a ``--resume`` must be given again). Under torchrun
    every rank fits, rank 0 alone prints and writes (:mod:`pipeline.finetune_distributed`)."""
    from encoder.finetune import fit, write_model_dir

    def keep_best(best: Encoder, epoch: EpochRecord) -> None:
        write_model_dir(best, settings.out, record={**record, "best": asdict(epoch)})

    ranks = join_group(encoder.model.device)
    settings = replace(settings, quiet=settings.quiet or not ranks.writes)
    remedy = f"the last finished epoch is in {settings.out / CHECKPOINT}: run the same command "
    remedy += "with --resume"
    try:
        with (
            peers_lost_named(ranks, remedy=remedy),
            data_errors_are_usage(remedy=lambda: _data_error_remedy(settings.out / CHECKPOINT)),
        ):
            result = fit(
                encoder=encoder,
                train=train,
                valid=valid,
                config=settings.recipe,
                task=settings.task,
                checkpoint=settings.out / CHECKPOINT,
                on_best=keep_best,
                resume=settings.resume,
                on_progress=_progress_printer(settings),
                on_epoch=epoch_reporter(settings.out, quiet=settings.quiet),
                inputs=inputs,
            )
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; continue with the same command and --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if ranks.writes:
        write_outputs(settings, encoder, record, result)
    leave_group(ranks)
    return EXIT_OK


def write_outputs(
    settings: TrainSettings, encoder: Encoder, record: Mapping[str, object], result: FitResult
) -> None:
    """After the last epoch: ``last/``, ``log.log`` and the full ``finetune.json``."""
    from encoder.finetune import FINETUNE_FILE, write_model_dir

    history = [asdict(r) for r in result.history]
    final = {**record, "history": history, "best_epoch": result.best_epoch}
    # The model after the last epoch (vqa.py's LAST.pth); a resume that finds every epoch
    # done has restored it from the checkpoint, so this is always the last epoch's weights.
    write_model_dir(encoder, settings.out / LAST_DIR, record={**final, "last": history[-1]})
    write_log(settings.out, result.history)
    atomic_write_text(settings.out / FINETUNE_FILE, json.dumps(final, indent=1) + "\n")
    if not settings.quiet:
        print(f"wrote {settings.out} (epoch {result.best_epoch})", file=sys.stderr)


#: What to do after a feature record failed to read during ``evaluate``.
_EVALUATE_REMEDY = "nothing was written: repair or re-extract the file and run the command again"


def _data_error_remedy(checkpoint: Path) -> str:
    """What to do after a feature file's record failed to read mid-run."""
    if checkpoint.is_file():
        return (
            f"the last finished epoch is kept in {checkpoint}: restore the file as it was when "
            "this run started (its bytes and modification time) and run the same command with "
            "--resume, or re-extract it and start a new run"
        )
    return "no epoch was finished: repair or re-extract the file and run the command again"


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
    _add_common(parser)
    return parser


def check_evaluate_outputs(args: argparse.Namespace) -> None:
    """``--predictions`` and ``--report`` are neither inputs nor one file, and replace only
    evaluate's own outputs (:func:`pipeline.finetune_outputs.check_outputs`)."""
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


def run_evaluate(args: argparse.Namespace) -> int:
    """``evaluate``: validate -> plan -> predict -> score and write."""
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

    check_evaluate_outputs(args)
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
    store = open_stores(_existing(args.features, "--features"))
    entries, skipped = read_entries(
        _existing(args.questions, "--questions"),
        store,
        skip_missing=args.skip_missing,
        flag="--questions",
    )
    try:
        settings = replace_length(config_for(args.model), recipe.max_question_length)
        encoder = load_encoder(settings, device=resolve_device(args.device, on_fallback=_say))
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
    from pipeline.finetune_nlvr2 import finish_evaluate, read_pairs
    from weights.defaults import resolve_device

    if args.annotations is not None:
        raise UsageError("--annotations are VQA's human answers; NLVR2 files carry their labels")
    if args.predictions is not None and args.predictions.suffix.lower() != ".csv":
        raise UsageError(
            f"--predictions {args.predictions}: NLVR2 predictions are a CSV "
            "(identifier,prediction); give a .csv file"
        )
    store = open_stores(_existing(args.features, "--features"))
    entries, skipped = read_pairs(
        _existing(args.questions, "--questions"),
        store,
        skip_missing=args.skip_missing,
        flag="--questions",
        need_labels=False,
    )
    try:
        settings = replace(
            config_for(args.model), head="nlvr2", max_question_length=recipe.max_question_length
        )
        encoder = load_encoder(settings, device=resolve_device(args.device, on_fallback=_say))
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


TRAIN_COMMAND = Command(
    name="train",
    summary="fine-tune a QA (or NLVR2) model on question (statement) files over feature stores",
    build_parser=build_train_parser,
    run=run_train,
    disk_full_remedy="the last finished epoch is kept; free some space and run the same "
    "command with --resume",
)
EVALUATE_COMMAND = Command(
    name="evaluate",
    summary="accuracy and prediction files of a QA or NLVR2 model",
    build_parser=build_evaluate_parser,
    run=run_evaluate,
)
COMMANDS: dict[str, Command] = {
    c.name: c for c in (TRAIN_COMMAND, EVALUATE_COMMAND, EXPORT_COMMAND)
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lxmert-finetune`` (sub-commands :data:`COMMANDS`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        return run_command(COMMANDS[argv[0]], argv[1:])
    names = "|".join(COMMANDS)
    lines = [f"usage: {PROG} {{{names}}} ...", ""]
    lines += [f"  {c.name:<9} {c.summary}" for c in COMMANDS.values()]
    helped = bool(argv) and argv[0] in ("-h", "--help")
    print("\n".join(lines), file=sys.stdout if helped else sys.stderr)
    return EXIT_OK if helped else EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
