"""``extract_features``' second step: which images, into which file, and what is left to do.

:func:`make_plan` lists the inputs and their ids, applies ``--shard`` and ``--limit``, checks the
output policy (the one place that does: :func:`pipeline.writers.check_output_policy`) and, with
``--resume``, reads the ids already recorded, all before any model is loaded and without
changing any file. Every engine executes the same :class:`ExtractPlan`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.exits import UsageError
from pipeline.inputs import InputItem, list_inputs, select_shard
from pipeline.manifest import Failure
from pipeline.settings import ExtractSettings
from pipeline.writers import check_output_policy, recorded_ids


@dataclass(frozen=True)
class ExtractPlan:
    """What a run will do.

    Attributes:
        output: the file written (the shard's own file with ``--shard``).
        selected: every image of the run (after ``--shard`` and ``--limit``), in id order.
        todo: those not yet in the output (all of them unless ``--resume``), in id order.
        input_failures: files found but not usable as inputs (a FIFO, a broken link, an id
            that would leave its root ...), each named with its reason; they count as failed
            inputs of the run. With ``--shard`` each failure belongs to one shard, by the same
            every-N-th rule over the sorted failures, so a merge reports each once.
    """

    output: Path
    selected: tuple[InputItem, ...]
    todo: tuple[InputItem, ...]
    input_failures: tuple[Failure, ...] = ()

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
    """

    selected: int = 0
    already_done: int = 0
    written: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("loop", "detector", "waiting", "writing"), 0.0)
    )

    @property
    def records(self) -> int:
        """Records the output holds for the selected images."""
        return self.already_done + self.written


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
    output = settings.output
    try:
        check_output_policy(output, settings.mode)
        done = recorded_ids(output) if settings.mode == "resume" else set()
    except (OSError, ValueError) as error:
        raise UsageError(str(error)) from error
    todo = tuple(item for item in items if item.image_id not in done)
    return ExtractPlan(
        output=output, selected=tuple(items), todo=todo, input_failures=tuple(failures)
    )
