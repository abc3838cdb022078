"""A training run's folder, written by :func:`fit_and_write`: the library entry point that
``lxmert-finetune train`` wires up, for Python users too.

The folder holds ``best/`` (:data:`BEST_DIR`: the best model so far, a ``save_pretrained``
directory: ``config.json``, ``model.safetensors``, ``label2ans.json`` for QA) and beside it
``last/`` (:data:`LAST_DIR`: the last epoch's model, the same files), as vqa.py's
``BEST.pth`` and ``LAST.pth``; ``finetune.json`` (:data:`FINETUNE_FILE`: recipe, command, data,
history), ``log.log`` (:mod:`encoder.finetune.log`) and ``training/last.pt``
(:data:`CHECKPOINT`, the resume checkpoint). ``load_encoder`` reads ``best/`` or ``last/``,
and the folder itself as its ``best/`` (:func:`~encoder.finetune.layout.run_model`). A
folder is written over only when it is ours (:func:`check_out_is_ours`, the rule of
:mod:`weights.ownership`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from encoder.finetune.config import FinetuneConfig
from encoder.finetune.data import DataError, QuestionEntry, answer_table_from_labels
from encoder.finetune.distributed import current_ranks
from encoder.finetune.evaluation import Task
from encoder.finetune.fit import FitData, FitResult, fit
from encoder.finetune.layout import BEST_DIR as BEST_DIR

# CHECKPOINT, BEST_DIR, LAST_DIR and check_out_is_ours are re-exported: the run folder's layout and
# its ownership rule live where torch is not needed (encoder.finetune.layout).
from encoder.finetune.layout import CHECKPOINT as CHECKPOINT
from encoder.finetune.layout import FINETUNE_FILE
from encoder.finetune.layout import LAST_DIR as LAST_DIR
from encoder.finetune.layout import check_out_is_ours as check_out_is_ours
from encoder.finetune.log import epoch_reporter, write_log
from encoder.finetune.model import write_model_dir
from weights.files import atomic_write_text

if TYPE_CHECKING:
    from encoder.answers import AnswerTable
    from encoder.build import Encoder
    from encoder.finetune.loop import EpochRecord, Progress


def answer_table(
    entries: Sequence[QuestionEntry], *, answers: Path | None = None, name: str
) -> AnswerTable:
    """The answer table of a QA run: the JSON list ``answers``, else every answer of the
    training labels of ``entries`` (named ``name``, the training files).

    Raises:
        DataError: the table would be empty, or ``answers`` cannot be read (names the file).
    """
    from encoder.answers import load_answer_table

    try:
        if answers is None:
            return answer_table_from_labels(entries, name=name)
        table = load_answer_table(answers)
    except (ValueError, FileNotFoundError) as err:  # DataError is a ValueError
        raise DataError(str(err)) from None
    if len(table) == 0:
        raise DataError(f"--answers {answers}: the answer list is empty")
    return table


def fit_and_write(
    encoder: Encoder,
    train: FitData,
    valid: FitData | None,
    *,
    out: Path,
    config: FinetuneConfig,
    task: Task,
    record: Mapping[str, object],
    inputs: Mapping[str, object],
    resume: bool = False,
    quiet: bool = True,
    on_progress: Callable[[Progress], None] | None = None,
) -> FitResult:
    """Fit ``encoder`` (:func:`~encoder.finetune.fit.fit`), writing the best model into
    ``out`` as it improves, then ``last/``, ``log.log`` and the full ``finetune.json``.

    Args:
        record: what ``finetune.json`` holds besides the history (recipe, command, data).
        inputs: what a resume must be given again (JSON-ready; kept in the checkpoint).
        resume: go on from ``out``'s checkpoint.
        quiet: no lines on stderr (each epoch's, and the last "wrote").

    Under torchrun every rank calls it alike; rank 0 alone prints and writes (the caller
    joins the process group). Ctrl-C propagates (``KeyboardInterrupt``): the last finished
    epoch is in ``out/``:data:`CHECKPOINT`.

    Raises:
        weights.ownership.NotOursError: ``out`` holds someone else's files.
    """
    check_out_is_ours(out)
    writes = current_ranks().writes
    quiet = quiet or not writes

    def keep_best(best: Encoder, epoch: EpochRecord) -> None:
        write_model_dir(best, out / BEST_DIR, record={**record, "best": asdict(epoch)})

    result = fit(
        encoder=encoder,
        train=train,
        valid=valid,
        config=config,
        task=task,
        checkpoint=out / CHECKPOINT,
        on_best=keep_best,
        resume=resume,
        on_progress=on_progress,
        on_epoch=epoch_reporter(out, quiet=quiet),
        inputs=inputs,
    )
    if writes:
        write_outputs(out, encoder, record, result, quiet=quiet)
    return result


def write_outputs(
    out: Path,
    encoder: Encoder,
    record: Mapping[str, object],
    result: FitResult,
    *,
    quiet: bool = True,
) -> None:
    """After the last epoch: ``out/last/``, ``out/log.log`` and the full ``finetune.json``."""
    history = [asdict(r) for r in result.history]
    final = {**record, "history": history, "best_epoch": result.best_epoch}
    # The model after the last epoch (vqa.py's LAST.pth); a resume that finds every epoch
    # done has restored it from the checkpoint, so this is always the last epoch's weights.
    write_model_dir(encoder, out / LAST_DIR, record={**final, "last": history[-1]})
    write_log(out, result.history)
    atomic_write_text(out / FINETUNE_FILE, json.dumps(final, indent=1) + "\n")
    if not quiet:
        print(f"wrote {out} (epoch {result.best_epoch})", file=sys.stderr)
