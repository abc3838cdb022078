"""The per-epoch lines of a training run (:func:`encoder.finetune.run.fit_and_write`,
``lxmert-finetune train``) in LXMERT's ``vqa.py`` format, and ``log.log``.

``vqa.py`` prints, and appends to ``<output>/log.log``, per epoch (0-based, percentages)::

    (blank line)
    Epoch 0: Train 57.87
    Epoch 0: Valid 66.10
    Epoch 0: Best 66.10

The Valid and Best lines only with validation data. Here ``log.log`` is rendered from the whole
history and replaced atomically after every epoch, not appended: a run killed after an epoch's
lines but before its checkpoint, then resumed, would otherwise hold that epoch twice.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from weights.files import atomic_write_text

if TYPE_CHECKING:
    from encoder.finetune import EpochRecord

#: The plain-text log inside the run's folder (the name ``vqa.py`` gives it).
LOG_FILE = "log.log"


def epoch_lines(record: EpochRecord, *, best: float | None) -> str:
    """The block ``vqa.py`` writes for ``record`` (its 1-based epoch shown 0-based), with
    ``best``: the best validation accuracy up to and including it."""
    epoch = record.epoch - 1
    text = "\n"
    if record.train_accuracy is not None:  # None only in records from before it was kept
        text += f"Epoch {epoch}: Train {record.train_accuracy * 100.0:0.2f}\n"
    if record.valid_accuracy is not None and best is not None:
        text += f"Epoch {epoch}: Valid {record.valid_accuracy * 100.0:0.2f}\n"
        text += f"Epoch {epoch}: Best {best * 100.0:0.2f}\n"
    return text


def render_log(history: Sequence[EpochRecord]) -> str:
    """``log.log``'s text for the finished epochs ``history``, in order."""
    text, best = "", None
    for record in history:
        score = record.valid_accuracy
        if score is not None:
            best = score if best is None else max(best, score)
        text += epoch_lines(record, best=best)
    return text


def write_log(out: Path, history: Sequence[EpochRecord]) -> Path:
    """Replace ``out/log.log`` with :func:`render_log` of ``history``; returns its path."""
    path = out / LOG_FILE
    atomic_write_text(path, render_log(history))
    return path


def epoch_reporter(out: Path, *, quiet: bool) -> Callable[[Sequence[EpochRecord]], None]:
    """``fit``'s ``on_epoch``: rewrite ``out/log.log`` from the history so far, and (unless
    ``quiet``) print the new epoch's lines on stderr, with its loss and time."""

    def report(history: Sequence[EpochRecord]) -> None:
        write_log(out, history)
        if quiet:
            return
        record = history[-1]
        scores = [r.valid_accuracy for r in history if r.valid_accuracy is not None]
        lines = epoch_lines(record, best=max(scores) if scores else None)
        print(
            f"epoch {record.epoch} done: loss {record.loss:.4f}, {record.seconds:.0f}s{lines}",
            end="",
            file=sys.stderr,
            flush=True,
        )

    return report
