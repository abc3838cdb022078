"""``extract_features``: images in, LXMERT region features (obj36 TSV or HDF5) out.

Run ``extract_features --help`` for every flag, and ``extract_features merge --help`` for
joining shard outputs. Exit codes are in :data:`EXIT_CODES`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
import time
import traceback
from collections import deque
from collections.abc import Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Exit status of ``extract_features`` (and of ``extract_features merge``).
EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_ALL_FAILED = 3
EXIT_ERROR = 4
EXIT_INTERRUPTED = 130
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "every selected image is in the output (written now or by an earlier run)",
    EXIT_SOME_FAILED: "some inputs failed (named with reasons in the summary and the "
    "manifest); every other image was written",
    EXIT_USAGE: "nothing was done: bad flags, no inputs, duplicate ids, an existing output "
    "without --resume/--overwrite, or a detector that cannot be loaded",
    EXIT_ALL_FAILED: "every selected input failed; no record was written",
    EXIT_ERROR: "unexpected error during the run (the output stays valid; --resume continues)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); the output is valid, --resume finishes it",
}

DEFAULT_DETECTOR = "vg-r101-c4-attr"
LOG = logging.getLogger("pipeline.extract")


class UsageError(ValueError):
    """A problem with the command line or its inputs, found before any image is processed."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _batch_size(text: str) -> int | None:
    """``auto`` (None: chosen by free device memory) or a positive int."""
    return None if text == "auto" else _positive_int(text)


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def _fraction_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or a comma list such as 0.3,0.4,0.5, got {text!r}"
        ) from None
    if not values or not all(0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"IoU thresholds must be in [0, 1], got {text!r}")
    return values


def _default_workers() -> int:
    return min(4, max(0, (os.cpu_count() or 1) - 1))


