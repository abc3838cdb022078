"""Question and statement text that is not UTF-8 in a data file (issue 26, item 11, as
``lxmert-finetune`` meets it): JSON's ``"\\udcff"`` escape reads as a lone surrogate, which the
tokenizer rejects with a TypeError (exit 4). The readers refuse it as bad data naming the file
and the entry (exit 2 from the command, before any model loads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from encoder.finetune import DataError, read_pair_files, read_questions


def test_a_question_with_a_lone_surrogate_is_bad_data(tmp_path: Path) -> None:
    path = tmp_path / "q.json"
    good = {"question_id": 1, "img_id": "a", "sent": "what color?", "label": {"red": 1.0}}
    path.write_text(json.dumps([good, {**good, "question_id": 2, "sent": "what \udcff color"}]))
    assert "\\udcff" in path.read_text()  # the file itself is plain ASCII JSON
    with pytest.raises(DataError, match=r"entry 1 \(question_id 2\): 'sent' is not valid UTF-8"):
        read_questions(path)


def test_a_statement_with_a_lone_surrogate_is_bad_data(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    raw = {"identifier": "x-0", "img0": "a", "img1": "b", "sent": "\ud800 two", "label": 1}
    path.write_text(json.dumps([raw]))
    with pytest.raises(DataError, match=r"\(identifier 'x-0'\): 'sent' is not valid UTF-8"):
        read_pair_files([path])
