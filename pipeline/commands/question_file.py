"""``answer --questions FILE``: many questions about many images, read from a file.

Two formats, chosen by the file's first character:

- JSON Lines: one object per line, ``{"image": ..., "question": ..., "question_id": ...}``
  (``question_id`` optional; blank lines skipped);
- CSV with a header row naming ``image`` and ``question`` (and optionally ``question_id``),
  in any order; other columns are ignored.

A relative image path is resolved against the file's folder, as LXMERT's data files name
images relative to where they sit. A question without ``question_id`` gets its line number
in the file (1-based; for CSV the line where its record ends). Every problem is a
:class:`~weights.command.UsageError` naming the file and the line, found before any model
loads. Standard library only.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from weights.command import UsageError


@dataclass(frozen=True)
class QuestionRow:
    """One question of the file.

    Attributes:
        question_id: as given (a string or a number), else the line number.
        image: the image as the file names it (written back in the output).
        path: that image's path, resolved against the file's folder.
        question: the question text.
        line: the line of the file it came from (1-based).
    """

    question_id: str | int
    image: str
    path: Path
    question: str
    line: int


def read_question_file(path: Path) -> list[QuestionRow]:
    """Every question of ``path`` in file order; raises :class:`UsageError` naming the file,
    the line and the remedy for a missing or unreadable file, a bad line, or no questions."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--questions {path}: no such file") from None
    except UnicodeDecodeError as error:
        raise UsageError(f"--questions {path}: not UTF-8 text ({error.reason})") from None
    except OSError as error:
        raise UsageError(f"--questions {path}: cannot be read ({error.strerror})") from None
    start = text.lstrip("\ufeff").lstrip()
    rows = _json_lines(path, text) if start.startswith("{") else _csv_rows(path, text)
    if not start or not rows:
        raise UsageError(
            f"--questions {path}: no questions; give JSON Lines "
            '({"image": ..., "question": ...} per line) or CSV with a header row image,question'
        )
    for row in rows:
        if not row.path.is_file():
            raise UsageError(
                f"--questions {path}:{row.line}: image {row.image!r} is not a file "
                f"({row.path}); relative paths are read from the file's folder"
            )
    return rows


def _json_lines(path: Path, text: str) -> list[QuestionRow]:
    rows = []
    for number, line in enumerate(text.lstrip("\ufeff").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UsageError(f"--questions {path}:{number}: not JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise UsageError(f"--questions {path}:{number}: not a JSON object")
        rows.append(_row(path, record, number))
    return rows


def _csv_rows(path: Path, text: str) -> list[QuestionRow]:
    if not text.strip():
        return []
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    header = [name.strip() for name in reader.fieldnames or []]
    missing = [name for name in ("image", "question") if name not in header]
    if missing:
        raise UsageError(
            f"--questions {path}: neither JSON Lines nor CSV with a header row: the first line "
            f"names no {' or '.join(missing)} column (found {header or 'nothing'})"
        )
    reader.fieldnames = header
    return [_row(path, record, reader.line_num) for record in reader]


def _row(path: Path, record: dict[str, object], line: int) -> QuestionRow:
    """A :class:`QuestionRow` of one JSON object or CSV record, checked."""
    image, question = record.get("image"), record.get("question")
    for name, value in (("image", image), ("question", question)):
        if not isinstance(value, str) or not value.strip():
            raise UsageError(f"--questions {path}:{line}: no {name} (a non-empty string)")
    assert isinstance(image, str) and isinstance(question, str)
    given = record.get("question_id")
    if given in (None, ""):
        question_id: str | int = line
    elif isinstance(given, (str, int)) and not isinstance(given, bool):
        question_id = given
    else:
        raise UsageError(f"--questions {path}:{line}: question_id must be a string or an integer")
    return QuestionRow(
        question_id=question_id,
        image=image,
        path=path.parent / image,
        question=question,
        line=line,
    )