def build_parser() -> argparse.ArgumentParser:
    """The ``extract_features`` argument parser (``merge`` has its own, see
    :func:`build_merge_parser`)."""
    exit_lines = "\n".join(
        textwrap.fill(text, width=88, initial_indent=f"  {code:<4} ", subsequent_indent=" " * 7)
        for code, text in EXIT_CODES.items()
    )
    parser = argparse.ArgumentParser(
        prog="extract_features",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Detect regions with the bottom-up-attention Faster R-CNN and write LXMERT's\n"
            "region features: --out X.tsv (LXMERT obj36 TSV, readable by load_obj_tsv) or\n"
            "--out X.h5 (HDF5). A manifest X.<ext>.manifest.json is written beside it.\n\n"
            "Merge shard outputs with: extract_features merge SHARD... --out X"
        ),
        epilog=(
            "image ids: the path relative to its input root, without the extension (a file's\n"
            "root is its folder; a directory is its own root; a glob's root is the part before\n"
            "the first wildcard). Two different files with one id are an error before any work.\n"
            "Inputs are processed in id order; --shard is applied first, then --limit.\n\n"
            f"exit codes:\n{exit_lines}"
        ),
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, directories (searched recursively for image extensions), glob "
        "patterns (quote them), or @list.txt (one input per line, # comments)",
    )
    parser.add_argument(
        "-o",
        "--out",
        required=True,
        type=Path,
        help="output file: *.tsv (LXMERT obj36) or *.h5 / *.hdf5",
    )

    model = parser.add_argument_group("model and box selection")
    model.add_argument(
        "--detector",
        default=DEFAULT_DETECTOR,
        metavar="NAME|PATH",
        help="registry name (see `python -m weights list`) or a checkpoint file "
        ".bin/.pth/.pkl/.safetensors (default: %(default)s)",
    )
    model.add_argument(
        "--preset",
        default=None,
        help="detector config preset of the checkpoint (default: stored in the checkpoint, else "
        "the registry's, else vg-r101-c4-attr)",
    )
    model.add_argument(
        "--selection",
        choices=("bottom-up", "max-class"),
        default=None,
        help="box selection: bottom-up (LXMERT's own features: per-class NMS, proposals as "
        "boxes) or max-class (HF demo: best class's regressed box, class-agnostic NMS); "
        "default: the preset's",
    )
    boxes = model.add_mutually_exclusive_group()
    boxes.add_argument(
        "--boxes", type=_positive_int, metavar="N", help="exactly N boxes per image (36 for LXMERT)"
    )
    model.add_argument(
        "--min-boxes", type=_positive_int, metavar="N", help="fewest boxes per image"
    )
    model.add_argument("--max-boxes", type=_positive_int, metavar="N", help="most boxes per image")
    model.add_argument(
        "--conf-thresh",
        type=_fraction,
        metavar="P",
        help="bottom-up: drop boxes whose best class score is below P (default 0.2)",
    )
    model.add_argument(
        "--nms-thresh",
        type=_fraction_list,
        metavar="IOU[,IOU...]",
        help="bottom-up: per-class NMS IoU (one value, default 0.3); max-class: the IoU "
        "thresholds tried in order until enough boxes survive (default 0.3,0.4,...,0.9)",
    )
    model.add_argument(
        "--min-size",
        type=_positive_int,
        metavar="PX",
        help="short side after resizing (vg preset: 600)",
    )
    model.add_argument(
        "--max-size",
        type=_positive_int,
        metavar="PX",
        help="cap on the long side after resizing (vg preset: 1000)",
    )

    execution = parser.add_argument_group("execution")
    execution.add_argument(
        "--batch-size",
        type=_batch_size,
        default=None,
        metavar="N|auto",
        help="images per detector call; images with the same resized shape are batched, "
        "never padded. auto: as many as fit in the free CUDA memory (1 on CPU, where one "
        "image fills the cores); a batch that runs out of CUDA memory is split and retried "
        "(default: auto)",
    )
    execution.add_argument(
        "--autocast",
        choices=("none", "bf16", "fp16"),
        default="none",
        help="CUDA only: run the convolutions in bf16/fp16; RoI pooling, NMS and box "
        "selection stay fp32 (default: %(default)s)",
    )
    execution.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the trunk and res5 (pays off on long GPU runs; compiling takes "
        "minutes)",
    )
    execution.add_argument(
        "--workers",
        type=_non_negative_int,
        default=_default_workers(),
        metavar="N",
        help="threads that decode and resize images ahead of the model; 0 decodes in the "
        "main thread between batches (default: %(default)s)",
    )
    execution.add_argument(
        "--device",
        default="auto",
        metavar="DEV",
        help="cpu, cuda, cuda:N, or auto (cuda when available) (default: %(default)s)",
    )
    execution.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=None,
        metavar="N",
        help="refuse images with more than N pixels (decompression bombs; default 100000000)",
    )

    runs = parser.add_argument_group("runs and outputs")
    mode = runs.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume",
        action="store_true",
        help="keep the records already in the output (a partial last record from a killed run "
        "is dropped) and process only the missing images",
    )
    mode.add_argument(
        "--overwrite", action="store_true", help="replace an existing output instead of refusing"
    )
    runs.add_argument(
        "--shard",
        metavar="K/N",
        help="process only shard K of N (1 <= K <= N): every N-th image of the id-sorted "
        "inputs starting at the K-th; writes OUT.shard-K-of-N.EXT (merge with "
        "`extract_features merge`)",
    )
    runs.add_argument(
        "--visualize",
        type=Path,
        metavar="DIR",
        help="also write DIR/<image id>.png: each image with its boxes and "
        "'attribute object' labels",
    )
    runs.add_argument(
        "--limit",
        type=_non_negative_int,
        metavar="N",
        help="only the first N images (in id order, after --shard)",
    )
    verbosity = runs.add_mutually_exclusive_group()
    verbosity.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar or summary; errors only"
    )
    verbosity.add_argument(
        "-v", "--verbose", action="store_true", help="also log the detector config and each batch"
    )
    return parser


