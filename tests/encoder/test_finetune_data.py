"""Question files and bad data: each error names the file and the entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from encoder_fixtures import make_regions
from finetune_helpers import DictSource, write_questions

from encoder.answers import AnswerTable
from encoder.finetune import (
    DataError,
    QADataset,
    answer_table_from_labels,
    read_question_files,
    read_questions,
    with_regions,
)


def _q(qid: object, img: str = "img1", label: object = None, **extra: object) -> dict[str, object]:
    return {
        "question_id": qid,
        "img_id": img,
        "sent": "is it red?",
        "label": label or {"yes": 1.0},
        **extra,
    }


def test_reads_lxmert_json(tmp_path: Path) -> None:
    path = write_questions(
        tmp_path / "q.json",
        [
            _q(1, label={"yes": 1.0, "no": 0.3}, question_type="is it", answer_type="yes/no"),
            _q("b"),
        ],
    )
    first, second = read_questions(path)
    assert (first.question_id, first.image_id, first.sentence) == (1, "img1", "is it red?")
    assert first.label == {"yes": 1.0, "no": 0.3}
    assert (first.question_type, first.answer_type) == ("is it", "yes/no")
    assert second.question_id == "b" and second.question_type is None
    assert second.origin == f"{path}: entry 1"


def test_malformed_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[{"question_id": 1,', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON"):
        read_questions(path)
    path.write_text('{"question_id": 1}', encoding="utf-8")
    with pytest.raises(DataError, match="expected a JSON list"):
        read_questions(path)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"question_id": 2, "img_id": "i", "label": {}}, r"entry 1 \(question_id 2\): 'sent'"),
        (_q(2, label={"yes": 2.0}), r"entry 1 \(question_id 2\): label score of 'yes'"),
        (_q(2, label=["yes"]), r"entry 1 \(question_id 2\): 'label' must map"),
        (_q(None), r"entry 1: 'question_id'"),
        (_q(1), r"entry 1: question_id 1 repeats .*entry 0"),
    ],
)
def test_bad_entries_name_file_and_entry(
    tmp_path: Path, entry: dict[str, object], message: str
) -> None:
    path = write_questions(tmp_path / "q.json", [_q(1), entry])
    with pytest.raises(DataError, match=message):
        read_questions(path)


def test_ids_stay_unique_across_files(tmp_path: Path) -> None:
    a = write_questions(tmp_path / "a.json", [_q(1)])
    b = write_questions(tmp_path / "b.json", [_q(1)])
    with pytest.raises(DataError, match=r"b\.json: entry 0: question_id 1 repeats .*a\.json"):
        read_question_files([a, b])


def test_missing_image_is_an_error_or_a_counted_skip(tmp_path: Path) -> None:
    path = write_questions(tmp_path / "q.json", [_q(1), _q(2, img="gone"), _q(3, img="gone")])
    entries = read_questions(path)
    source = DictSource({"img1": make_regions("img1", 4, seed=0)})
    with pytest.raises(DataError, match=r"q\.json: entry 1 \(question_id 2\): image 'gone'"):
        with_regions(entries, source, skip_missing=False)
    kept, skipped = with_regions(entries, source, skip_missing=True)
    assert [e.question_id for e in kept] == [1]
    assert skipped == 2


def test_answer_table_from_labels_and_empty_table(tmp_path: Path) -> None:
    path = write_questions(
        tmp_path / "q.json", [_q(1, label={"yes": 1.0, "maybe": 0.0}), _q(2, label={"2": 0.3})]
    )
    table = answer_table_from_labels(read_questions(path), name=str(path))
    assert table.answers == ("2", "yes")  # sorted; zero-score answers left out
    empty = write_questions(tmp_path / "empty.json", [])
    with pytest.raises(DataError, match=r"empty\.json: no answer .* --answers"):
        answer_table_from_labels(read_questions(empty), name=str(empty))


def test_dataset_targets_and_box_cap(tmp_path: Path) -> None:
    path = write_questions(tmp_path / "q.json", [_q(1, label={"no": 0.6, "other": 1.0})])
    source = DictSource({"img1": make_regions("img1", 10, seed=0)})
    dataset = QADataset(read_questions(path), source, AnswerTable("t", ("yes", "no")), num_boxes=4)
    example = dataset[0]
    assert torch.equal(example.target, torch.tensor([0.0, 0.6]))  # "other" is not in the table
    assert example.regions.num_boxes == 4
    assert json.dumps(example.regions.boxes.tolist()) == json.dumps(
        source.get("img1").boxes[:4].tolist()
    )
