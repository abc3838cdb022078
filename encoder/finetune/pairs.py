"""NLVR2 statement files in LXMERT's JSON format, their metrics, and a dataset of typed pair
examples over any source of regions.

LXMERT's NLVR2 loader (src/tasks/nlvr2_data.py) reads a JSON list of entries
``{"identifier": str, "img0": str, "img1": str, "sent": str, "label": 0|1}``: ``img0`` is the
left image, ``img1`` the right one, label 1 means the statement is true. The original NLVR2
files write the label as ``"True"``/``"False"``; both are read. A file without labels (a test
split) is allowed. An optional ``"type"`` (ours, e.g. the shapes world's pair kinds) gives
per-type accuracy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from detector.structures import RegionFeatures
from encoder.finetune.data import (
    DataError,
    RegionSource,
    SizedDataset,
    check_text,
    first_boxes,
    read_json_list,
    unique,
)
from encoder.finetune.metrics import AccuracyReport, summarize

#: NLVR2 identifiers: ``<split>-<set>-<pair>-<sentence>``; the statement group drops the last.
_GROUP = re.compile(r"^(?P<group>.+)-\d+$")
#: Label spellings: LXMERT's 0/1 (JSON true/false compare equal to them), NLVR2's strings.
_LABELS: dict[int | str, bool] = {1: True, 0: False, "True": True, "False": False}


@dataclass(frozen=True)
class PairEntry:
    """One statement about one image pair.

    Attributes:
        identifier: as in the file; predictions echo it back.
        left, right: ``img0`` and ``img1``, ids of the images' records in the feature store.
        sentence: the statement (``sent``).
        label: True when the statement is true of the pair; None without a label.
        pair_type: ``type`` when the file has it, else None.
        origin: ``"<file>: entry <index>"``, for messages.
    """

    identifier: str
    left: str
    right: str
    sentence: str
    label: bool | None
    pair_type: str | None
    origin: str


def _entry(raw: object, origin: str) -> PairEntry:
    """One validated entry; ``DataError`` naming ``origin`` and the field otherwise."""
    if not isinstance(raw, dict):
        raise DataError(f"{origin}: expected an object, got {type(raw).__name__}")
    identifier = raw.get("identifier")
    if not isinstance(identifier, str) or not identifier:
        raise DataError(f"{origin}: 'identifier' must be a non-empty string, got {identifier!r}")
    where = f"{origin} (identifier {identifier!r})"
    for name in ("img0", "img1", "sent"):
        if not isinstance(raw.get(name), str) or not raw[name]:
            raise DataError(f"{where}: {name!r} must be a non-empty string, got {raw.get(name)!r}")
    check_text(raw["sent"], where=where, name="sent")
    label = raw.get("label")
    if label is not None and (isinstance(label, float) or label not in _LABELS):
        raise DataError(f"{where}: 'label' must be 0, 1, true, false, 'True' or 'False'")
    pair_type = raw.get("type")
    if pair_type is not None and not isinstance(pair_type, str):
        raise DataError(f"{where}: 'type' must be a string, got {pair_type!r}")
    return PairEntry(
        identifier=identifier,
        left=raw["img0"],
        right=raw["img1"],
        sentence=raw["sent"],
        label=None if label is None else _LABELS[label],
        pair_type=pair_type,
        origin=origin,
    )


def read_pair_files(paths: Sequence[str | Path]) -> tuple[PairEntry, ...]:
    """The entries of NLVR2 JSON files, joined in the order given.

    Raises:
        DataError: a file is not JSON or not a list, an entry lacks a field or has a bad
            value, or two entries share an ``identifier``; the message names file and entry.
        OSError: a file cannot be read.
    """
    entries = (
        _entry(raw, f"{path}: entry {index}")
        for path in map(Path, paths)
        for index, raw in enumerate(read_json_list(path, of="statements"))
    )
    return unique(entries, lambda entry: entry.identifier, "identifier")


def pairs_with_regions(
    entries: Sequence[PairEntry], source: RegionSource, *, skip_missing: bool
) -> tuple[tuple[PairEntry, ...], int]:
    """The entries whose two images are in ``source`` and the number skipped.

    Raises:
        DataError: an image is missing and ``skip_missing`` is False (names the entry and
            the image).
    """
    kept = []
    for entry in entries:
        missing = [image for image in (entry.left, entry.right) if image not in source]
        if not missing:
            kept.append(entry)
        elif not skip_missing:
            raise DataError(
                f"{entry.origin} (identifier {entry.identifier!r}): image {missing[0]!r} is "
                "not in the feature store; extract it, or pass --skip-missing to skip such "
                "statements"
            )
    return tuple(kept), len(entries) - len(kept)


def statement_group(identifier: str) -> str | None:
    """NLVR2's statement group of an identifier: the identifier without its trailing ``-N``
    (``dev-850-0-1`` -> ``dev-850-0``); None when it has no such ending."""
    match = _GROUP.match(identifier)
    return match.group("group") if match else None


@dataclass(frozen=True)
class PairReport:
    """NLVR2 scores.

    Attributes:
        accuracy: share of statements judged right, overall and per ``pair_type``
            (:class:`~encoder.finetune.metrics.AccuracyReport`).
        consistency: share of statement groups whose statements are all judged right, or
            None when the identifiers carry no groups.
        groups: number of statement groups (0 without them).
    """

    accuracy: AccuracyReport
    consistency: float | None
    groups: int


def pair_scores(entries: Sequence[PairEntry], predictions: Sequence[bool]) -> PairReport:
    """NLVR2's metrics (lil-lab/nlvr, nlvr2/eval/metrics.py), written from their definition:
    accuracy is the share of labelled statements predicted right; consistency the share of
    statement groups (:func:`statement_group`: one sentence written for several image pairs)
    in which every statement is predicted right. Entries without a label are left out.
    """
    if len(entries) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(entries)} statements")
    labelled = [(e, p) for e, p in zip(entries, predictions, strict=True) if e.label is not None]
    scores = [1.0 if p == e.label else 0.0 for e, p in labelled]
    accuracy = summarize(scores, {"pair_type": [e.pair_type for e, _ in labelled]})
    groups: dict[str, bool] = {}
    for (entry, _), score in zip(labelled, scores, strict=True):
        group = statement_group(entry.identifier)
        if group is not None:
            groups[group] = groups.get(group, True) and score == 1.0
    consistency = sum(groups.values()) / len(groups) if groups else None
    return PairReport(accuracy=accuracy, consistency=consistency, groups=len(groups))


def prediction_csv(entries: Sequence[PairEntry], predictions: Sequence[bool]) -> str:
    """NLVR2's prediction file: a header ``identifier,prediction``, then one line per
    statement with ``True`` or ``False``."""
    if len(entries) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(entries)} statements")
    lines = ["identifier,prediction"]
    lines += [f"{e.identifier},{p}" for e, p in zip(entries, predictions, strict=True)]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, eq=False)
class PairExample:
    """One training or evaluation pair.

    Attributes:
        entry: the statement.
        left, right: the regions of its two images, at most ``num_boxes`` each (the first,
            i.e. best, ones); their box counts may differ (the model pads and masks).
        target: 1 when the statement is true, 0 otherwise (0 also without a label).
    """

    entry: PairEntry
    left: RegionFeatures
    right: RegionFeatures
    target: int


class PairDataset(SizedDataset[PairExample]):
    """Statements with the regions of their two images, read from ``source`` when an item is
    asked for (a feature store reads one record from disk), so DataLoader workers share the
    work."""

    def __init__(self, entries: Sequence[PairEntry], source: RegionSource, *, num_boxes: int):
        if num_boxes < 1:
            raise ValueError(f"num_boxes must be >= 1, got {num_boxes}")
        self.entries = tuple(entries)
        self.source = source
        self.num_boxes = num_boxes

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> PairExample:
        entry = self.entries[index]
        return PairExample(
            entry=entry,
            left=first_boxes(self.source.get(entry.left), self.num_boxes),
            right=first_boxes(self.source.get(entry.right), self.num_boxes),
            target=1 if entry.label else 0,
        )
