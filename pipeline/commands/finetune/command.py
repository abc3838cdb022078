"""``lxmert-finetune``: fine-tune LXMERT on question files over feature stores, and evaluate.

    lxmert-finetune train --task vqa|gqa|nlvr2 --train FILE [FILE...] [--valid FILE] \\
        --features STORE [STORE...] --from NAME|DIR --out DIR [--answers FILE] [--epochs N] \\
        [--batch-size N] [--lr X] [--max-length N] [--boxes N] [--precision fp32|bf16] \\
        [--device auto|cpu|cuda[:N]] [--resume] [--skip-missing] [--tiny] [--limit-questions N]
    lxmert-finetune evaluate --model DIR --questions FILE [FILE...] --features STORE [...] \\
        [--annotations VQA.json] [--predictions OUT.json|OUT.csv] [--report OUT.json]
    lxmert-finetune export RUN --format lxmert-original OUT.pth [--data-parallel]

Each sub-command runs validate -> plan -> run -> finish: flags and data are checked (and
question files read, stores opened) before any model loads; the library
(``encoder.finetune``; a whole run into a folder is :func:`encoder.finetune.run.fit_and_write`)
does the work; the exit code is chosen in one place (``weights.command.run_command``; 130
here on Ctrl-C). This module holds ``train``'s flags and wiring and :func:`main`; ``evaluate``
is :mod:`pipeline.commands.finetune.evaluate`, ``export`` :mod:`pipeline.commands.finetune.export`,
the flags both share :mod:`pipeline.commands.finetune.common`.

Output of ``train`` (``--out DIR``): the best model so far as a ``save_pretrained``
directory (``config.json``, ``model.safetensors``), ``label2ans.json``, ``finetune.json``
(recipe, equivalent command, data, history), ``last/`` (the last epoch's model, the same
files), ``log.log`` (LXMERT's per-epoch Train/Valid/Best lines) and ``training/last.pt``
(the resume checkpoint; the layout is :mod:`encoder.finetune.run`'s, and a folder is
written over only when it is ours: :mod:`weights.ownership`). ``answer(..., encoder=DIR)``
and ``Pipeline(encoder=DIR)`` load it, or ``DIR/last``.

``--task nlvr2`` reads NLVR2 statement files in LXMERT's JSON (``{identifier, img0, img1,
sent, label}``) and trains an NLVR2 model (``encoder.nlvr2``; no answer table, so no
``label2ans.json``) that ``judge(..., encoder=DIR)`` loads; ``evaluate`` then reports accuracy,
consistency over statement groups, and writes NLVR2's ``identifier,prediction`` CSV.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.commands.finetune.common import (
    PROG,
    add_common_flags,
    existing,
    open_stores,
    read_entries,
    say,
)
from pipeline.commands.finetune.data_errors import data_errors_are_usage
from pipeline.commands.finetune.distributed import (
    join_group,
    launched_rank,
    leave_group,
    peers_lost_named,
    rank_device,
)
from pipeline.commands.finetune.evaluate import (  # re-exported: evaluate was in this module
    EVALUATE_COMMAND,
    build_evaluate_parser,
    check_evaluate_outputs,
    replace_length,
    run_evaluate,
    run_evaluate_nlvr2,
)
from pipeline.commands.finetune.export import EXPORT_COMMAND
from pipeline.commands.finetune.labels import check_labels
from pipeline.commands.finetune.resume import check_resume, run_inputs
from pipeline.commands.finetune.subset import Subset, add_subset_flags, first, tiny_images
from pipeline.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError
from pipeline.flags import MODEL_LOAD_ERRORS, check_models
from weights.command import Command, configure_logging, positive_int, run_command

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from encoder.answers import AnswerTable
    from encoder.build import Encoder
    from encoder.finetune import (
        FinetuneConfig,
        FitResult,
        PairEntry,
        Progress,
        QuestionEntry,
        Task,
    )
    from encoder.finetune.fit import FitData
    from pipeline.features.store import FeatureStore

__all__ = [
    "COMMANDS",
    "EVALUATE_COMMAND",
    "TRAIN_COMMAND",
    "TrainSettings",
    "answer_table",
    "build_evaluate_parser",
    "build_train_parser",
    "check_evaluate_outputs",
    "fit_and_write",
    "main",
    "open_stores",
    "plan_train",
    "read_entries",
    "replace_length",
    "run_evaluate",
    "run_evaluate_nlvr2",
    "run_record",
    "run_train",
    "run_train_nlvr2",
    "validate_train",
    "write_outputs",
]


def __getattr__(name: str) -> Any:
    # CHECKPOINT and LAST_DIR are encoder.finetune.run's (the run folder's layout), kept here
    # for the old import path; looked up on first use so that --help loads no torch.
    if name in ("CHECKPOINT", "LAST_DIR"):
        from encoder.finetune import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
        words += ["--boxes", str(r.num_boxes), "--seed", str(r.seed)]
        words += ["--precision", r.precision, "--device", self.device]
        words += ["--skip-missing"] if self.skip_missing else []
        return shlex.join(words + self.subset.words())


def _add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    """The recipe's flags, defaults :class:`~encoder.finetune.FinetuneConfig`'s."""
    from encoder.finetune.config import LXMERT_TASK_LR, FinetuneConfig

    d = FinetuneConfig()
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


def build_train_parser() -> argparse.ArgumentParser:
    """Flags of ``lxmert-finetune train``."""
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
    _add_recipe_flags(parser)
    parser.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    add_subset_flags(parser)
    parser.add_argument(
        "--log-every",
        type=positive_int,
        default=50,
        metavar="STEPS",
        help="a progress line every STEPS steps (default: %(default)s)",
    )
    add_common_flags(parser)
    return parser


def validate_train(args: argparse.Namespace) -> TrainSettings:
    """Flags -> :class:`TrainSettings`; :class:`UsageError` for anything wrong, before work."""
    from encoder.finetune.config import FinetuneConfig, lxmert_recipe_lr
    from encoder.finetune.layout import CHECKPOINT, check_out_is_ours

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
    check_out_is_ours(args.out, source=args.source)
    if args.task == "nlvr2" and args.answers is not None:
        raise UsageError("--answers is for vqa/gqa; an NLVR2 model answers True or False")
    settings = TrainSettings(
        task=args.task,
        train=existing(args.train, "--train"),
        valid=existing([args.valid], "--valid")[0] if args.valid else None,
        features=existing(args.features, "--features"),
        source=args.source,
        out=args.out,
        answers=existing([args.answers], "--answers")[0] if args.answers else None,
        recipe=recipe,
        device=args.device,
        resume=args.resume,
        skip_missing=args.skip_missing,
        log_every=args.log_every,
        quiet=args.quiet or launched_rank() != 0,  # under torchrun rank 0 alone speaks
        subset=Subset(tiny=args.tiny, limit_questions=args.limit_questions),
    )
    check_models([("--from", args.source)], download=True)  # after the files, before torch
    return settings


def answer_table(settings: TrainSettings, entries: Sequence[QuestionEntry]) -> AnswerTable:
    """``--answers`` or the training labels' answers
    (:func:`encoder.finetune.run.answer_table`); :class:`UsageError` when empty."""
    from encoder.finetune import DataError
    from encoder.finetune.run import answer_table as table_of

    name = ", ".join(map(str, settings.train))
    try:
        return table_of(entries, answers=settings.answers, name=name)
    except DataError as err:
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
    settings = validate_train(args)  # its usage errors are said before torch is imported
    configure_logging(quiet=False, verbose=args.verbose, names=("encoder",))
    from encoder.finetune import QADataset, prepare_encoder
    from encoder.finetune.run import CHECKPOINT
    from weights.defaults import resolve_device

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
        device = rank_device(resolve_device(settings.device, on_fallback=say))
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
    (:func:`pipeline.commands.finetune.resume.run_inputs`; the checkpoint holds the same)."""
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
    from pipeline.commands.finetune.nlvr2 import read_pairs
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
        device = rank_device(resolve_device(settings.device, on_fallback=say))
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
    """:func:`encoder.finetune.run.fit_and_write` with ``train``'s flags, under torchrun
    (:mod:`pipeline.commands.finetune.distributed`: every rank fits, rank 0 alone prints and
    writes); the exit code, 130 on Ctrl-C."""
    from encoder.finetune.run import CHECKPOINT
    from encoder.finetune.run import fit_and_write as fit_into_folder

    checkpoint = settings.out / CHECKPOINT
    ranks = join_group(encoder.model.device)
    settings = replace(settings, quiet=settings.quiet or not ranks.writes)
    remedy = f"the last finished epoch is in {checkpoint}: run the same command with --resume"
    try:
        with (
            peers_lost_named(ranks, remedy=remedy),
            data_errors_are_usage(remedy=lambda: _data_error_remedy(checkpoint)),
        ):
            fit_into_folder(
                encoder,
                train,
                valid,
                out=settings.out,
                config=settings.recipe,
                task=settings.task,
                record=record,
                inputs=inputs,
                resume=settings.resume,
                quiet=settings.quiet,
                on_progress=_progress_printer(settings),
            )
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; continue with the same command and --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    leave_group(ranks)
    return EXIT_OK


def write_outputs(
    settings: TrainSettings, encoder: Encoder, record: Mapping[str, object], result: FitResult
) -> None:
    """:func:`encoder.finetune.run.write_outputs` into ``--out``: ``last/``, ``log.log`` and
    the full ``finetune.json`` (kept for callers of this module's old name)."""
    from encoder.finetune.run import write_outputs as write_into_folder

    write_into_folder(settings.out, encoder, record, result, quiet=settings.quiet)


def _data_error_remedy(checkpoint: Path) -> str:
    """What to do after a feature file's record failed to read mid-run."""
    if checkpoint.is_file():
        return (
            f"the last finished epoch is kept in {checkpoint}: restore the file as it was when "
            "this run started (its bytes and modification time) and run the same command with "
            "--resume, or re-extract it and start a new run"
        )
    return "no epoch was finished: repair or re-extract the file and run the command again"


TRAIN_COMMAND = Command(
    name="train",
    summary="fine-tune a QA (or NLVR2) model on question (statement) files over feature stores",
    build_parser=build_train_parser,
    run=run_train,
    disk_full_remedy="the last finished epoch is kept; free some space and run the same "
    "command with --resume",
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
