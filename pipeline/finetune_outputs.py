"""What ``lxmert-finetune evaluate`` may write: its outputs are never one of its inputs nor
each other, and an existing file is replaced only when it is one of evaluate's own outputs
(as ``extract_features compare --report`` does). Checked before any model loads; the files
themselves are written atomically (``weights.files.atomic_write_text``)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline.exits import UsageError

#: ``kind`` of every JSON report of ``evaluate`` (an existing ``--report`` is replaced only if
#: it has it, or is a report written before reports carried it).
REPORT_KIND = "lxmert-finetune evaluate report"
#: The keys of one record of a JSON prediction file (VQA, GQA).
_PREDICTION_KEYS = ({"question_id", "answer"}, {"questionId", "prediction"})
#: The header lines of a CSV prediction file (VQA, GQA, NLVR2).
_CSV_HEADERS = ("question_id,answer", "questionId,prediction", "identifier,prediction")


def _same_file(a: Path, b: Path) -> bool:
    """One file under two names: equal resolved paths (links followed), or one inode (hard
    links, bind mounts)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _is_report(path: Path) -> bool:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict):
        return False
    before_kind = "kind" not in data and {"task", "skipped"} <= set(data)
    return data.get("kind") == REPORT_KIND or (
        before_kind and ("questions" in data or "statements" in data)
    )


def _is_predictions(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    if path.suffix.lower() == ".csv":
        return text.split("\n", 1)[0].rstrip("\r") in _CSV_HEADERS
    try:
        data = json.loads(text)
    except ValueError:
        return False
    return isinstance(data, list) and all(
        isinstance(r, dict) and set(r) in _PREDICTION_KEYS for r in data
    )


def check_outputs(outputs: Mapping[str, Path | None], inputs: Sequence[tuple[str, Path]]) -> None:
    """Refuse (:class:`UsageError`, exit 2) an output that is an input, two outputs that are
    one file, an output in a missing folder, and an existing output that evaluate did not
    write.

    Args:
        outputs: flag -> file (``--predictions``, ``--report``); None when not asked for.
        inputs: (flag, path) of every file and folder evaluate reads; an output inside an
            input folder (the model's) counts as that input.
    """
    given = [(flag, path) for flag, path in outputs.items() if path is not None]
    for number, (flag, path) in enumerate(given):
        if path.is_dir():
            raise UsageError(f"{flag} {path} is a directory; give a file")
        if not path.parent.is_dir():
            raise UsageError(f"{flag} {path}: the folder {path.parent} does not exist")
        for in_flag, source in inputs:
            inside = source.is_dir() and path.resolve().is_relative_to(source.resolve())
            if inside or _same_file(path, source):
                raise UsageError(
                    f"{flag} {path} is also an input ({in_flag} {source}); evaluate never "
                    "writes over what it reads: choose another file"
                )
        for other_flag, other in given[:number]:
            if _same_file(path, other):
                raise UsageError(
                    f"{flag} {path} and {other_flag} {other} are one file; give each its own"
                )
        owned = _is_report(path) if flag == "--report" else _is_predictions(path)
        if path.exists() and not owned:
            what = "report" if flag == "--report" else "prediction file"
            raise UsageError(
                f"{flag} {path} exists and is not a {what} of lxmert-finetune evaluate; "
                "remove it or choose another name"
            )
