"""``extract_features``' second step: which images, into which file, and what is left to do.

:func:`make_plan` lists the inputs and their ids, applies ``--shard`` and ``--limit``, checks the
output policy (the one place that does: :func:`pipeline.features.output.check_output_policy`) and,
with ``--resume``, reads the ids already recorded, all before any model is loaded and without
changing any file. Every engine executes the same :class:`ExtractPlan`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detector.config import DetectorConfig
from detector.structures import RegionFeatures
from pipeline.errors import UsageError
from pipeline.extract.boxes_file import BoxesFile
from pipeline.extract.inputs import InputItem, input_roots, list_inputs, select_shard
from pipeline.extract.settings import ExtractSettings
from pipeline.extract.staged import (
    FinishedOutput,
    check_can_extend,
    check_staged_output,
    finished_output,
)
from pipeline.extract.visualize import check_visualize_dir
from pipeline.features.manifest import (
    Failure,
    Manifest,
    manifest_path,
    own_manifest,
    recorded_settings,
    settings_differences,
)
from pipeline.features.output import check_output_policy, journal_path, read_features, recorded_ids
from weights.lock import lock_path


@dataclass(frozen=True)
class ExtractPlan:
    """What a run will do.

    Attributes:
        output: the file the records are written to (the shard's own file with ``--shard``;
            the work folder's TSV for a staged format, :mod:`pipeline.extract.staged`).
        selected: every image of the run (after ``--shard`` and ``--limit``), in id order.
        todo: those not yet in the output (all of them unless ``--resume``), in id order.
        previous: with ``--resume``, the manifest of the run that wrote the output (None when
            there is none: a file written elsewhere, or a first run).
        boxes_not_among_inputs: with ``--boxes-from``, the ids of the boxes file that no input
            has (sorted; ignored, and counted in the summary).
        destination: for a staged format, the output the user named (converted from
            ``output`` when the run has been through every image); else None.
        finished: with ``--resume`` of a finished staged output (no work folder), what it
            holds: written back into ``output`` before any record is added.
        input_failures: files found but not usable as inputs (a FIFO, a broken link, an id
            that would leave its root ...), each named with its reason; they count as failed
            inputs of the run. With ``--shard`` each failure belongs to one shard, by the same
            every-N-th rule over the sorted failures, so a merge reports each once.
    """

    output: Path
    selected: tuple[InputItem, ...]
    todo: tuple[InputItem, ...]
    input_failures: tuple[Failure, ...] = ()
    previous: Manifest | None = None
    boxes_not_among_inputs: tuple[str, ...] = ()
    destination: Path | None = None
    finished: FinishedOutput | None = None

    @property
    def result(self) -> Path:
        """What the user gets: ``destination`` for a staged format, else ``output``."""
        return self.destination or self.output

    @property
    def already_done(self) -> int:
        """Selected images whose records the output already holds."""
        return len(self.selected) - len(self.todo)

    def paths(self) -> dict[str, str]:
        """Image id -> file, for the images to do."""
        return {item.image_id: str(item.path) for item in self.todo}


@dataclass
class RunStats:
    """Counts and seconds of one run, filled in by the engine.

    ``seconds`` holds the wall seconds of the extraction loop (``loop``) and the parts of it
    spent in the detector, waiting for decoded images, and writing records (+ pictures).
    ``clipped_boxes`` counts the given boxes (``--boxes-from``) that clipping to the image
    changed, over the records the output holds for the selected images (those already done
    included, see :func:`pipeline.extract.steps.clipped_in_output`).
    """

    selected: int = 0
    already_done: int = 0
    written: int = 0
    clipped_boxes: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("loop", "detector", "waiting", "writing"), 0.0)
    )

    @classmethod
    def starting(cls, plan: ExtractPlan) -> RunStats:
        """A run's counts before its first image: what is selected, what the output holds,
        and the inputs that failed while listing."""
        return cls(
            selected=len(plan.selected) + len(plan.input_failures),
            already_done=plan.already_done,
            failures=list(plan.input_failures),
        )

    @property
    def records(self) -> int:
        """Records the output holds for the selected images."""
        return self.already_done + self.written

    def add_record(self, region: RegionFeatures, boxes: BoxesFile | None) -> None:
        """Count a record just written, and its given boxes that clipping changed."""
        self.written += 1
        if boxes is not None:
            self.clipped_boxes += boxes.clipped_count(
                region.image_id, image_h=region.image_h, image_w=region.image_w
            )


def make_plan(settings: ExtractSettings) -> ExtractPlan:
    """List, shard, limit and check; see the module docstring.

    Raises:
        UsageError: no inputs, duplicate ids, an output the mode may not write, or an output
            that ``--resume`` cannot read.
    """
    try:
        listing = list_inputs(settings.inputs)
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(str(error)) from error
    items, failures = list(listing.items), list(listing.failures)
    if settings.shard is not None:
        index, count = settings.shard
        items = select_shard(items, index=index, count=count)
        failures = failures[index - 1 :: count]
    if settings.limit is not None:
        items = items[: settings.limit]
        last = items[-1].image_id if items else ""
        failures = [failure for failure in failures if failure.image_id <= last]
    if settings.visualize is not None:
        try:
            check_visualize_dir(
                settings.visualize,
                input_roots(settings.inputs),
                image_ids=(item.image_id for item in items),
            )
        except (OSError, ValueError) as error:
            raise UsageError(str(error)) from error
    output = settings.written
    _check_not_an_input(output, listing.items)
    previous, done, finished = _recorded(settings)
    todo = tuple(item for item in items if item.image_id not in done)
    if finished is not None and todo:
        try:
            check_can_extend(finished)
        except ValueError as error:
            raise UsageError(str(error)) from error
    return ExtractPlan(
        output=output,
        selected=tuple(items),
        todo=todo,
        input_failures=tuple(failures),
        previous=previous,
        boxes_not_among_inputs=_boxes_not_among(settings.boxes_from, listing.items),
        destination=settings.output if settings.staging is not None else None,
        finished=finished,
    )


def _recorded(settings: ExtractSettings) -> tuple[Manifest | None, set[str], FinishedOutput | None]:
    """After the output policy's check: the manifest of the run that wrote what ``--resume``
    keeps, the ids it keeps, and a finished staged output it adds to (nothing otherwise)."""
    output = settings.written
    try:
        if settings.staging is None:
            check_output_policy(output, settings.mode)
        else:
            check_staged_output(settings.output, settings.format, settings.mode)
    except (OSError, ValueError) as error:
        raise UsageError(str(error)) from error
    if settings.mode != "resume":
        return None, set(), None
    if settings.staging is not None and not output.exists() and settings.output.exists():
        try:
            finished = finished_output(settings.output, settings.format)
        except (OSError, ValueError) as error:
            raise UsageError(str(error)) from error
        return finished.manifest, set(finished.ids), finished
    previous = own_manifest(output)
    return previous, resumable_ids(output, previous), None


def _boxes_not_among(boxes: BoxesFile | None, items: tuple[InputItem, ...]) -> tuple[str, ...]:
    """Ids of the boxes file that none of the listed inputs has (before --shard and --limit:
    an id of another shard is among the inputs)."""
    if boxes is None:
        return ()
    return tuple(boxes.ids_not_among(item.image_id for item in items))


def _check_not_an_input(output: Path, items: tuple[InputItem, ...]) -> None:
    """An input is never the output or a file written beside it (``--overwrite`` would empty
    it before reading it)."""
    written = [output, manifest_path(output), journal_path(output), lock_path(output)]
    ours = {os.path.realpath(path) for path in written}
    for item in items:
        if os.path.realpath(item.path) in ours:
            raise UsageError(
                f"input {item.path} is also what this run writes (--out {output}); "
                "write the features to another file"
            )


def resumable_ids(output: Path, previous: Manifest | None) -> set[str]:
    """Ids ``--resume`` keeps. Only an output with this tool's manifest, or whose every line
    is a record, is resumed; a killed run's partial last record is dropped only when the
    manifest says we wrote the file. Anything else is refused, untouched.

    Raises:
        UsageError: the output is not one of ours (or is damaged).
    """
    try:
        return recorded_ids(output, allow_partial=previous is not None)
    except (OSError, ValueError) as error:
        raise UsageError(
            f"--resume {output}: {error}. It does not look like an output of this tool, so it "
            "was not modified; choose another --out, or pass --overwrite to replace it"
        ) from error


def check_resume_settings(
    plan: ExtractPlan, ours: Mapping[str, Any], config: DetectorConfig, *, given_boxes: bool = False
) -> None:
    """Refuse to add this run's records to an output made with other settings.

    ``ours`` is this run's :data:`~pipeline.features.manifest.RECORD_SETTINGS`. With a manifest,
    every setting must be equal; without one, each existing record must fit this run's feature
    dimension and box-count rule (the count rule only when boxes are detected: with
    ``given_boxes`` each record has as many boxes as its entry in the boxes file).

    Raises:
        UsageError: listing each differing setting with both values (or the first record that
            does not fit). There is no override: a different setting is a different output.
    """
    theirs = recorded_settings(plan.previous) if plan.previous is not None else None
    if theirs is not None:
        differences = settings_differences(ours, theirs)
        if differences:
            raise UsageError(
                f"--resume {plan.result}: this run's settings differ from those its records "
                "were made with (this run vs the output):\n  "
                + "\n  ".join(differences)
                + "\nA different setting is a different output file: choose another --out."
            )
        return
    if not plan.output.exists():
        return
    for region in read_features(plan.output):
        dim = region.features.shape[1] if region.features.ndim == 2 else None
        count_fits = given_boxes or config.min_boxes <= region.num_boxes <= config.max_boxes
        if dim != config.feature_dim or not count_fits:
            raise UsageError(
                f"--resume {plan.result}: record {region.image_id!r} has {region.num_boxes} "
                f"boxes of dimension {dim}, but this run makes {config.min_boxes}.."
                f"{config.max_boxes} boxes of dimension {config.feature_dim}; a different "
                "setting is a different output file: choose another --out"
            )
