"""Scoring predictions against question files or official VQA annotations, and prediction
records in the official submission formats."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from encoder.finetune.data import DataError, QuestionEntry
from encoder.finetune.metrics import (
    AccuracyReport,
    exact_match,
    gold_answer,
    soft_score,
    summarize,
    vqa_human_accuracy,
)

#: The kind of data: the metric and the submission format follow from it. ``nlvr2``
#: (statements about image pairs) is scored by ``encoder.finetune.pairs.pair_scores``.
Task = Literal["vqa", "gqa", "nlvr2"]
TASKS: tuple[Task, ...] = ("vqa", "gqa", "nlvr2")


def _question_task(task: Task) -> None:
    if task == "nlvr2":
        raise ValueError("nlvr2 statements are scored by encoder.finetune.pairs.pair_scores")


@dataclass(frozen=True)
class HumanAnswers:
    """One question of an official VQA annotation file.

    Attributes:
        answers: the human answers (ten in VQA v1/v2), as given.
        question_type: e.g. "what color is the"; None when absent.
        answer_type: "yes/no", "number" or "other"; None when absent.
    """

    answers: tuple[str, ...]
    question_type: str | None
    answer_type: str | None


def read_vqa_annotations(path: str | Path) -> dict[int | str, HumanAnswers]:
    """question_id -> :class:`HumanAnswers` from an official VQA annotation file
    (``{"annotations": [{"question_id", "answers": [{"answer": ...}, ...], ...}]}``).

    Raises:
        DataError: not JSON, or an annotation without its question id or answers (names the
            file and the entry).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON: {err}") from None
    items = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise DataError(f"{path}: expected an object with an 'annotations' list")
    out: dict[int | str, HumanAnswers] = {}
    for index, item in enumerate(items):
        where = f"{path}: annotation {index}"
        qid = item.get("question_id") if isinstance(item, dict) else None
        if isinstance(qid, bool) or not isinstance(qid, (int, str)):
            raise DataError(f"{where}: 'question_id' must be an int or a string")
        answers = item.get("answers")
        if not isinstance(answers, list) or not answers:
            raise DataError(f"{where} (question_id {qid!r}): 'answers' must be a non-empty list")
        texts = tuple(a.get("answer") if isinstance(a, dict) else None for a in answers)
        if not all(isinstance(text, str) for text in texts):
            raise DataError(f"{where} (question_id {qid!r}): every answer needs an 'answer'")
        out[qid] = HumanAnswers(
            answers=tuple(str(text) for text in texts),
            question_type=item.get("question_type"),
            answer_type=item.get("answer_type"),
        )
    return out


def question_scores(
    entries: Sequence[QuestionEntry],
    predictions: Sequence[str],
    *,
    task: Task,
    annotations: Mapping[int | str, HumanAnswers] | None = None,
) -> AccuracyReport:
    """Accuracy of ``predictions[i]`` for ``entries[i]``.

    ``vqa``: the official human-answer accuracy when ``annotations`` are given (every entry
    must have one), else LXMERT's soft score from the entry's label. ``gqa``: exact match
    with the entry's top-scored answer. Per type: ``question_type`` and ``answer_type`` of the
    entries (or of the annotations).
    """
    _question_task(task)
    if len(entries) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(entries)} questions")
    scores: list[float] = []
    qtypes: list[str | None] = []
    atypes: list[str | None] = []
    for entry, guess in zip(entries, predictions, strict=True):
        qtype, atype = entry.question_type, entry.answer_type
        if task == "gqa":
            gold = gold_answer(entry.label)
            scores.append(0.0 if gold is None else exact_match(guess, gold))
        elif annotations is not None:
            if entry.question_id not in annotations:
                raise DataError(
                    f"{entry.origin}: question_id {entry.question_id!r} has no annotation"
                )
            human = annotations[entry.question_id]
            scores.append(vqa_human_accuracy(guess, human.answers))
            qtype, atype = human.question_type or qtype, human.answer_type or atype
        else:
            scores.append(soft_score(guess, entry.label))
        qtypes.append(qtype)
        atypes.append(atype)
    return summarize(scores, {"question_type": qtypes, "answer_type": atypes})


def prediction_records(
    entries: Sequence[QuestionEntry], predictions: Sequence[str], *, task: Task
) -> list[dict[str, int | str]]:
    """Official submission records: VQA ``{"question_id", "answer"}``, GQA
    ``{"questionId", "prediction"}``; question ids as in the question file."""
    _question_task(task)
    if len(entries) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(entries)} questions")
    if task == "gqa":
        return [
            {"questionId": e.question_id, "prediction": p}
            for e, p in zip(entries, predictions, strict=True)
        ]
    return [
        {"question_id": e.question_id, "answer": p}
        for e, p in zip(entries, predictions, strict=True)
    ]
