"""Answer sets (label index <-> answer string) and top-k decoding of LXMERT's QA logits.

Probability: a softmax over all labels of the QA head. LXMERT fine-tunes VQA/GQA heads with a
sigmoid (BCE on soft scores) and pretrains the 9500-way head with a softmax (cross-entropy);
we report the softmax for every head so that the k probabilities of one question are
comparable across checkpoints and sum to at most 1. The ranking is the same as the argmax of
the logits (the HF demo) and as LXMERT's sigmoid scores, since both maps are monotone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

DATA_DIR: Path = Path(__file__).resolve().parent / "data"

#: Shipped answer sets: name -> (file, number of answers).
ANSWER_SETS: dict[str, tuple[str, int]] = {
    "vqa": ("vqa_label2ans.json", 3129),
    "gqa": ("gqa_label2ans.json", 1842),
    "lxmert": ("lxmert_all_ans.json", 9500),
}


@dataclass(frozen=True)
class AnswerTable:
    """An ordered answer set: label index ``i`` is ``answers[i]``.

    Attributes:
        name: ``vqa``, ``gqa``, ``lxmert`` or the file it was read from.
        answers: the answer strings, in label order.
    """

    name: str
    answers: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, int] = {}
        for label, answer in enumerate(self.answers):
            index.setdefault(answer, label)
        object.__setattr__(self, "_index", index)

    def __len__(self) -> int:
        return len(self.answers)

    def answer(self, label: int) -> str:
        """The answer string of ``label``."""
        if not 0 <= label < len(self.answers):
            raise IndexError(f"label {label} outside answer set {self.name!r} of {len(self)}")
        return self.answers[label]

    def label(self, answer: str) -> int | None:
        """The label index of ``answer`` (exact string), or ``None`` if not in the set."""
        return self._index.get(answer)


def _read_answers(path: Path) -> tuple[str, ...]:
    """The answers of a JSON file, in label order. Three shapes are read: a list of answer
    strings (LXMERT's ``trainval_label2ans.json``), LXMERT's list of ``{"ans": ..., "dsets":
    [...]}`` (``all_ans.json``), and a dict from answer to label index (LXMERT's
    ``trainval_ans2label.json``), whose indices must be 0..N-1, each exactly once."""
    if not path.is_file():
        raise FileNotFoundError(f"answer set file {path} not found")
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        return _answers_by_index(data, path)
    if not isinstance(data, list):
        raise ValueError(
            f"answer set file {path} must hold a JSON list of answers or a dict from answer "
            f"to index, got {type(data).__name__}"
        )
    answers = []
    for item in data:
        if isinstance(item, dict) and isinstance(item.get("ans"), str):
            answers.append(item["ans"])
        elif isinstance(item, str):
            answers.append(item)
        else:
            raise ValueError(
                f"answer set file {path}: entries must be strings or {{'ans': str}}, got {item!r}"
            )
    return tuple(answers)


def _answers_by_index(ans2label: dict[str, object], path: Path) -> tuple[str, ...]:
    """The answers of an ``ans2label`` dict in label order; a label that is not an int, is
    repeated, or leaves a gap in 0..N-1 is an error naming the file (a gap would shift every
    later answer onto the wrong logit)."""
    by_label: dict[int, str] = {}
    for answer, label in ans2label.items():
        # bool is an int in Python; true/false in a label file is a mistake, not 1/0.
        if not isinstance(label, int) or isinstance(label, bool):
            raise ValueError(
                f"answer set file {path}: the index of {answer!r} must be an integer, got {label!r}"
            )
        if label in by_label:
            raise ValueError(
                f"answer set file {path}: index {label} is given to both "
                f"{by_label[label]!r} and {answer!r}; each index 0..N-1 must appear once"
            )
        by_label[label] = answer
    outside = sorted(label for label in by_label if not 0 <= label < len(by_label))
    if outside:
        missing = sorted(set(range(len(by_label))) - set(by_label))
        raise ValueError(
            f"answer set file {path}: indices must be 0..{len(by_label) - 1} exactly once; "
            f"{outside[:5]} lie outside and {missing[:5]} are missing"
        )
    return tuple(by_label[label] for label in range(len(by_label)))


def load_answer_table(name_or_path: str | Path) -> AnswerTable:
    """A shipped answer set by name (``vqa``, ``gqa``, ``lxmert``) or a JSON file of answers."""
    if isinstance(name_or_path, str) and name_or_path in ANSWER_SETS:
        filename, expected = ANSWER_SETS[name_or_path]
        answers = _read_answers(DATA_DIR / filename)
        if len(answers) != expected:
            raise ValueError(
                f"{DATA_DIR / filename} holds {len(answers)} answers, expected {expected}; "
                "the shipped data file is damaged, reinstall the package"
            )
        return AnswerTable(name=name_or_path, answers=answers)
    path = Path(name_or_path)
    if path.suffix != ".json":
        raise ValueError(
            f"unknown answer set {str(name_or_path)!r}: use one of {', '.join(ANSWER_SETS)} "
            "or a path to a JSON file of answers (a list in label order, or a dict from "
            "answer to index)"
        )
    return AnswerTable(name=str(path), answers=_read_answers(path))


def answer_table_for(num_qa_labels: int, answer_set: str | Path | None = None) -> AnswerTable:
    """The answer set for a QA head with ``num_qa_labels`` outputs.

    With ``answer_set`` given it is loaded and must have ``num_qa_labels`` answers; otherwise
    the shipped set of that size is chosen (3129 vqa, 1842 gqa, 9500 lxmert).
    """
    if answer_set is None:
        by_size = {size: name for name, (_, size) in ANSWER_SETS.items()}
        if num_qa_labels not in by_size:
            raise ValueError(
                f"no shipped answer set has {num_qa_labels} answers (known: "
                + ", ".join(f"{name}={size}" for name, (_, size) in ANSWER_SETS.items())
                + "); give the checkpoint's answer file (answer_set=, or --answers FILE where the "
                "command has it): a JSON list in label order or a dict from answer to index"
            )
        answer_set = by_size[num_qa_labels]
    table = load_answer_table(answer_set)
    if len(table) != num_qa_labels:
        raise ValueError(
            f"answer set {table.name!r} has {len(table)} answers but the model's QA head has "
            f"num_qa_labels={num_qa_labels}; pick the answer set the checkpoint was trained with"
        )
    return table


@dataclass(frozen=True)
class ScoredAnswer:
    """One decoded answer.

    Attributes:
        answer: the answer string.
        label: its index in the answer set.
        probability: softmax over all labels of the QA logits, in [0, 1].
    """

    answer: str
    label: int
    probability: float


def top_k_answers(
    logits: torch.Tensor, table: AnswerTable, *, k: int = 1
) -> list[list[ScoredAnswer]]:
    """The ``k`` most probable answers of each question, most probable first.

    Args:
        logits: float ``[B, L]`` QA logits, ``L == len(table)``.
        table: the answer set of the head.
        k: answers per question, ``1 <= k <= L``.

    Returns:
        B lists of k :class:`ScoredAnswer`, by probability descending; ties by label index.
    """
    if logits.ndim != 2 or logits.shape[1] != len(table):
        raise ValueError(
            f"logits must be [B, {len(table)}] for answer set {table.name!r}, "
            f"got {tuple(logits.shape)}"
        )
    if not 1 <= k <= len(table):
        raise ValueError(f"k must be in [1, {len(table)}], got {k}")
    probs = torch.softmax(logits.detach().float(), dim=-1).cpu()
    # A stable descending sort keeps equal probabilities in label order.
    order = torch.sort(probs, dim=-1, descending=True, stable=True).indices[:, :k]
    return [
        [
            ScoredAnswer(answer=table.answers[label], label=label, probability=float(row[label]))
            for label in labels.tolist()
        ]
        for row, labels in zip(probs, order, strict=True)
    ]


def answer_labels(answers: Sequence[str | None], table: AnswerTable) -> torch.Tensor:
    """int64 ``[B]`` label indices; ``-100`` (ignored by cross-entropy) for ``None`` or answers
    outside the set (LXMERT prunes those the same way)."""
    labels = []
    for answer in answers:
        label = None if answer is None else table.label(answer)
        labels.append(-100 if label is None else label)
    return torch.tensor(labels, dtype=torch.long)
