"""What ``lxmert-finetune evaluate`` may write: its outputs are never one of its inputs nor
each other, and an existing file is replaced only when it is one of evaluate's own outputs
(as ``extract_features compare --report`` does): the rule of :mod:`weights.ownership`, with
what makes a file evaluate's own. Checked before any model loads; the files themselves are
written atomically (``weights.files.atomic_write_text``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from weights.ownership import check_file_outputs

#: ``kind`` of every JSON report of ``evaluate`` (an existing ``--report`` is replaced only if
#: it has it, or is a report written before reports carried it).
REPORT_KIND = "lxmert-finetune evaluate report"
#: The keys of one record of a JSON prediction file (VQA, GQA).
_PREDICTION_KEYS = ({"question_id", "answer"}, {"questionId", "prediction"})
#: The header lines of a CSV prediction file (VQA, GQA, NLVR2).
_CSV_HEADERS = ("question_id,answer", "questionId,prediction", "identifier,prediction")


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


def _is_ours(flag: str, path: Path) -> bool:
    """Whether evaluate wrote the existing file ``path`` given to ``flag``."""
    return _is_report(path) if flag == "--report" else _is_predictions(path)


def check_outputs(outputs: Mapping[str, Path | None], inputs: Sequence[tuple[str, Path]]) -> None:
    """Refuse (:class:`~weights.ownership.NotOursError`, a :class:`UsageError`, exit 2) an
    output that is an input, two outputs that are one file, an output in a missing folder,
    and an existing output that evaluate did not write (the rule of :mod:`weights.ownership`).

    Args:
        outputs: flag -> file (``--predictions``, ``--report``); None when not asked for.
        inputs: (flag, path) of every file and folder evaluate reads; an output inside an
            input folder (the model's) counts as that input.
    """
    check_file_outputs(
        outputs,
        inputs,
        is_ours=_is_ours,
        writer="lxmert-finetune evaluate",
        kinds={"--report": "report", "--predictions": "prediction file"},
    )
