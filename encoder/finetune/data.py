"""Question files in LXMERT's JSON format, the answer table they imply, and a dataset of
typed examples over any source of regions (a feature store, a dict in a test).

LXMERT's VQA/GQA loaders read a JSON list of entries
``{"question_id": int|str, "img_id": str, "sent": str, "label": {answer: soft score}}``;
VQA's also carry ``question_type`` and ``answer_type``. A file without ``label`` (a test split)
is allowed: every score is then 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import torch

from detector.structures import RegionFeatures
from encoder.answers import AnswerTable


class DataError(ValueError):
    """Bad training or evaluation data; the message names the file and the entry."""


class RegionSource(Protocol):
    """Regions by image id: a ``pipeline.features.store.FeatureStore`` or anything with these
    two."""

    def get(self, image_id: str) -> RegionFeatures:
        """The regions of ``image_id``; ``KeyError`` when absent."""
        ...

    def __contains__(self, image_id: object) -> bool: ...


@dataclass(frozen=True)
class QuestionEntry:
    """One question of an LXMERT JSON file.

    Attributes:
        question_id: as in the file (int for VQA, str for GQA); predictions echo it back.
        image_id: ``img_id``, the id of the image's record in the feature store.
        sentence: the question text (``sent``).
        label: answer -> soft score in [0, 1] (VQA: min(1, annotators / 3); GQA: 1.0).
        question_type: ``question_type`` when the file has it (VQA), else None.
        answer_type: ``answer_type`` when the file has it (VQA: yes/no, number, other).
        origin: ``"<file>: entry <index>"``, for messages.
    """

    question_id: int | str
    image_id: str
    sentence: str
    label: Mapping[str, float]
    question_type: str | None
    answer_type: str | None
    origin: str


def check_text(text: str, *, where: str, name: str) -> None:
    """``DataError`` when ``text`` is not valid UTF-8: a lone surrogate (JSON's ``"\\udcff"``
    escape) reads as a str, and no tokenizer takes it (a ``TypeError`` deep inside)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = text.encode("utf-8", "backslashreplace").decode("utf-8")
        raise DataError(
            f"{where}: {name!r} is not valid UTF-8 text ({shown}): it holds a lone surrogate"
        ) from None


def _entry(raw: object, origin: str) -> QuestionEntry:
    """One validated entry; ``DataError`` naming ``origin`` and the field otherwise."""
    if not isinstance(raw, dict):
        raise DataError(f"{origin}: expected an object, got {type(raw).__name__}")
    qid = raw.get("question_id")
    if isinstance(qid, bool) or not isinstance(qid, (int, str)):
        raise DataError(f"{origin}: 'question_id' must be an int or a string, got {qid!r}")
    where = f"{origin} (question_id {qid!r})"
    for name in ("img_id", "sent"):
        if not isinstance(raw.get(name), str) or not raw[name]:
            raise DataError(f"{where}: {name!r} must be a non-empty string, got {raw.get(name)!r}")
    check_text(raw["sent"], where=where, name="sent")
    label = raw.get("label", {})
    if not isinstance(label, dict):
        raise DataError(f"{where}: 'label' must map answers to scores, got {label!r}")
    for answer, score in label.items():
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise DataError(f"{where}: label score of {answer!r} must be a number, got {score!r}")
        if not (math.isfinite(score) and 0.0 <= score <= 1.0):
            raise DataError(f"{where}: label score of {answer!r} must be in [0, 1], got {score}")
    types = {name: raw.get(name) for name in ("question_type", "answer_type")}
    for name, value in types.items():
        if value is not None and not isinstance(value, str):
            raise DataError(f"{where}: {name!r} must be a string, got {value!r}")
    return QuestionEntry(
        question_id=qid,
        image_id=raw["img_id"],
        sentence=raw["sent"],
        label={str(a): float(s) for a, s in label.items()},
        question_type=types["question_type"],
        answer_type=types["answer_type"],
        origin=origin,
    )


class _Entry(Protocol):
    """An entry of a data file: where it came from, for messages."""

    @property
    def origin(self) -> str: ...


E = TypeVar("E", bound=_Entry)


