"""VQA/GQA metrics on hand-worked cases, and the submission formats."""

from __future__ import annotations

import pytest

from encoder.finetune import (
    exact_match,
    normalize_vqa_answer,
    prediction_records,
    question_scores,
    soft_score,
    summarize,
    vqa_human_accuracy,
)
from encoder.finetune.data import QuestionEntry
from encoder.finetune.evaluation import HumanAnswers


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("Two", "2"),
        ("ten", "10"),
        ("none", "0"),
        ("the dog.", "dog"),
        ("An apple", "apple"),
        ("a red-car", "red car"),  # '-' touches no space: becomes a space
        ("yes!", "yes"),
        ("red , blue", "red blue"),  # ',' touches a space: removed
        ("3.5", "3.5"),  # a period before a digit stays
        ("1,000", "1000"),  # a comma between digits: punctuation removed, not spaced
        ("dont", "don't"),
        ("Its", "its"),  # "its" is a word: no contraction
        (" two\tdogs\n", "2 dogs"),
    ],
)
def test_normalize_vqa_answer(raw: str, normal: str) -> None:
    assert normalize_vqa_answer(raw) == normal


@pytest.mark.parametrize(
    ("matches", "expected"),
    [
        # m of ten humans gave the answer. A subset that leaves out a matching human sees
        # m - 1 matches, one that leaves out another sees m: (m*min((m-1)/3,1) +
        # (10-m)*min(m/3,1)) / 10.
        (0, 0.0),
        (1, (1 * 0 + 9 * (1 / 3)) / 10),  # 0.3
        (2, (2 * (1 / 3) + 8 * (2 / 3)) / 10),  # 0.6
        (3, (3 * (2 / 3) + 7 * 1.0) / 10),  # 0.9
        (4, 1.0),
        (10, 1.0),
    ],
)
def test_vqa_human_accuracy(matches: int, expected: float) -> None:
    humans = ["2"] * matches + ["3"] * (10 - matches)
    assert vqa_human_accuracy("Two", humans) == pytest.approx(expected)


def test_vqa_human_accuracy_normalises_the_humans_too() -> None:
    humans = ["The dog.", "dog", "a dog", "cat", "cat", "cat", "cat", "cat", "cat", "cat"]
    assert vqa_human_accuracy("dog", humans) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="at least one"):
        vqa_human_accuracy("dog", [])


def test_soft_score_and_exact_match() -> None:
    label = {"2": 1.0, "3": 0.3}
    assert soft_score("3", label) == pytest.approx(0.3)
    assert soft_score("4", label) == 0.0
    assert soft_score("two", label) == 0.0  # LXMERT's evaluator: the stored answer string
    assert exact_match("yes", "yes") == 1.0
    assert exact_match("Yes", "yes") == 0.0


def test_summarize_overall_and_per_type() -> None:
    report = summarize(
        [1.0, 0.0, 0.5, 1.0],
        {"answer_type": ["yes/no", "yes/no", "number", None], "question_type": [None] * 4},
    )
    assert report.overall == pytest.approx(2.5 / 4)
    assert report.count == 4
    assert report.per_type == {"answer_type": {"number": 0.5, "yes/no": 0.5}}
    assert report.type_counts == {"answer_type": {"number": 1, "yes/no": 2}}


def _entry(qid: int | str, label: dict[str, float], qtype: str | None = None) -> QuestionEntry:
    return QuestionEntry(
        question_id=qid,
        image_id="img",
        sentence="what?",
        label=label,
        question_type=qtype,
        answer_type=None,
        origin=f"test: entry {qid}",
    )


def test_question_scores_per_task() -> None:
    entries = [_entry(1, {"2": 1.0, "3": 0.6}, "how many"), _entry(2, {"red": 1.0}, "what")]
    vqa = question_scores(entries, ["3", "blue"], task="vqa")
    assert vqa.overall == pytest.approx(0.3)
    assert vqa.per_type["question_type"] == {"how many": 0.6, "what": 0.0}
    gqa = question_scores(entries, ["3", "red"], task="gqa")  # gold: the top-scored answer
    assert gqa.overall == pytest.approx(0.5)
    humans = {
        1: HumanAnswers(("two",) * 10, "how many", "number"),
        2: HumanAnswers(("red",) * 10, None, None),
    }
    official = question_scores(entries, ["2", "red"], task="vqa", annotations=humans)
    assert official.overall == 1.0
    assert official.per_type["answer_type"] == {"number": 1.0}


def test_prediction_records_are_the_official_formats() -> None:
    entries = [_entry(7, {}), _entry("g1", {})]
    assert prediction_records(entries, ["yes", "no"], task="vqa") == [
        {"question_id": 7, "answer": "yes"},
        {"question_id": "g1", "answer": "no"},
    ]
    assert prediction_records(entries, ["yes", "no"], task="gqa") == [
        {"questionId": 7, "prediction": "yes"},
        {"questionId": "g1", "prediction": "no"},
    ]
