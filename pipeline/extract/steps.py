"""``extract_features`` as named steps: validate -> plan -> load -> extract -> finish.

:func:`run_extract` calls them in that order; each takes and returns typed values, and the exit
code is chosen in one place (:func:`exit_code`). A usage problem visible before any model loads
is reported before any model loads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from detector import Detector, load_detector
from detector.model import auto_batch_size
from detector.structures import CheckpointInfo
from pipeline.errors import (
    EXIT_ALL_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    UsageError,
)
from pipeline.extract.boxes_file import BoxesFile
from pipeline.extract.engines.local import RecordSink, run_local
from pipeline.extract.plan import ExtractPlan, RunStats, check_resume_settings, make_plan
from pipeline.extract.settings import ExtractSettings
from pipeline.extract.staged import finish_staged, unstage
from pipeline.features.formats.common import WriteOptions
from pipeline.features.manifest import (
    Status,
    command_line,
    library_versions,
    manifest_path,
    now_utc,
    record_settings,
    write_manifest,
)
from pipeline.features.output import (
    FeatureWriter,
    journal_path,
    open_writer,
    output_format,
    read_features,
)
from weights import CheckpointNotFoundError
from weights.lock import hold_output_lock

LOG = logging.getLogger("pipeline.extract")


@dataclass(frozen=True)
class LoadedModel:
    """The detector a run uses and the batch size chosen for it."""

    detector: Detector
    batch_size: int


def load_model(settings: ExtractSettings) -> LoadedModel:
    """Load the detector with the run's config and inference options.

    Raises:
        UsageError: the checkpoint cannot be found, read or matched to the config.
    """
    options = settings.inference_options
    try:
        detector = load_detector(
            settings.detector, config=settings.config, device=settings.device, options=options
        )
    except (CheckpointNotFoundError, KeyError, ValueError, TypeError, OSError) as error:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise  # a full disk (e.g. while downloading) is not a usage problem: exit 4
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        raise UsageError(f"--detector {settings.detector}: {message}") from error
    batch_size = settings.batch_size
    if batch_size is None:
        worst = (detector.config.min_size, detector.config.max_size)
        batch_size = auto_batch_size(detector.device, worst)
        LOG.debug("batch size %d", batch_size)
    LOG.debug("detector %s, config %s", detector.checkpoint.name, detector.config.to_dict())
    return LoadedModel(detector=detector, batch_size=batch_size)


def run_record_settings(
    detector: Detector, settings: ExtractSettings, *, boxes_sha256: str | None = None
) -> dict[str, Any]:
    """The :data:`~pipeline.features.manifest.RECORD_SETTINGS` of a run with ``detector`` (and the
    sha256 of its ``--boxes-from`` file, if any). The precision is the run's: with
    ``--engine ray`` this process holds an fp32 CPU copy and the actors run the setting."""
    return record_settings(
        detector.config.to_dict(),
        detector_sha256=detector.checkpoint.sha256,
        boxes_sha256=boxes_sha256,
        coco_boxes=None if settings.boxes_from is None else settings.boxes_from.coco_boxes,
        clip=None if settings.boxes_from is None else settings.boxes_from.clip,
        precision=settings.precision,
        deterministic=settings.inference_options.resolve().deterministic,
    )


class Engine(Protocol):
    """What executes a plan: :class:`LocalEngine` or
    :class:`pipeline.extract.engines.ray.RayEngine`."""

    def describe(self) -> dict[str, Any]:
        """The manifest's ``engine`` section: its name, the torch threads, and for a cluster
        its address and resources."""
        ...

    def prepare(self, checkpoint: CheckpointInfo) -> Engine:
        """This engine, ready to run the model whose weights ``checkpoint`` are (the
        driver's), before anything is written. Raises UsageError when it cannot."""
        ...

    def run(
        self,
        plan: ExtractPlan,
        *,
        sink: RecordSink,
        batch_size: int,
        stats: RunStats,
        show_progress: bool,
        boxes: BoxesFile | None,
    ) -> None:
        """Write a record or a failure for every image of ``plan.todo``, in its order."""
        ...


@dataclass(frozen=True)
class LocalEngine:
    """This machine: decode threads and the detector in this process (:func:`run_local`)."""

    workers: int
    threads: int

    def describe(self) -> dict[str, Any]:
        return {"name": "local", "threads": self.threads, "workers": self.workers}

    def prepare(self, checkpoint: CheckpointInfo) -> LocalEngine:
        del checkpoint  # this process loaded it
        return self

    def run(
        self,
        plan: ExtractPlan,
        *,
        sink: RecordSink,
        batch_size: int,
        stats: RunStats,
        show_progress: bool,
        boxes: BoxesFile | None,
    ) -> None:
        torch.set_num_threads(self.threads)
        run_local(
            plan,
            sink=sink,
            batch_size=batch_size,
            workers=self.workers,
            stats=stats,
            show_progress=show_progress,
            boxes=boxes,
        )


def open_engine(settings: ExtractSettings, stack: contextlib.ExitStack) -> Engine:
    """The engine ``--engine`` names, ready; a Ray cluster is joined (or started) here and
    left when ``stack`` closes."""
    if settings.engine == "ray":
        from pipeline.extract.engines.ray import ray_engine

        return stack.enter_context(ray_engine(settings))
    return LocalEngine(workers=settings.workers, threads=settings.threads)


def driver_settings(settings: ExtractSettings) -> ExtractSettings:
    """The settings this process loads the detector with. With ``--engine ray`` the actors
    detect; this process needs the checkpoint's digest, config and label names only, so it
    loads an fp32 CPU copy (it may have no GPU)."""
    if settings.engine == "local":
        return settings
    cpu = torch.device("cpu")
    return dataclasses.replace(settings, device=cpu, precision="fp32", compile=False)


def manifest_data(
    settings: ExtractSettings,
    plan: ExtractPlan,
    model: LoadedModel,
    *,
    stats: RunStats,
    status: Status,
    started: str,
    engine: Engine,
) -> dict[str, Any]:
    """The manifest of a run (see :mod:`pipeline.features.manifest`)."""
    detector = model.detector
    shard = settings.shard
    return {
        "status": status,
        "output": str(plan.output),
        "format": output_format(plan.output),
        "started": started,
        "updated": now_utc(),
        "command": command_line(),
        "inputs": list(settings.inputs),
        "shard": {"index": shard[0], "count": shard[1]} if shard else None,
        "limit": settings.limit,
        "detector": {
            "name": detector.checkpoint.name,
            "path": detector.checkpoint.path,
            "sha256": detector.checkpoint.sha256,
            "preset": detector.config.name,
            "config": detector.config.to_dict(),
        },
        "settings": run_record_settings(detector, settings, boxes_sha256=_boxes_sha256(settings)),
        "given_boxes": _given_boxes(settings.boxes_from, stats),
        # The device that made the records: the actors' with --engine ray.
        "device": str(detector.device if settings.engine == "local" else settings.device),
        "engine": engine.describe(),
        "versions": library_versions(),
        "counts": {
            "selected": stats.selected,
            "already_done": stats.already_done,
            "written": stats.written,
            "failed": len(stats.failures),
            "records_in_output": stats.records if status == "finished" else None,
        },
        "seconds": {name: round(value, 3) for name, value in stats.seconds.items()},
        "failures": [failure.to_dict() for failure in stats.failures],
    }


def _given_boxes(boxes: BoxesFile | None, stats: RunStats) -> dict[str, Any] | None:
    """The manifest's ``given_boxes``: the file, ``clip``, and ``clipped_boxes`` (see
    :class:`~pipeline.extract.plan.RunStats`; 0 with ``--no-clip``)."""
    if boxes is None:
        return None
    return {**boxes.to_manifest(), "clipped_boxes": stats.clipped_boxes}


def clipped_in_output(plan: ExtractPlan, boxes: BoxesFile | None) -> int:
    """Given boxes that clipping changed in the records the output already holds for the
    plan's images (``--resume``), recounted from the boxes file and each record's image size,
    so the count is right whatever became of the runs that wrote them (a kill, a crash).

    It reads those records once (a TSV, or an HDF5 file and its journal); only a resumed
    run with ``--boxes-from`` that clips pays for it.
    """
    if boxes is None or not boxes.clip or plan.already_done == 0:
        return 0
    done = {item.image_id for item in plan.selected} - {item.image_id for item in plan.todo}
    sources = [plan.output]
    if output_format(plan.output) != "tsv":
        sources.append(journal_path(plan.output))
    total = 0
    for source in sources:
        if not source.exists():
            continue
        for region in read_features(source):
            if region.image_id in done:
                done.discard(region.image_id)  # an id in both the file and its journal
                total += boxes.clipped_count(
                    region.image_id, image_h=region.image_h, image_w=region.image_w
                )
    return total


def _boxes_sha256(settings: ExtractSettings) -> str | None:
    return None if settings.boxes_from is None else settings.boxes_from.sha256


def extract(
    settings: ExtractSettings,
    plan: ExtractPlan,
    model: LoadedModel,
    *,
    started: str,
    engine: Engine,
) -> tuple[RunStats, Status]:
    """Run the plan on ``engine``, keeping the manifest up to date; returns the stats and
    how the run ended. Exceptions other than Ctrl-C propagate after the manifest says ``error``
    (with the reason: ``disk full`` for ENOSPC)."""
    stats = RunStats.starting(plan)
    stats.clipped_boxes = clipped_in_output(plan, settings.boxes_from)
    for failure in plan.input_failures:
        LOG.warning("failed: %s: %s", failure.path, failure.reason)
    manifest = manifest_path(plan.output)

    def save_manifest(status: Status, error: str | None = None) -> None:
        data = manifest_data(
            settings, plan, model, stats=stats, status=status, started=started, engine=engine
        )
        write_manifest(manifest, {**data, "error": error} if error else data)

    if plan.destination is not None:
        plan.output.parent.mkdir(exist_ok=True)  # the work folder of a staged format
    # The manifest says "running" before --overwrite empties the old output, so a run that
    # dies in between never leaves an emptied file under a manifest that says "finished".
    save_manifest("running")
    writer = open_writer(plan.output, mode=settings.mode, feature_dim=settings.config.feature_dim)
    LOG.info(
        "%d images selected, %d already in %s, %d to do",
        len(plan.selected),
        plan.already_done,
        plan.result,
        len(plan.todo),
    )
    sink = RecordSink(
        writer=writer,
        detector=model.detector,
        paths=plan.paths(),
        visualize=settings.visualize,
        max_pixels=settings.max_pixels,
        max_bytes=settings.max_bytes,
    )
    status: Status = "error"
    error: str | None = None
    try:
        engine.run(
            plan,
            sink=sink,
            batch_size=model.batch_size,
            stats=stats,
            show_progress=not settings.quiet,
            boxes=settings.boxes_from,
        )
        status = "finished"
    except KeyboardInterrupt:
        status = "interrupted"
    except BaseException as exc:
        error = error_reason(exc)
        raise
    finally:
        _close(writer, stats, save_manifest, status, error)
    return stats, status


def error_reason(error: BaseException) -> str:
    """What the manifest says about an error that ended a run."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return "disk full"
    return f"{type(error).__name__}: {error}"


def _close(
    writer: FeatureWriter,
    stats: RunStats,
    save_manifest: Callable[[Status, str | None], None],
    status: Status,
    error: str | None,
) -> None:
    """Close the writer (an HDF5 journal is folded in) and record how the run ended. When
    closing fails (a full disk while folding), the records stay in the journal and the
    manifest says ``error``; ``--resume`` continues."""
    try:
        writer.close()
    except KeyboardInterrupt:
        status = "interrupted"  # a second Ctrl-C while folding: the journal keeps the records
        raise
    except BaseException as exc:
        if status != "error":
            status, error = "error", error_reason(exc)
        raise
    finally:
        try:
            save_manifest(status, error)
        except OSError as exc:  # e.g. the disk is full: the records are safe, say so
            LOG.warning("could not update the manifest: %s", exc)


def exit_code(stats: RunStats, status: Status) -> int:
    """The exit code of a run that got to the end of its loop (or was interrupted)."""
    if status == "interrupted":
        return EXIT_INTERRUPTED
    if stats.failures and stats.written == 0 and stats.already_done == 0:
        return EXIT_ALL_FAILED
    return EXIT_SOME_FAILED if stats.failures else EXIT_OK


def finish(settings: ExtractSettings, plan: ExtractPlan, stats: RunStats, status: Status) -> int:
    """Print the summary and the failures; returns the exit code."""
    if stats.clipped_boxes and settings.boxes_from is not None:
        LOG.warning(
            "%d given box(es) reached outside their image and were clipped to it (--boxes-from "
            "%s; counted in the manifest's given_boxes.clipped_boxes); --no-clip pools them as "
            "given, as the original bottom-up code did",
            stats.clipped_boxes,
            settings.boxes_from.path,
        )
    if not settings.quiet:
        elapsed = stats.seconds["loop"]
        rate = stats.written / elapsed if elapsed > 0 else 0.0
        print(
            f"extract_features: {stats.selected} selected: {stats.written} written, "
            f"{stats.already_done} already done (skipped), {len(stats.failures)} failed "
            f"-> {plan.result} ({rate:.2f} img/s)" + _unused_boxes(settings, plan),
            file=sys.stderr,
        )
    if stats.failures:
        print(f"{len(stats.failures)} input(s) failed:", file=sys.stderr)
        for failure in stats.failures:
            print(f"  {failure.path}: {failure.reason}", file=sys.stderr)
    return exit_code(stats, status)


def _unused_boxes(settings: ExtractSettings, plan: ExtractPlan) -> str:
    """The summary's note of the boxes file's ids that no input has (none: nothing)."""
    unused = plan.boxes_not_among_inputs
    if settings.boxes_from is None or not unused:
        return ""
    shown = ", ".join(repr(i) for i in unused[:3]) + (", ..." if len(unused) > 3 else "")
    ids, are = ("id", "is") if len(unused) == 1 else ("ids", "are")
    return (
        f"; {len(unused)} {ids} in the boxes file {settings.boxes_from.path} {are} not among "
        f"the inputs ({shown}), ignored"
    )


def run_extract(settings: ExtractSettings) -> int:
    """Plan, load, extract and finish one validated run; returns the exit code.

    Raises:
        UsageError: nothing was done (see :func:`make_plan` and :func:`load_model`).
    """
    started = now_utc()
    with contextlib.ExitStack() as stack:
        # Held from before the plan reads what is recorded until the manifest says how it
        # ended: one process writes an output at a time.
        hold_output_lock(stack, settings.output)
        plan = make_plan(settings)
        # Before the model loads: a cluster that cannot be joined, or has no GPUs for
        # --device cuda, is a usage problem.
        engine = open_engine(settings, stack)
        model = load_model(driver_settings(settings))
        if settings.mode == "resume":
            ours = run_record_settings(
                model.detector, settings, boxes_sha256=_boxes_sha256(settings)
            )
            check_resume_settings(
                plan, ours, model.detector.config, given_boxes=settings.boxes_from is not None
            )
        if plan.todo:  # last check, as it may ship the weights; nothing to ship for no work
            engine = engine.prepare(model.detector.checkpoint)
        if plan.finished is not None:  # --resume of a finished staged output
            if not plan.todo:
                return finish(settings, plan, RunStats.starting(plan), "finished")
            unstage(plan.finished)
        stats, status = extract(settings, plan, model, started=started, engine=engine)
        if plan.destination is not None and status == "finished":
            options = WriteOptions(
                feature_dtype=settings.feature_dtype, feature_dim=settings.config.feature_dim
            )
            finish_staged(plan.destination, settings.format, options, quiet=settings.quiet)
    return finish(settings, plan, stats, status)