def read_json_list(path: Path, *, of: str) -> list[object]:
    """The list the JSON file ``path`` holds (``of``: what it lists, for the message).

    Raises:
        DataError: the file is not UTF-8, not JSON, or not a list; the message names it.
        OSError: the file cannot be read.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON: {err}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text: {err}") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of {of}, got {type(data).__name__}")
    return data


def unique(entries: Iterable[E], key: Callable[[E], object], field: str) -> tuple[E, ...]:
    """``entries`` in order; ``DataError`` naming both entries when two share ``key``."""
    kept: list[E] = []
    seen: dict[object, str] = {}
    for entry in entries:
        value = key(entry)
        if value in seen:
            raise DataError(f"{entry.origin}: {field} {value!r} repeats {seen[value]}")
        seen[value] = entry.origin
        kept.append(entry)
    return tuple(kept)


def read_questions(path: str | Path) -> tuple[QuestionEntry, ...]:
    """The entries of one LXMERT JSON question file, in file order.

    Raises:
        DataError: the file is not JSON, not a list, an entry lacks a field or has a bad
            value, or two entries share a ``question_id``; the message names file and entry.
        OSError: the file cannot be read.
    """
    return read_question_files([path])


def read_question_files(paths: Sequence[str | Path]) -> tuple[QuestionEntry, ...]:
    """The entries of several files, joined in the order given (ids must stay unique)."""
    entries = (
        _entry(raw, f"{path}: entry {index}")
        for path in map(Path, paths)
        for index, raw in enumerate(read_json_list(path, of="questions"))
    )
    return unique(entries, lambda entry: entry.question_id, "question_id")


def answer_table_from_labels(entries: Iterable[QuestionEntry], *, name: str) -> AnswerTable:
    """Every answer with a positive score in some label, sorted (a stable, reproducible label
    order); ``DataError`` naming ``name`` when there is none."""
    answers = sorted({a for e in entries for a, score in e.label.items() if score > 0.0})
    if not answers:
        raise DataError(
            f"{name}: no answer has a positive score in any 'label', so the answer table would "
            "be empty; pass --answers FILE (a JSON list of answers)"
        )
    return AnswerTable(name=name, answers=tuple(answers))


def with_regions(
    entries: Sequence[QuestionEntry], source: RegionSource, *, skip_missing: bool
) -> tuple[tuple[QuestionEntry, ...], int]:
    """The entries whose image is in ``source`` and the number skipped.

    Raises:
        DataError: an image is missing and ``skip_missing`` is False (names the entry).
    """
    kept = []
    for entry in entries:
        if entry.image_id in source:
            kept.append(entry)
        elif not skip_missing:
            raise DataError(
                f"{entry.origin} (question_id {entry.question_id!r}): image "
                f"{entry.image_id!r} is not in the feature store; extract it, or pass "
                "--skip-missing to skip such questions"
            )
    return tuple(kept), len(entries) - len(kept)


@dataclass(frozen=True, eq=False)
class QAExample:
    """One training or evaluation example.

    Attributes:
        entry: the question.
        regions: its image's regions, at most ``num_boxes`` (the first, i.e. best, ones).
        target: float32 ``[L]`` soft score of each answer of the table (0 for answers
            outside the label; label answers outside the table are dropped, as in LXMERT).
    """

    entry: QuestionEntry
    regions: RegionFeatures
    target: torch.Tensor


def first_boxes(regions: RegionFeatures, count: int) -> RegionFeatures:
    """``regions`` cut to its first ``count`` boxes (unchanged when it has no more)."""
    if regions.num_boxes <= count:
        return regions
    return RegionFeatures(
        image_id=regions.image_id,
        image_h=regions.image_h,
        image_w=regions.image_w,
        boxes=regions.boxes[:count],
        features=regions.features[:count],
        objects_id=regions.objects_id[:count],
        objects_conf=regions.objects_conf[:count],
        attrs_id=regions.attrs_id[:count],
        attrs_conf=regions.attrs_conf[:count],
    )


T = TypeVar("T")


class SizedDataset(torch.utils.data.Dataset[T]):
    """A map-style dataset with a length (torch's ``Dataset`` does not declare one): what
    the fine-tuning loop shuffles and batches, whatever the task's example type."""

    def __len__(self) -> int:
        raise NotImplementedError


class QADataset(SizedDataset[QAExample]):
    """Questions with their regions and soft-score targets over an answer table.

    Regions are read from ``source`` when an item is asked for (a feature store reads one
    record from disk), so a DataLoader's workers share the work.
    """

    def __init__(
        self,
        entries: Sequence[QuestionEntry],
        source: RegionSource,
        table: AnswerTable,
        *,
        num_boxes: int,
    ) -> None:
        if num_boxes < 1:
            raise ValueError(f"num_boxes must be >= 1, got {num_boxes}")
        self.entries = tuple(entries)
        self.source = source
        self.table = table
        self.num_boxes = num_boxes

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> QAExample:
        entry = self.entries[index]
        target = torch.zeros(len(self.table), dtype=torch.float32)
        for answer, score in entry.label.items():
            label = self.table.label(answer)
            if label is not None:
                target[label] = score
        regions = first_boxes(self.source.get(entry.image_id), self.num_boxes)
        return QAExample(entry=entry, regions=regions, target=target)