def build_merge_parser() -> argparse.ArgumentParser:
    """The ``extract_features merge`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="extract_features merge",
        description=(
            "Merge feature files (typically the shard outputs of one run) into one. Records are "
            "interleaved by image id, so the shards of a run merge into exactly the file a "
            "single run would have written. Inputs and output may be TSV or HDF5 in any mix; "
            "an id present in two inputs is an error. The output is written to a temporary "
            "file and renamed. Shard manifests are combined into OUT.<ext>.manifest.json."
        ),
    )
    parser.add_argument("inputs", nargs="+", type=Path, metavar="FILE", help="files to merge")
    parser.add_argument("-o", "--out", required=True, type=Path, help="merged *.tsv or *.h5")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    return parser


# --- the run -------------------------------------------------------------------------------


@dataclass
class RunStats:
    """Counts and seconds of one run."""

    selected: int = 0
    already_done: int = 0
    written: int = 0
    failures: list[Any] = field(default_factory=list)
    #: Wall seconds of the extraction loop, and the parts of it spent in ``Detector.detect``,
    #: waiting for decoded images, and writing records (+ visualisations).
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("loop", "detector", "waiting", "writing"), 0.0)
    )


def _detector_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if args.selection is not None:
        overrides["selection"] = args.selection
    if args.boxes is not None:
        if args.min_boxes is not None or args.max_boxes is not None:
            raise UsageError("--boxes N fixes the box count; do not combine it with --min/max")
        overrides["min_boxes"] = overrides["max_boxes"] = args.boxes
    if args.min_boxes is not None:
        overrides["min_boxes"] = args.min_boxes
    if args.max_boxes is not None:
        overrides["max_boxes"] = args.max_boxes
    if args.conf_thresh is not None:
        overrides["conf_thresh"] = args.conf_thresh
    if args.nms_thresh is not None:
        if len(args.nms_thresh) == 1:
            overrides["nms_thresh"] = args.nms_thresh[0]
        overrides["max_class_nms_thresholds"] = args.nms_thresh
    if args.min_size is not None:
        overrides["min_size"] = args.min_size
    if args.max_size is not None:
        overrides["max_size"] = args.max_size
    return overrides


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        # Said once per run: in a container this usually means `docker run` without --gpus.
        print(
            "extract_features: no CUDA device visible (in Docker: run with --gpus all); "
            "running on the CPU",
            file=sys.stderr,
        )
        return "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available here; use --device cpu")
    return name


def _load_detector(args: argparse.Namespace) -> Any:
    from detector import load_detector

    overrides = _detector_overrides(args)
    device = _resolve_device(args.device)
    try:
        detector = load_detector(
            args.detector, preset=args.preset, device=device, overrides=overrides or None
        )
    except (FileNotFoundError, KeyError, ValueError, TypeError, OSError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        raise UsageError(f"--detector {args.detector}: {message}") from error
    if args.autocast != "none":
        import torch

        detector.autocast_dtype = torch.bfloat16 if args.autocast == "bf16" else torch.float16
    if args.compile:
        detector.compile_submodules()
    if args.batch_size is None:
        from detector.model import auto_batch_size

        worst = (detector.config.min_size, detector.config.max_size)
        args.batch_size = auto_batch_size(detector.device, worst)
        LOG.debug("batch size %d", args.batch_size)
    nms = args.nms_thresh
    if nms is not None and len(nms) > 1 and detector.config.selection != "max-class":
        raise UsageError(
            "--nms-thresh takes a comma list only with max-class selection (bottom-up uses "
            "one per-class NMS threshold); pass one value or --selection max-class"
        )
    return detector


@dataclass(frozen=True)
class _Prepare:
    """Decode + resize of one listed image, never raising: a bad file becomes a Failure."""

    items: Sequence[Any]
    config: Any
    max_pixels: int

    def __call__(self, index: int) -> Any:
        from detector.image import ImageError
        from detector.preprocess import prepare
        from pipeline.manifest import Failure

        item = self.items[index]
        try:
            return prepare(
                str(item.path),
                config=self.config,
                image_id=item.image_id,
                max_pixels=self.max_pixels,
            )
        except ImageError as error:
            return Failure(item.image_id, str(item.path), error.reason)
        except Exception as error:  # a bad file must never end the run; report it instead
            return Failure(item.image_id, str(item.path), f"{type(error).__name__}: {error}")


def _prepared_batches(
    items: Sequence[Any], *, config: Any, workers: int, batch_size: int, max_pixels: int
) -> Generator[list[Any], None, None]:
    """Batches of prepared images (or Failures), in input order.

    With ``workers`` > 0, that many threads decode and resize ahead of the model, at most two
    batches per worker in flight. Threads, not processes: OpenCV and NumPy release the GIL, so
    decoding overlaps with torch's compute, and a thread starts at once where a spawned worker
    process spends ~2 s importing torch (benchmarks/RESULTS.md).
    """
    prepare_one = _Prepare(items=items, config=config, max_pixels=max_pixels)
    starts = range(0, len(items), batch_size)
    if workers == 0:
        for start in starts:
            yield [prepare_one(i) for i in range(start, min(start + batch_size, len(items)))]
        return
    import cv2

    # One OpenCV thread per decode: its own pool would compete with torch's for the cores.
    cv2_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    pending: deque[Future[Any]] = deque()
    in_flight = 2 * workers * batch_size
    submitted = 0
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
            try:
                for start in starts:
                    while submitted < len(items) and len(pending) < in_flight:
                        pending.append(pool.submit(prepare_one, submitted))
                        submitted += 1
                    count = min(batch_size, len(items) - start)
                    yield [pending.popleft().result() for _ in range(count)]
            finally:
                for future in pending:
                    future.cancel()
    finally:
        cv2.setNumThreads(cv2_threads)


def _detect(detector: Any, prepared: list[Any], paths: dict[str, str], batch_size: int) -> tuple:
    """Regions for ``prepared``; a batch that fails is retried image by image so that one bad
    image is reported and the others still get their records."""
    from pipeline.manifest import Failure

    try:
        return detector.detect(prepared, batch_size=batch_size), []
    except Exception:
        if len(prepared) == 1:
            error = sys.exc_info()[1]
            reason = f"detector failed: {type(error).__name__}: {error}"
            return [], [Failure(prepared[0].image_id, paths[prepared[0].image_id], reason)]
    regions, failures = [], []
    for image in prepared:
        got, failed = _detect(detector, [image], paths, batch_size)
        regions.extend(got)
        failures.extend(failed)
    return regions, failures


def _manifest_data(
    args: argparse.Namespace,
    *,
    detector: Any,
    output: Path,
    shard: tuple[int, int] | None,
    stats: RunStats,
    status: str,
    started: str,
    records_in_output: int | None,
) -> dict[str, Any]:
    from pipeline.manifest import command_line, library_versions, now_utc
    from pipeline.writers import output_format

    return {
        "status": status,
        "output": str(output),
        "format": output_format(output),
        "started": started,
        "updated": now_utc(),
        "command": command_line(),
        "inputs": list(args.inputs),
        "shard": {"index": shard[0], "count": shard[1]} if shard else None,
        "limit": args.limit,
        "detector": {
            "name": detector.checkpoint_name,
            "path": detector.checkpoint_path,
            "sha256": detector.checkpoint_sha256,
            "preset": detector.config.name,
            "config": detector.config.to_dict(),
        },
        "device": str(detector.device),
        "versions": library_versions(),
        "counts": {
            "selected": stats.selected,
            "already_done": stats.already_done,
            "written": stats.written,
            "failed": len(stats.failures),
            "records_in_output": records_in_output,
        },
        "seconds": {name: round(value, 3) for name, value in stats.seconds.items()},
        "failures": [failure.to_dict() for failure in stats.failures],
    }


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logger = logging.getLogger("pipeline")
    logger.setLevel(level)
    if not any(getattr(h, "_extract_features", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._extract_features = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False


def run(args: argparse.Namespace) -> int:
    """Do what ``args`` (from :func:`build_parser`) asks; returns the exit code."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from detector.image import DEFAULT_MAX_PIXELS, load_image
    from pipeline.inputs import gather_inputs, parse_shard, select_shard, shard_output_path
    from pipeline.manifest import manifest_path, now_utc, write_manifest
    from pipeline.visualize import save_visualization
    from pipeline.writers import WriteMode, existing_paths, open_writer, output_format

    started = now_utc()
    try:
        output_format(args.out)
        shard = parse_shard(args.shard) if args.shard else None
        items = gather_inputs(args.inputs)
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(str(error)) from error
    output = args.out
    if shard is not None:
        items = select_shard(items, index=shard[0], count=shard[1])
        output = shard_output_path(args.out, index=shard[0], count=shard[1])
    if args.limit is not None:
        items = items[: args.limit]
    mode: WriteMode = "resume" if args.resume else "overwrite" if args.overwrite else "create"
    if mode == "create" and existing_paths(output):
        raise UsageError(
            f"output {existing_paths(output)[0]} already exists; pass --resume to finish that "
            "run or --overwrite to replace it"
        )
    if not output.parent.is_dir():
        raise UsageError(f"output directory {output.parent} does not exist; create it first")
    detector = _load_detector(args)
    LOG.debug("detector %s, config %s", detector.checkpoint_name, detector.config.to_dict())
    writer = open_writer(output, mode=mode, feature_dim=detector.config.feature_dim)
    done = writer.existing_ids()
    todo = [item for item in items if item.image_id not in done]
    stats = RunStats(selected=len(items), already_done=len(items) - len(todo))
    paths = {item.image_id: str(item.path) for item in todo}
    manifest = manifest_path(output)

    def save_manifest(status: str, records: int | None) -> None:
        write_manifest(
            manifest,
            _manifest_data(
                args,
                detector=detector,
                output=output,
                shard=shard,
                stats=stats,
                status=status,
                started=started,
                records_in_output=records,
            ),
        )

    save_manifest("running", None)
    LOG.info(
        "%d images selected, %d already in %s, %d to do", len(items), len(done), output, len(todo)
    )
    status = "finished"
    max_pixels = args.max_pixels or DEFAULT_MAX_PIXELS
    start_time = time.monotonic()
    progress = tqdm(
        total=len(todo), unit="img", disable=args.quiet, file=sys.stderr, dynamic_ncols=True
    )
    seconds = stats.seconds
    batches = _prepared_batches(
        todo,
        config=detector.config,
        workers=args.workers,
        batch_size=args.batch_size,
        max_pixels=max_pixels,
    )
    try:
        with logging_redirect_tqdm(loggers=[logging.getLogger("pipeline")]):
            while True:
                tick = time.monotonic()
                batch = next(batches, None)
                seconds["waiting"] += time.monotonic() - tick
                if batch is None:
                    break
                prepared = [entry for entry in batch if not hasattr(entry, "reason")]
                failures = [entry for entry in batch if hasattr(entry, "reason")]
                tick = time.monotonic()
                regions, detect_failures = (
                    _detect(detector, prepared, paths, args.batch_size) if prepared else ([], [])
                )
                seconds["detector"] += time.monotonic() - tick
                tick = time.monotonic()
                for failure in [*failures, *detect_failures]:
                    LOG.warning("failed: %s: %s", failure.path, failure.reason)
                    stats.failures.append(failure)
                LOG.debug(
                    "batch: %s -> %d regions, %d failed",
                    ", ".join(getattr(entry, "image_id", "?") for entry in batch),
                    len(regions),
                    len(failures) + len(detect_failures),
                )
                for region in regions:
                    writer.write(region)
                    stats.written += 1
                    if args.visualize is not None:
                        try:
                            save_visualization(
                                args.visualize,
                                load_image(paths[region.image_id], max_pixels=max_pixels),
                                region,
                                object_names=detector.object_names,
                                attribute_names=detector.attribute_names,
                            )
                        except (OSError, ValueError) as error:  # the record itself is fine
                            LOG.warning("no visualisation of %s: %s", region.image_id, error)
                seconds["writing"] += time.monotonic() - tick
                progress.update(len(batch))
    except KeyboardInterrupt:
        status = "interrupted"
    except BaseException:
        status = "error"
        raise
    finally:
        batches.close()  # stops the decode threads
        progress.close()
        # Every record is already durable; closing folds an HDF5 journal into the file.
        writer.close()
        seconds["loop"] = time.monotonic() - start_time
        records = stats.already_done + stats.written
        save_manifest(status, records if status == "finished" else None)
    elapsed = seconds["loop"]
    if not args.quiet:
        rate = stats.written / elapsed if elapsed > 0 else 0.0
        print(
            f"extract_features: {stats.selected} selected: {stats.written} written, "
            f"{stats.already_done} already done (skipped), {len(stats.failures)} failed "
            f"-> {output} ({rate:.2f} img/s)",
            file=sys.stderr,
        )
    if stats.failures:
        print(f"{len(stats.failures)} input(s) failed:", file=sys.stderr)
        for failure in stats.failures:
            print(f"  {failure.path}: {failure.reason}", file=sys.stderr)
    if status == "interrupted":
        return EXIT_INTERRUPTED
    if stats.failures and stats.written == 0 and stats.already_done == 0:
        return EXIT_ALL_FAILED
    return EXIT_SOME_FAILED if stats.failures else EXIT_OK


