"""The local engine: decode on threads, detect on this machine's device, write each record.

It executes an :class:`~pipeline.extract.plan.ExtractPlan` with a loaded detector and an open
writer, and fills in :class:`~pipeline.extract.plan.RunStats`. A bad image becomes a
:class:`~pipeline.features.manifest.Failure` (named, with its reason) and never ends the run.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Generator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from detector import Detector, RegionFeatures
from detector.image import DEFAULT_MAX_BYTES, load_image
from detector.model import BatchLimits, ImageOutOfMemory
from detector.preprocess import PreparedImage
from pipeline.extract.boxes_file import BoxesFile
from pipeline.extract.decode import Prepared, PrepareImage
from pipeline.extract.plan import ExtractPlan, RunStats
from pipeline.extract.visualize import save_visualization
from pipeline.features.manifest import Failure
from pipeline.features.output import FeatureWriter

LOG = logging.getLogger("pipeline.extract")


def prepared_batches(
    prepare_one: PrepareImage, *, count: int, workers: int, batch_size: int
) -> Generator[list[Prepared], None, None]:
    """Batches of ``prepare_one(0..count-1)``, in input order.

    With ``workers`` > 0, that many threads decode and resize ahead of the model, at most two
    batches per worker in flight. Threads, not processes: OpenCV and NumPy release the GIL, so
    decoding overlaps with torch's compute, and a thread starts at once where a spawned worker
    process spends ~2 s importing torch (benchmarks/RESULTS.md). Closing the generator stops
    the threads.
    """
    starts = range(0, count, batch_size)
    if workers == 0:
        for start in starts:
            yield [prepare_one(i) for i in range(start, min(start + batch_size, count))]
        return
    import cv2

    # One OpenCV thread per decode: its own pool would compete with torch's for the cores.
    cv2_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    pending: deque[Future[Prepared]] = deque()
    in_flight = 2 * workers * batch_size
    submitted = 0
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
            try:
                for start in starts:
                    while submitted < count and len(pending) < in_flight:
                        pending.append(pool.submit(prepare_one, submitted))
                        submitted += 1
                    size = min(batch_size, count - start)
                    yield [pending.popleft().result() for _ in range(size)]
            finally:
                for future in pending:
                    future.cancel()
    finally:
        cv2.setNumThreads(cv2_threads)


class CompileFailedError(RuntimeError):
    """``torch.compile`` (``--compile``) failed: the run stops at once (exit 4), since every
    other image would fail the same way."""


#: Where the exceptions of a failed ``torch.compile`` come from (TorchDynamo, Inductor, Triton).
COMPILER_MODULES = ("torch._dynamo", "torch._inductor", "triton")


def is_compile_failure(error: BaseException) -> bool:
    """Whether ``error``, or an exception it was raised from, comes from the compiler stack."""
    seen: BaseException | None = error
    while seen is not None:
        if type(seen).__module__.startswith(COMPILER_MODULES):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@dataclass(frozen=True)
class DetectedBatch:
    """What :func:`detect_or_fail` returns for one batch."""

    regions: list[RegionFeatures]
    failures: list[Failure]
    limits: BatchLimits
    """The batch limits learnt from out-of-memory so far (pass them to the next batch)."""


def detect_or_fail(
    detector: Detector,
    prepared: list[PreparedImage],
    paths: dict[str, str],
    batch_size: int,
    boxes: BoxesFile | None = None,
    limits: BatchLimits | None = None,
) -> DetectedBatch:
    """Regions for ``prepared`` (of their entries in ``boxes`` when given).

    An image that does not fit in device memory even alone is a failure and the others keep
    their records (:meth:`Detector.detect_each`, which also learns ``limits``). A batch that
    fails otherwise is retried image by image so that one bad image is reported and the others
    still get their records.

    Raises:
        CompileFailedError: the detector is compiled and the compiler failed.
    """
    learnt = limits if limits is not None else BatchLimits()
    given = None if boxes is None else [boxes.boxes[image.image_id] for image in prepared]
    clip = boxes is None or boxes.clip
    try:
        outcome = detector.detect_each(
            prepared, batch_size=batch_size, boxes=given, limits=learnt, clip=clip
        )
    except Exception as error:  # `as`: the error and its frames' tensors go at the block's end
        if detector.options.compile and is_compile_failure(error):
            # The compiler's messages run over many lines; the first few hundred characters
            # name the cause (e.g. "Failed to find C compiler").
            summary = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
            raise CompileFailedError(
                f"--compile: torch.compile failed ({type(error).__name__}: {summary[:300]}); "
                "run without --compile, or where a C compiler is installed (Inductor and "
                "Triton need one)"
            ) from error
        if len(prepared) == 1:
            reason = f"detector failed: {type(error).__name__}: {error}"
            failure = Failure(prepared[0].image_id, paths[prepared[0].image_id], reason)
            return DetectedBatch(regions=[], failures=[failure], limits=learnt)
    else:
        return DetectedBatch(
            regions=[e for e in outcome.results if isinstance(e, RegionFeatures)],
            failures=[
                Failure(e.image_id, paths[e.image_id], e.reason)
                for e in outcome.results
                if isinstance(e, ImageOutOfMemory)
            ],
            limits=outcome.limits,
        )
    regions: list[RegionFeatures] = []
    failures: list[Failure] = []
    for image in prepared:
        one = detect_or_fail(detector, [image], paths, batch_size, boxes, learnt)
        regions.extend(one.regions)
        failures.extend(one.failures)
        learnt = one.limits
    return DetectedBatch(regions=regions, failures=failures, limits=learnt)


@dataclass(frozen=True)
class RecordSink:
    """Where the loop puts each record: the writer, and a picture when ``--visualize`` asks."""

    writer: FeatureWriter
    detector: Detector
    paths: dict[str, str]
    visualize: Path | None
    max_pixels: int
    max_bytes: int = DEFAULT_MAX_BYTES

    def put(self, region: RegionFeatures) -> None:
        self.writer.write(region)
        if self.visualize is None:
            return
        try:
            save_visualization(
                self.visualize,
                load_image(
                    self.paths[region.image_id],
                    max_pixels=self.max_pixels,
                    max_bytes=self.max_bytes,
                ),
                region,
                object_names=self.detector.object_names,
                attribute_names=self.detector.attribute_names,
            )
        except (OSError, ValueError) as error:  # the record itself is fine
            LOG.warning("no visualisation of %s: %s", region.image_id, error)


def _handle_batch(
    batch: list[Prepared],
    *,
    sink: RecordSink,
    batch_size: int,
    stats: RunStats,
    boxes: BoxesFile | None,
    limits: BatchLimits,
) -> BatchLimits:
    """Detect the prepared images of ``batch``, record failures, write the records; returns
    the batch limits learnt so far."""
    seconds = stats.seconds
    prepared = [entry for entry in batch if isinstance(entry, PreparedImage)]
    failures = [entry for entry in batch if isinstance(entry, Failure)]
    tick = time.monotonic()
    detected = (
        detect_or_fail(sink.detector, prepared, sink.paths, batch_size, boxes, limits)
        if prepared
        else DetectedBatch(regions=[], failures=[], limits=limits)
    )
    regions, detect_failures = detected.regions, detected.failures
    seconds["detector"] += time.monotonic() - tick
    tick = time.monotonic()
    for failure in [*failures, *detect_failures]:
        LOG.warning("failed: %s: %s", failure.path, failure.reason)
        stats.failures.append(failure)
    LOG.debug(
        "batch: %s -> %d regions, %d failed",
        ", ".join(entry.image_id for entry in batch),
        len(regions),
        len(failures) + len(detect_failures),
    )
    for region in regions:
        sink.put(region)
        stats.add_record(region, boxes)
    seconds["writing"] += time.monotonic() - tick
    return detected.limits


def run_local(
    plan: ExtractPlan,
    *,
    sink: RecordSink,
    batch_size: int,
    workers: int,
    stats: RunStats,
    show_progress: bool,
    boxes: BoxesFile | None = None,
) -> None:
    """Execute ``plan`` on this machine; with ``boxes`` (``--boxes-from``) each image's regions
    are those of its given boxes. ``KeyboardInterrupt`` propagates after the decode threads are
    stopped; every record written before it is durable."""
    prepare_one = PrepareImage(
        items=plan.todo,
        config=sink.detector.config,
        max_pixels=sink.max_pixels,
        max_bytes=sink.max_bytes,
        boxes=boxes,
    )
    batches = prepared_batches(
        prepare_one, count=len(plan.todo), workers=workers, batch_size=batch_size
    )
    progress = tqdm(total=len(plan.todo), unit="img", disable=not show_progress, dynamic_ncols=True)
    start = time.monotonic()
    limits = BatchLimits()  # what out-of-memory taught this run (see BatchLimits)
    try:
        with logging_redirect_tqdm(loggers=[logging.getLogger("pipeline")]):
            while True:
                tick = time.monotonic()
                batch = next(batches, None)
                stats.seconds["waiting"] += time.monotonic() - tick
                if batch is None:
                    break
                limits = _handle_batch(
                    batch,
                    sink=sink,
                    batch_size=batch_size,
                    stats=stats,
                    boxes=boxes,
                    limits=limits,
                )
                progress.update(len(batch))
    finally:
        batches.close()  # stops the decode threads
        progress.close()
        stats.seconds["loop"] = time.monotonic() - start
