"""How many training questions the answer table can teach: a question whose labels are all
empty, zero or outside the table gives an all-zero target, so a run where none has one would
train on nothing and still write a model. Checked before any model loads."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pipeline.errors import UsageError

if TYPE_CHECKING:
    from encoder.answers import AnswerTable
    from encoder.finetune import QuestionEntry


def labelled_count(entries: Sequence[QuestionEntry], table: AnswerTable) -> int:
    """Questions with at least one answer of positive score in ``table``."""
    return sum(
        any(score > 0 and table.label(answer) is not None for answer, score in e.label.items())
        for e in entries
    )


def check_labels(entries: Sequence[QuestionEntry], table: AnswerTable, *, table_name: str) -> None:
    """Refuse (:class:`UsageError`, exit 2) training questions of which none has a label in
    the answer table; warn on stderr when fewer than half have one."""
    count = labelled_count(entries, table)
    said = f"{count} of {len(entries)} questions have a label in the answer table ({table_name})"
    if count == 0:
        raise UsageError(
            f"--train: {said}; there is nothing to learn. Check that the labels are filled in "
            "and that --answers holds the answers they use"
        )
    if 2 * count < len(entries):
        print(
            f"warning: --train: only {said}; the rest train towards no answer",
            file=sys.stderr,
        )
