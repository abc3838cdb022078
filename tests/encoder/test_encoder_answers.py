"""Answer sets and top-k decoding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from encoder.answers import (
    AnswerTable,
    answer_labels,
    answer_table_for,
    load_answer_table,
    top_k_answers,
)


@pytest.mark.parametrize(("name", "size"), [("vqa", 3129), ("gqa", 1842), ("lxmert", 9500)])
def test_shipped_sets_by_name_and_size(name: str, size: int) -> None:
    table = load_answer_table(name)
    assert len(table) == size
    assert answer_table_for(size).name == name
    assert answer_table_for(size, name).answers == table.answers


def test_lxmert_table_keeps_file_order() -> None:
    table = load_answer_table("lxmert")
    raw = json.loads((Path(__file__).parents[2] / "encoder/data/lxmert_all_ans.json").read_text())
    assert table.answers[:3] == tuple(item["ans"] for item in raw[:3])
    assert table.label(raw[1234]["ans"]) == 1234


def test_explicit_file_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "answers.json"
    path.write_text(json.dumps(["red", "green", "blue"]), encoding="utf-8")
    assert answer_table_for(3, path).answers == ("red", "green", "blue")
    with pytest.raises(ValueError, match="num_qa_labels=4"):
        answer_table_for(4, path)
    with pytest.raises(ValueError, match="no shipped answer set has 17"):
        answer_table_for(17)
    with pytest.raises(ValueError, match="unknown answer set"):
        load_answer_table("coco")
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        load_answer_table(tmp_path / "nope.json")


def test_top_k_order_probabilities_and_ties() -> None:
    table = AnswerTable(name="t", answers=("a", "b", "c", "d", "e"))
    logits = torch.tensor([[0.0, 2.0, 1.0, 2.0, -1.0], [5.0, 0.0, 0.0, 0.0, 0.0]])
    result = top_k_answers(logits, table, k=3)
    assert [s.answer for s in result[0]] == ["b", "d", "c"]  # tie b/d broken by label index
    assert [s.label for s in result[1]] == [0, 1, 2]
    exp = [pow(2.718281828459045, v) for v in (0.0, 2.0, 1.0, 2.0, -1.0)]
    assert result[0][0].probability == pytest.approx(exp[1] / sum(exp), rel=1e-6)
    assert result[0][2].probability == pytest.approx(exp[2] / sum(exp), rel=1e-6)
    assert top_k_answers(logits, table)[0][0].answer == "b"
    with pytest.raises(ValueError, match="k must be"):
        top_k_answers(logits, table, k=6)
    with pytest.raises(ValueError, match=r"\[B, 5\]"):
        top_k_answers(logits[:, :4], table)


def test_answer_labels_ignore_missing() -> None:
    table = AnswerTable(name="t", answers=("yes", "no"))
    assert answer_labels(["no", None, "maybe", "yes"], table).tolist() == [1, -100, -100, 0]
