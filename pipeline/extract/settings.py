"""``extract_features`` settings: the flags as one typed, validated record.

:func:`validate` is the command's first step. It checks every flag, resolves the device and
the detector config the run will use (from the preset, the checkpoint's stored config or the
registry record, with the flags' overrides), all without loading or hashing any weights, so a
bad flag costs nothing. Nothing later reads ``argparse`` results.

It checks the flags, then the inputs and the model names, before torch is imported (only
``--device`` and ``--precision`` need torch), so a usage error is said at once (issue 29).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from detector.checkpoint_config import detector_config
from detector.config import DetectorConfig
from detector.image import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from pipeline.errors import UsageError
from pipeline.extract.boxes_file import BoxesFile, read_boxes_file
from pipeline.extract.inputs import check_inputs_named, parse_shard, shard_output_path
from pipeline.extract.staged import STAGED_FORMATS, output_format_of, staging_path
from pipeline.features.formats.common import FeatureDtype
from pipeline.features.manifest import check_name_length
from pipeline.features.output import WriteMode
from pipeline.flags import check_models, precision_from_args
from weights.defaults import DeviceError, extra_install_hint, resolve_device

if TYPE_CHECKING:
    import torch

    from detector.options import InferenceOptions
    from detector.precision import Precision

#: Where the detector runs: this machine, or actors on a Ray cluster.
Engine = Literal["local", "ray"]

#: What ``--engine ray`` without the extra installed says (exit 2).
RAY_MISSING = f"--engine ray needs Ray Data, which is not installed: {extra_install_hint('ray')}"


@dataclass(frozen=True)
class RaySettings:
    """The cluster flags of ``--engine ray``.

    Attributes:
        address: ``--ray-address`` (``HOST:PORT`` of the head, or ``auto``), or None to
            start a Ray instance on this machine for the run.
        actors: detector actors (None: one per GPU with ``--device cuda``, else as many as
            the cluster's CPUs allow at ``threads`` each).
        actor_cpus: CPUs each actor reserves (None: chosen so that one CPU stays free for
            decoding, see :func:`pipeline.extract.engines.ray.plan_actors`).
        ship_weights: put the driver's checkpoint into the object store for the actors
            whose node lacks it (``--no-ship-weights``: False).
    """

    address: str | None
    actors: int | None
    actor_cpus: float | None
    ship_weights: bool = True


@dataclass(frozen=True)
class ExtractSettings:
    """Everything one ``extract_features`` run was asked to do, validated.

    Attributes:
        inputs: the input specs as given (files, folders, globs, ``@list.txt``).
        out: the output as given (before ``--shard`` names the shard's file).
        detector: registry name or checkpoint path.
        preset: ``--preset``, or None for the checkpoint's own.
        config: the detector config the run uses (preset + flag overrides), validated.
        device: where the detector runs (``auto`` already resolved).
        batch_size: images per detector call; None chooses by free device memory.
        precision: ``fp32``, ``bf16`` or ``fp16`` (:mod:`detector.precision`), checked
            against the device (``--autocast`` mapped onto it).
        compile: ``torch.compile`` trunk and res5.
        deterministic: ``--deterministic``: each image alone, and on CUDA deterministic cuDNN
            with TF32 off, so records do not depend on batches or shards (CPU runs always are).
        workers: decode threads (0: decode in the main thread).
        max_pixels: refuse images with more pixels.
        max_bytes: refuse image files larger than this, unread.
        mode: ``create`` (refuse an existing output), ``overwrite`` or ``resume``.
        shard: ``(K, N)`` or None.
        limit: only the first N images (after the shard), or None.
        visualize: folder for annotated pictures, or None.
        quiet, verbose: how much to print.
        boxes_from: ``--boxes-from``: the given boxes, read and hashed once (None: detect).
        threads: torch threads of the detector (``--threads``; default: torch's own count
            in this process). On CPU the features' last bits depend on it, so every engine
            applies it explicitly; recorded in the manifest's ``engine`` section.
        engine: ``local`` (this machine) or ``ray`` (:mod:`pipeline.extract.engines.ray`).
        ray: the Ray engine's cluster flags (None with the local engine).
        format: the output's format (``tsv``, ``h5``, or one of
            :data:`~pipeline.extract.staged.STAGED_FORMATS`, written through a TSV).
        feature_dtype: stored precision of the features (float16 only where the format
            holds it: npz-dir, parquet; lmdb always).
    """

    inputs: tuple[str, ...]
    out: Path
    detector: str
    preset: str | None
    config: DetectorConfig
    device: torch.device
    batch_size: int | None
    precision: Precision
    compile: bool
    workers: int
    max_pixels: int
    max_bytes: int
    mode: WriteMode
    shard: tuple[int, int] | None
    limit: int | None
    visualize: Path | None
    quiet: bool
    verbose: bool
    boxes_from: BoxesFile | None = None
    threads: int = 1
    engine: Engine = "local"
    ray: RaySettings | None = None
    deterministic: bool = False
    format: str = "tsv"
    feature_dtype: FeatureDtype = "float32"

    @property
    def inference_options(self) -> InferenceOptions:
        """The detector's inference options for this run (every engine loads with these)."""
        from detector.options import InferenceOptions  # torch: imported when a run loads

        return InferenceOptions(
            device=self.device,
            precision=self.precision,
            compile=self.compile,
            deterministic=self.deterministic,
        )

    @property
    def output(self) -> Path:
        """The file this run writes: ``out``, or with ``--shard K/N`` the shard's own file
        (``feats.shard-K-of-N.h5``)."""
        if self.shard is None:
            return self.out
        index, count = self.shard
        return shard_output_path(self.out, index=index, count=count)

    @property
    def staging(self) -> Path | None:
        """The TSV a run into a staged format writes (in ``OUT.partial/``), else None."""
        return staging_path(self.out) if self.format in STAGED_FORMATS else None

    @property
    def written(self) -> Path:
        """The file the engine writes records to: :attr:`staging`, else :attr:`output`."""
        return self.staging or self.output


def config_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The :class:`DetectorConfig` fields the model flags change."""
    overrides: dict[str, object] = {}
    if args.selection is not None:
        overrides["selection"] = args.selection
    if args.proposals is not None:
        overrides["proposals"] = args.proposals
    if args.boxes is not None:
        overrides["min_boxes"] = overrides["max_boxes"] = args.boxes
    for flag in ("min_boxes", "max_boxes", "conf_thresh", "min_size", "max_size"):
        if getattr(args, flag) is not None:
            overrides[flag] = getattr(args, flag)
    if args.nms_thresh is not None:
        if len(args.nms_thresh) == 1:
            overrides["nms_thresh"] = args.nms_thresh[0]
        overrides["max_class_nms_thresholds"] = args.nms_thresh
    return overrides


def _config(args: argparse.Namespace) -> DetectorConfig:
    """The run's detector config, from names and headers only (no weights read)."""
    try:
        overrides = config_overrides(args)
        config = detector_config(args.detector, preset=args.preset, overrides=overrides)
    except (KeyError, ValueError, OSError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        flag = "--preset" if args.preset is not None and isinstance(error, KeyError) else None
        raise UsageError(f"{flag or '--detector ' + args.detector}: {message}") from error
    if args.nms_thresh is not None and len(args.nms_thresh) > 1 and config.selection != "max-class":
        raise UsageError(
            "--nms-thresh takes a comma list only with max-class selection (bottom-up uses "
            "one per-class NMS threshold); pass one value or --selection max-class"
        )
    _check_model_limits(config)
    return config


#: Resized short sides the detector can run: below two res4 cells (stride 16) the trunk's
#: pooling leaves nothing to propose from; above it one image needs tens of GB.
SIZE_RANGE = (32, 4000)


def _check_model_limits(config: DetectorConfig) -> None:
    """Box counts and sizes the model can produce and run."""
    most = config.rpn_post_nms_topk
    if config.max_boxes > most:
        raise UsageError(
            f"--boxes/--max-boxes {config.max_boxes}: preset {config.name!r} keeps {most} "
            f"proposals per image, so it can give at most {most} boxes"
        )
    low, high = SIZE_RANGE
    for flag, value in (("--min-size", config.min_size), ("--max-size", config.max_size)):
        if not low <= value <= high:
            raise UsageError(f"{flag} {value}: must be in {low}..{high} pixels")


def _device(args: argparse.Namespace) -> torch.device:
    def say(message: str) -> None:
        # Said once per run: a GPU that cannot be used, or (-v) no GPU at all.
        print(f"extract_features: {message}", file=sys.stderr)

    if args.engine == "ray" and args.device.strip().lower().startswith("cuda"):
        # The actors' device: each actor holds one GPU of its node (num_gpus=1), seen there
        # as cuda; this process, which only writes, needs none.
        import torch

        return torch.device("cuda")
    try:
        on_cpu = say if args.verbose else None  # a CPU machine's normal case: quiet
        return resolve_device(args.device, on_fallback=say, on_cpu=on_cpu)
    except DeviceError as error:
        raise UsageError(f"--device {args.device}: {error}") from error


def _precision(args: argparse.Namespace, device: torch.device) -> Precision:
    """``--precision`` (or the deprecated ``--autocast``), refused where the device cannot
    run it: fp16 off CUDA, bf16 on a CPU without bf16 instructions (exit 2, not a slow run)."""
    from detector.precision import check_precision  # torch, as the device has been

    precision = precision_from_args(args, prog="extract_features")
    try:
        check_precision(precision, device)
    except ValueError as error:
        raise UsageError(f"--precision {precision}: {error}") from error
    return precision


def validate(args: argparse.Namespace) -> ExtractSettings:
    """Check every flag of ``extract_features`` and build the run's settings.

    In this order: the flags and their combinations, the inputs (named ones exist) and the
    ``--boxes-from`` file, the ``--detector`` model (found, else downloaded as the loader would)
    and the flags its config bounds, Ray's presence; all before torch is imported. Then
    ``--device`` and ``--precision``, which need torch.

    Raises:
        UsageError: a flag or a combination of flags that cannot run, named with the remedy.
    """
    output, shard, fmt = _check_flags(args)
    try:
        check_inputs_named(args.inputs)
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(str(error)) from error
    boxes_from = _boxes_from(args)
    check_models([("--detector", args.detector)], download=True)
    config = _config(args)
    try:
        check_name_length(output)
        if fmt in STAGED_FORMATS:
            check_name_length(staging_path(output))
    except ValueError as error:
        raise UsageError(str(error)) from error
    mode: WriteMode = "resume" if args.resume else "overwrite" if args.overwrite else "create"
    feature_dtype = _feature_dtype(args, fmt)
    ray = _ray_settings(args)
    device = _device(args)
    precision = _precision(args, device)
    import torch  # loaded by the device check: the default thread count is torch's

    return ExtractSettings(
        inputs=tuple(args.inputs),
        out=args.out,
        detector=args.detector,
        preset=args.preset,
        config=config,
        device=device,
        batch_size=args.batch_size,
        precision=precision,
        compile=args.compile,
        deterministic=args.deterministic,
        workers=args.workers,
        max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
        max_bytes=args.max_bytes or DEFAULT_MAX_BYTES,
        mode=mode,
        shard=shard,
        limit=args.limit,
        visualize=args.visualize,
        quiet=args.quiet,
        verbose=args.verbose,
        boxes_from=boxes_from,
        threads=args.threads or torch.get_num_threads(),
        engine=args.engine,
        ray=ray,
        format=fmt,
        feature_dtype=feature_dtype,
    )


def _check_flags(args: argparse.Namespace) -> tuple[Path, tuple[int, int] | None, str]:
    """The flags alone and their combinations (nothing read): the output this run writes,
    ``--shard`` and the output's format."""
    if args.out.name in ("", ".", ".."):
        raise UsageError(f"--out {args.out}: name the output file or folder, e.g. out/feats.tsv")
    try:
        fmt = output_format_of(args.out, args.format)
        shard = parse_shard(args.shard) if args.shard is not None else None
    except ValueError as error:
        raise UsageError(str(error)) from error
    if shard is not None and fmt in STAGED_FORMATS:
        raise UsageError(
            f"--shard writes .tsv or .h5 shards, not {fmt}: extract the shards into "
            f"*.tsv, join them with `extract_features merge`, then `extract_features convert "
            f"... --to {fmt}`"
        )
    output = shard_output_path(args.out, index=shard[0], count=shard[1]) if shard else args.out
    if output.is_dir() and fmt not in STAGED_FORMATS:
        raise UsageError(
            f"--out {output} is a directory; give a file name ending in .tsv, .h5 or "
            ".parquet, or --format npz-dir/lmdb for a folder output"
        )
    if args.boxes is not None and (args.min_boxes is not None or args.max_boxes is not None):
        raise UsageError("--boxes N fixes the box count; do not combine it with --min/max-boxes")
    _check_boxes_from_flags(args)  # before _config, whose box-count limits it overrides
    _check_ray_flags(args)
    return output, shard, fmt


def _feature_dtype(args: argparse.Namespace, fmt: str) -> FeatureDtype:
    """``--feature-dtype``, checked against the format (default: the format's first), whose
    modules must be installed."""
    from pipeline.features.formats.registry import FORMATS

    spec = FORMATS[fmt]
    try:
        spec.check_installed("--format")
        return spec.stored_dtype(args.feature_dtype)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _check_ray_flags(args: argparse.Namespace) -> None:
    """The cluster flags are refused without ``--engine ray``."""
    given = [
        flag
        for flag, value in (
            ("--ray-address", args.ray_address),
            ("--actors", args.actors),
            ("--actor-cpus", args.actor_cpus),
            ("--ship-weights" if args.ship_weights else "--no-ship-weights", args.ship_weights),
        )
        if value is not None
    ]
    if args.engine != "ray" and given:
        raise UsageError(f"{', '.join(given)} only apply with --engine ray")


def _ray_settings(args: argparse.Namespace) -> RaySettings | None:
    """With ``--engine ray`` its flags, once Ray Data imports (the optional extra), checked
    before any model loads; None with the local engine."""
    if args.engine != "ray":
        return None
    try:
        import ray.data  # noqa: F401  (the [ray] extra; imported here only to check)
    except ImportError as error:
        raise UsageError(RAY_MISSING) from error
    return RaySettings(
        address=args.ray_address,
        actors=args.actors,
        actor_cpus=args.actor_cpus,
        ship_weights=args.ship_weights is not False,
    )


def _check_boxes_from_flags(args: argparse.Namespace) -> None:
    """``--boxes-from`` gives the boxes: the detected box counts do not apply, and
    ``--no-clip`` applies to nothing else."""
    if args.no_clip and args.boxes_from is None:
        raise UsageError(
            "--no-clip pools given boxes unclipped; it applies only with --boxes-from FILE: "
            "add --boxes-from, or drop --no-clip (detected boxes are always inside the image)"
        )
    counts = [flag for flag in ("boxes", "min_boxes", "max_boxes") if getattr(args, flag)]
    if args.boxes_from is not None and counts:
        flags = "/".join("--" + flag.replace("_", "-") for flag in counts)
        raise UsageError(
            f"--boxes-from gives each image's boxes; {flags} (the detected box count) does not "
            "apply to it: drop one of them"
        )


def _boxes_from(args: argparse.Namespace) -> BoxesFile | None:
    """``--boxes-from FILE`` read (and hashed) once, or None. A file that cannot be read or is
    malformed is a usage error naming the file and the entry, before any model loads."""
    if args.boxes_from is None:
        return None
    try:
        return read_boxes_file(args.boxes_from, coco_boxes=args.coco_boxes, clip=not args.no_clip)
    except ValueError as error:
        raise UsageError(f"--boxes-from: {error}") from error
