"""Answer accuracy as pure functions: VQA's soft score and human-answer accuracy, GQA's exact
match, and their summary overall and per question type.

The VQA definitions follow the official evaluation (GT-Vision-Lab/VQA, vqaEval.py): answers
are normalised (punctuation, number words, articles, contractions), then a prediction scores
the mean over the ten leave-one-out subsets of nine human answers of
``min(#matches / 3, 1)``. Written here from that description, not copied.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

#: Punctuation the official normaliser removes or turns into a space (apostrophe, period and
#: colon are not in it: periods have their own rule, apostrophes belong to contractions).
_PUNCTUATION = tuple(';/[]"{}()=+\\_-><@`,?!')
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_NUMBER_WORDS = MappingProxyType(
    {
        "none": "0",
        "zero": "0",
        "one": "1",
        "two": "2",
        "three": "3",
        "four": "4",
        "five": "5",
        "six": "6",
        "seven": "7",
        "eight": "8",
        "nine": "9",
        "ten": "10",
    }
)
_ARTICLES = frozenset({"a", "an", "the"})
#: Contractions; written without their apostrophe ("dont") they get it back. Left out:
#: those whose bare form is a word of its own ("id", "ill", "well", "were", "shell", "wed",
#: "hell").
_CONTRACTION_WORDS = (
    "ain't",
    "aren't",
    "can't",
    "could've",
    "couldn't",
    "didn't",
    "doesn't",
    "don't",
    "hadn't",
    "hasn't",
    "haven't",
    "he'd",
    "he's",
    "how'd",
    "how'll",
    "how's",
    "i'm",
    "i've",
    "isn't",
    "it'd",
    "it'll",
    "let's",
    "ma'am",
    "mightn't",
    "might've",
    "mustn't",
    "must've",
    "needn't",
    "o'clock",
    "oughtn't",
    "shan't",
    "she'd",
    "she's",
    "should've",
    "shouldn't",
    "that's",
    "there'd",
    "there's",
    "they'd",
    "they'll",
    "they're",
    "they've",
    "wasn't",
    "we've",
    "weren't",
    "what'll",
    "what're",
    "what's",
    "what've",
    "when's",
    "where'd",
    "where's",
    "where've",
    "who'd",
    "who'll",
    "who's",
    "who've",
    "why'll",
    "why're",
    "why's",
    "won't",
    "would've",
    "wouldn't",
    "y'all",
    "you'd",
    "you'll",
    "you're",
    "you've",
)
_CONTRACTIONS = MappingProxyType({w.replace("'", ""): w for w in _CONTRACTION_WORDS})


def normalize_vqa_answer(text: str) -> str:
    """An answer in the official VQA normal form.

    1. Newlines and tabs become spaces; the ends are stripped.
    2. Punctuation (``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !``): removed when it touches a
       space or the text has a comma between digits, else replaced by a space. Periods not
       followed by a digit are removed ("3.5" keeps its point).
    3. Lower case; number words "none", "zero".."ten" -> "0".."10"; the articles "a", "an",
       "the" dropped; contractions written without apostrophe get it back ("dont" ->
       "don't"); words joined by single spaces.

    >>> normalize_vqa_answer("Two dogs!")
    '2 dogs'
    """
    out = text.replace("\n", " ").replace("\t", " ").strip()
    glued = _COMMA_BETWEEN_DIGITS.search(out) is not None
    for mark in _PUNCTUATION:
        if f"{mark} " in out or f" {mark}" in out or glued:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    out = _PERIOD_NOT_BEFORE_DIGIT.sub("", out)
    words = [_NUMBER_WORDS.get(word, word) for word in out.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def vqa_human_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """Official VQA accuracy of one prediction against the human answers (ten in VQA).

    Both sides are normalised (:func:`normalize_vqa_answer`). For each human answer ``i``, the
    other answers that equal the prediction are counted: ``acc_i = min(matches_i / 3, 1)``;
    the score is the mean of ``acc_i`` over all ``i``. So an answer that 3 or more of the
    other nine gave scores 1, one given by 2 of ten scores 0.6 (eight subsets see both
    matches, two see one: (8 * 2/3 + 2 * 1/3) / 10).

    (The official script normalises the human answers only when they disagree; VQA v2 stores
    them normalised already, so normalising both sides always gives the same numbers.)
    """
    if not human_answers:
        raise ValueError("vqa_human_accuracy needs at least one human answer")
    guess = normalize_vqa_answer(prediction)
    matches = [normalize_vqa_answer(answer) == guess for answer in human_answers]
    total = sum(matches)
    per_subset = [min((total - int(hit)) / 3.0, 1.0) for hit in matches]
    return sum(per_subset) / len(per_subset)


def soft_score(prediction: str, label: Mapping[str, float]) -> float:
    """LXMERT's VQA evaluation on its JSON: the stored soft score of the predicted answer,
    ``label.get(prediction, 0)`` (src/tasks/vqa_data.py ``VQAEvaluator``). The scores were
    computed by the official rule when the JSON was made, so no normalisation here."""
    return float(label.get(prediction, 0.0))


def exact_match(prediction: str, answer: str) -> float:
    """GQA accuracy: 1.0 when the predicted string equals the gold answer, else 0.0."""
    return 1.0 if prediction == answer else 0.0


def gold_answer(label: Mapping[str, float]) -> str | None:
    """The answer with the highest score in ``label`` (ties: the first in the mapping), or
    None when ``label`` is empty: GQA's one answer from its LXMERT JSON ``{answer: 1.0}``."""
    best: str | None = None
    for answer, score in label.items():
        if best is None or score > label[best]:
            best = answer
    return best


@dataclass(frozen=True)
class AccuracyReport:
    """Mean score overall and per type.

    Attributes:
        overall: mean score over all questions (0.0 when there are none).
        count: number of questions.
        per_type: type name -> mean score, for questions that have that kind of type
            (e.g. ``answer_type`` -> {"yes/no": 0.9, ...}); types sorted by name.
        type_counts: the same keys -> number of questions.
    """

    overall: float
    count: int
    per_type: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    type_counts: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


def summarize(
    scores: Sequence[float], types: Mapping[str, Sequence[str | None]] | None = None
) -> AccuracyReport:
    """Overall and per-type means of per-question ``scores``.

    Args:
        scores: one score in [0, 1] per question.
        types: kind of type (``question_type``, ``answer_type``) -> one type per question,
            None where a question has none; a kind with no type at all is left out.
    """
    per_type: dict[str, dict[str, float]] = {}
    type_counts: dict[str, dict[str, int]] = {}
    for kind, values in (types or {}).items():
        if len(values) != len(scores):
            raise ValueError(f"{kind}: {len(values)} types for {len(scores)} scores")
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for value, score in zip(values, scores, strict=True):
            if value is not None:
                sums[value] = sums.get(value, 0.0) + score
                counts[value] = counts.get(value, 0) + 1
        if counts:
            per_type[kind] = {t: sums[t] / counts[t] for t in sorted(counts)}
            type_counts[kind] = {t: counts[t] for t in sorted(counts)}
    return AccuracyReport(
        overall=sum(scores) / len(scores) if scores else 0.0,
        count=len(scores),
        per_type=per_type,
        type_counts=type_counts,
    )
