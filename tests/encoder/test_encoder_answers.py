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


def test_lxmert_answer_files_dict_and_list(tmp_path: Path) -> None:
    # LXMERT's data/vqa/trainval_ans2label.json and trainval_label2ans.json, in miniature.
    ans2label = tmp_path / "trainval_ans2label.json"
    ans2label.write_text(json.dumps({"net": 0, "pitcher": 2, "orange": 1}), encoding="utf-8")
    label2ans = tmp_path / "trainval_label2ans.json"
    label2ans.write_text(json.dumps(["net", "orange", "pitcher"]), encoding="utf-8")
    by_dict = load_answer_table(ans2label)
    assert by_dict.answers == ("net", "orange", "pitcher")
    assert by_dict.label("pitcher") == 2
    assert answer_table_for(3, ans2label).answers == load_answer_table(label2ans).answers


@pytest.mark.parametrize(
    ("ans2label", "message"),
    [
        ({"a": 0, "b": 2}, r"0\.\.1 exactly once; \[2\] lie outside and \[1\] are missing"),
        ({"a": 1, "b": 1}, r"index 1 is given to both 'a' and 'b'"),
        ({"a": 0, "b": -1}, r"\[-1\] lie outside"),
        ({"a": 0, "b": "1"}, r"index of 'b' must be an integer"),
        ({"a": True}, r"index of 'a' must be an integer"),
    ],
)
def test_ans2label_indices_must_be_0_to_n_minus_1_once(
    tmp_path: Path, ans2label: dict[str, object], message: str
) -> None:
    path = tmp_path / "trainval_ans2label.json"
    path.write_text(json.dumps(ans2label), encoding="utf-8")
    with pytest.raises(ValueError, match=message) as caught:
        load_answer_table(path)
    assert str(path) in str(caught.value)