def run_merge(args: argparse.Namespace) -> int:
    """``extract_features merge``: join feature files; returns the exit code."""
    from pipeline.manifest import manifest_path, now_utc, read_manifest, write_manifest
    from pipeline.writers import merge_outputs

    for path in args.inputs:
        if not path.is_file():
            raise UsageError(f"merge input {path} does not exist")
    try:
        count = merge_outputs(args.inputs, args.out, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as error:
        raise UsageError(str(error)) from error
    sources = []
    failures: list[Any] = []
    for path in args.inputs:
        entry: dict[str, Any] = {"path": str(path)}
        if manifest_path(path).is_file():
            shard_manifest = read_manifest(manifest_path(path))
            entry["manifest"] = shard_manifest
            failures.extend(shard_manifest.get("failures", []))
        sources.append(entry)
    write_manifest(
        manifest_path(args.out),
        {
            "status": "merged",
            "output": str(args.out),
            "updated": now_utc(),
            "counts": {"records_in_output": count, "failed": len(failures)},
            "failures": failures,
            "sources": sources,
        },
    )
    if not args.quiet:
        print(
            f"extract_features merge: {count} records from {len(args.inputs)} files -> {args.out}",
            file=sys.stderr,
        )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``extract_features`` (``merge`` as first argument merges outputs)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    merging = bool(argv) and argv[0] == "merge"
    parser = build_merge_parser() if merging else build_parser()
    args = parser.parse_args(argv[1:] if merging else argv)
    if not merging:
        _configure_logging(args)
    try:
        return run_merge(args) if merging else run(args)
    except UsageError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as error:
        print(f"{parser.prog}: unexpected error: {type(error).__name__}: {error}", file=sys.stderr)
        if getattr(args, "verbose", False):
            traceback.print_exc()
        else:
            print("(run with -v for the traceback)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
