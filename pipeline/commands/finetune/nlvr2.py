"""The NLVR2 steps of ``lxmert-finetune`` (``--task nlvr2``): statement files read against the
feature stores, and the scores and prediction file of ``evaluate``.
``pipeline.commands.finetune.command`` calls these; the library (``encoder.finetune``) does the
work."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.commands.finetune.outputs import REPORT_KIND
from pipeline.errors import UsageError
from weights.files import atomic_write_text

if TYPE_CHECKING:
    from encoder.finetune import PairEntry, PairReport, RegionSource


def read_pairs(
    paths: Sequence[Path],
    store: RegionSource,
    *,
    skip_missing: bool,
    flag: str,
    need_labels: bool,
) -> tuple[tuple[PairEntry, ...], int]:
    """Statements of NLVR2 JSON ``paths`` whose two images are in ``store``, and the count
    skipped. Bad data, a missing image without ``--skip-missing``, or (``need_labels``) a
    statement without a label are :class:`UsageError`\\ s naming the file and the entry."""
    from encoder.finetune import DataError, pairs_with_regions, read_pair_files

    try:
        entries = read_pair_files(paths)
        kept, skipped = pairs_with_regions(entries, store, skip_missing=skip_missing)
    except DataError as err:
        raise UsageError(str(err)) from None
    if not kept:
        raise UsageError(f"{flag}: no statement left to use in {', '.join(map(str, paths))}")
    unlabelled = next((e for e in kept if e.label is None), None)
    if need_labels and unlabelled is not None:
        raise UsageError(
            f"{unlabelled.origin} (identifier {unlabelled.identifier!r}): no 'label'; every "
            f"statement of {flag} needs one (0/1 or 'True'/'False')"
        )
    if skipped:
        print(
            f"{flag}: skipped {skipped} statement(s) whose images are not in --features",
            file=sys.stderr,
        )
    return kept, skipped


def score_lines(report: PairReport) -> str:
    """The scores as the command prints them."""
    accuracy = report.accuracy
    lines = [f"accuracy {accuracy.overall:.4f} over {accuracy.count} statements"]
    if report.consistency is not None:
        lines.append(f"consistency {report.consistency:.4f} over {report.groups} groups")
    for kind, values in accuracy.per_type.items():
        for name, value in values.items():
            lines.append(f"  {kind} {name}: {value:.4f} ({accuracy.type_counts[kind][name]})")
    return "\n".join(lines)


def finish_evaluate(
    entries: Sequence[PairEntry],
    probabilities: Sequence[float],
    *,
    predictions: Path | None,
    report: Path | None,
    skipped: int,
) -> None:
    """Score (when labelled), print, and write NLVR2's prediction CSV and the JSON report."""
    from encoder.finetune import pair_scores, prediction_csv

    verdicts = [p > 0.5 for p in probabilities]
    summary: dict[str, object] = {
        "kind": REPORT_KIND,
        "task": "nlvr2",
        "statements": len(entries),
        "skipped": skipped,
    }
    if any(e.label is not None for e in entries):
        scores = pair_scores(entries, verdicts)
        summary.update(asdict(scores))
        print(score_lines(scores))
    else:
        print(f"{len(entries)} statements without labels: predictions only")
    if predictions is not None:
        atomic_write_text(predictions, prediction_csv(entries, verdicts))
    if report is not None:
        atomic_write_text(report, json.dumps(summary, indent=1) + "\n")
