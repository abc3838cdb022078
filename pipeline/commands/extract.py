"""``extract_features``: images in, LXMERT region features (obj36 TSV or HDF5) out.

Run ``extract_features --help`` for every flag, and ``extract_features merge --help`` for
joining shard outputs. Exit codes are in :data:`EXIT_CODES`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import EXIT_CODES
from pipeline.features.suffixes import OUTPUT_FORMATS
from pipeline.flags import add_precision_flags
from weights.command import Command, configure_logging, non_negative_int, positive_int, run_command
from weights.defaults import DEFAULT_DETECTOR, DEFAULT_DEVICE


def _batch_size(text: str) -> int | None:
    """``auto`` (None: chosen by free device memory) or a positive int."""
    return None if text == "auto" else positive_int(text)


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
    """The ``extract_features`` argument parser (each sub-command of :data:`SUBCOMMANDS` has its
    own)."""
    exit_lines = "\n".join(
        textwrap.fill(text, width=88, initial_indent=f"  {code:<4} ", subsequent_indent=" " * 7)
        for code, text in EXIT_CODES.items()
    )
    parser = argparse.ArgumentParser(
        prog="extract_features",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Detect regions with the bottom-up-attention Faster R-CNN and write LXMERT's\n"
            "region features: --out X.tsv (LXMERT obj36 TSV, readable by load_obj_tsv),\n"
            "--out X.h5 (HDF5), X.parquet, or a folder with --format npz-dir|lmdb.\n"
            "A manifest OUT.manifest.json is written beside it.\n\n"
            "sub-commands (extract_features COMMAND --help):\n"
            + "".join(f"  {name:<8} {summary}\n" for name, (_, summary) in SUBCOMMANDS.items())
            + "An input folder named like a sub-command is given as ./merge."
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
        help="output: *.tsv (LXMERT obj36), *.h5 / *.hdf5, *.parquet, or a folder with "
        "--format npz-dir or lmdb",
    )
    parser.add_argument(
        "--format",
        choices=OUTPUT_FORMATS,
        default=None,
        help="the output's format (default: from --out's suffix). npz-dir, lmdb and parquet "
        "are written through a TSV in OUT.partial/ and converted when every image is done "
        "(docs/formats.md: what each holds and who reads it)",
    )
    parser.add_argument(
        "--feature-dtype",
        choices=("float32", "float16"),
        default=None,
        help="stored precision of the features: float16 only for npz-dir and parquet (lmdb "
        "is always float16, tsv and h5 float32) (default: the format's own)",
    )

    _add_model_flags(parser.add_argument_group("model and box selection"))
    _add_execution_flags(parser.add_argument_group("execution"))
    _add_engine_flags(parser.add_argument_group("engine (many machines)"))
    _add_run_flags(parser.add_argument_group("runs and outputs"))
    return parser


def _add_model_flags(model: argparse._ArgumentGroup) -> None:
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
    model.add_argument(
        "--proposals",
        choices=("detectron2", "caffe"),
        default=None,
        help="proposal layer: caffe (the original Caffe model's, which made LXMERT's released "
        "features) or detectron2 (py-bottom-up-attention / HF demo); default: caffe with "
        "bottom-up selection, detectron2 with max-class",
    )
    _add_box_flags(model)
    model.add_argument(
        "--min-size",
        type=positive_int,
        metavar="PX",
        help="short side after resizing (vg preset: 600)",
    )
    model.add_argument(
        "--max-size",
        type=positive_int,
        metavar="PX",
        help="cap on the long side after resizing (vg preset: 1000)",
    )


def _add_box_flags(model: argparse._ArgumentGroup) -> None:
    """Which boxes: how many, the selection thresholds, or given boxes."""
    boxes = model.add_mutually_exclusive_group()
    boxes.add_argument(
        "--boxes", type=positive_int, metavar="N", help="exactly N boxes per image (36 for LXMERT)"
    )
    model.add_argument("--min-boxes", type=positive_int, metavar="N", help="fewest boxes per image")
    model.add_argument("--max-boxes", type=positive_int, metavar="N", help="most boxes per image")
    model.add_argument(
        "--boxes-from",
        type=Path,
        metavar="FILE",
        help="features of these boxes instead of detected ones (no RPN, no selection; the "
        "boxes in file order, clipped to the image): .json {img_id: [[x1, y1, x2, y2], ...]} "
        "in raw-image pixels, COCO annotations .json (id = stem of file_name, bbox xywh), an "
        "obj36 .tsv or an .h5 output of this tool. Inputs without an entry fail; ids without "
        "an input are ignored and counted. Not with --boxes/--min-boxes/--max-boxes",
    )
    model.add_argument(
        "--coco-boxes",
        choices=("exclusive", "inclusive"),
        default="exclusive",
        help="how a COCO boxes file's bbox [x, y, w, h] becomes x2, y2: exclusive x + w, "
        "y + h (COCO's own reading; default) or inclusive x + w - 1, y + h - 1 (the original "
        "bottom-up code's lib/datasets/coco.py). Recorded in the manifest",
    )
    model.add_argument(
        "--no-clip",
        action="store_true",
        help="with --boxes-from: pool the given boxes unclipped and write them as given, as the "
        "original bottom-up code did (default: boxes are clipped to the image; the manifest "
        "counts the clipped ones). A box wholly outside the image is still refused. Recorded "
        "in the manifest",
    )
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


def _add_execution_flags(execution: argparse._ArgumentGroup) -> None:
    execution.add_argument(
        "--batch-size",
        type=_batch_size,
        default=None,
        metavar="N|auto",
        help="images per detector call; images with the same resized shape are batched, "
        "never padded. auto: as many as fit in the free CUDA memory (1 on CPU, where one "
        "image fills the cores); a batch that runs out of CUDA memory is split and retried, "
        "later batches start at the size that fit, and an image that does not fit alone "
        "fails by itself (default: auto). On CPU any batch size gives the same records. On "
        "CUDA it does not, exactly, unless --deterministic: cuDNN picks convolution "
        "algorithms by batch size, fp32 convolutions run in TF32 (PyTorch's default), and "
        "res5 takes regions in chunks of 100 across the batch's images, so features differ "
        "in the last bits and top-k and thresholds can turn that into other boxes",
    )
    execution.add_argument(
        "--deterministic",
        action="store_true",
        help="exact mode, what --shard/merge and --resume promise on a GPU: each image runs "
        "alone, cuDNN uses deterministic algorithms without autotuning, TF32 is off; records "
        "then depend on their image alone and match one whole run bit for bit on the same "
        "GPU model, driver and torch (slower on CUDA). CPU runs are always exact. Recorded "
        "in the manifest: --resume and merge refuse to mix exact and inexact records",
    )
    add_precision_flags(execution, deprecated_autocast=True)
    execution.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the trunk and res5 (pays off on long GPU runs; compiling takes "
        "minutes)",
    )
    execution.add_argument(
        "--workers",
        type=non_negative_int,
        default=_default_workers(),
        metavar="N",
        help="threads that decode and resize images ahead of the model; 0 decodes in the "
        "main thread between batches (default: %(default)s)",
    )
    execution.add_argument(
        "--device",
        default=DEFAULT_DEVICE,
        metavar="DEV",
        help="cpu, cuda, cuda:N, or auto (cuda when available) (default: %(default)s)",
    )
    execution.add_argument(
        "--max-pixels",
        type=positive_int,
        default=None,
        metavar="N",
        help="refuse images with more than N pixels (decompression bombs; default 100000000)",
    )
    execution.add_argument(
        "--max-bytes",
        type=positive_int,
        default=None,
        metavar="N",
        help="refuse image files larger than N bytes, before reading them (default 200000000)",
    )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _add_engine_flags(engine: argparse._ArgumentGroup) -> None:
    engine.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: decode and detect on this machine; ray: decode as Ray Data CPU tasks and "
        "detect in actors across a Ray cluster (the [ray] extra); this "
        "process alone writes the output, byte-identical to a local run at the same "
        "--threads. Inputs must be readable at the same paths on every node; with --device "
        "cuda each actor holds one GPU (this process needs none) (default: %(default)s)",
    )
    engine.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="torch threads of the detector (each Ray actor sets it explicitly). On CPU the "
        "features' last bits depend on it, so outputs compare byte for byte only at one "
        "count; recorded in the manifest, not refused by --resume/merge (default: torch's "
        "own count here, from OMP_NUM_THREADS or the cores)",
    )
    engine.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="join this Ray cluster: HOST:PORT of its head (`ray start --head --port`), or "
        "auto on one of its nodes (default: start Ray on this machine for the run)",
    )
    engine.add_argument(
        "--actors",
        type=positive_int,
        default=None,
        metavar="N",
        help="detector actors, each loading the model once; --batch-size is per actor "
        "(default: one per GPU with --device cuda, else what the cluster's CPUs allow at "
        "--threads each)",
    )
    engine.add_argument(
        "--actor-cpus",
        type=_positive_float,
        default=None,
        metavar="X",
        help="CPUs each actor reserves, fractions allowed (default: at most --threads, leaving "
        "one CPU of the cluster free so decoding is always scheduled)",
    )
    engine.add_argument(
        "--ship-weights",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="on a joined cluster, put this machine's detector weights into Ray's object "
        "store for actors whose node has no copy with the same sha256 (its registry cache, "
        "$LXMERT_PIPELINE_WEIGHTS, the same path); they keep it in "
        "$XDG_CACHE_HOME/lxmert-pipeline/shipped (~/.cache). --no-ship-weights: nothing is "
        "put there, and a node without the weights is exit 2 before anything is written "
        "(default: ship)",
    )


def _add_run_flags(runs: argparse._ArgumentGroup) -> None:
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
        type=non_negative_int,
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


def run(args: argparse.Namespace) -> int:
    """Do what ``args`` (from :func:`build_parser`) asks: the steps of
    :mod:`pipeline.extract.steps`."""
    from pipeline.extract.settings import validate

    configure_logging(quiet=args.quiet, verbose=args.verbose)
    settings = validate(args)  # its usage errors are said before torch is imported
    from pipeline.extract.steps import run_extract  # torch

    return run_extract(settings)


EXTRACT_COMMAND = Command(
    name="",
    summary="extract region features from images (the default command)",
    build_parser=build_parser,
    run=run,
    disk_full_remedy="every record written so far is kept; free some space and run the same "
    "command with --resume to continue",
)

#: Sub-commands by the word that selects them: ``module:Command`` and the command's summary,
#: so that the default command and its usage errors never import them (each imports torch
#: through the feature files' modules); a test keeps the summaries equal to the commands'.
#: Anything else is the default command's input; a folder named ``merge`` is given as
#: ``./merge``.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "merge": (
        "pipeline.commands.merge:MERGE_COMMAND",
        "join feature files (the shards of one run) into one",
    ),
    "compare": (
        "pipeline.commands.compare:COMPARE_COMMAND",
        "compare with a reference feature file (e.g. LXMERT's val2014_obj36.tsv)",
    ),
    "convert": (
        "pipeline.commands.convert:CONVERT_COMMAND",
        "convert feature files between formats (tsv, h5, ban-h5, npz-dir, lmdb, parquet)",
    ),
}


def subcommand(name: str) -> Command:
    """The sub-command ``name`` of :data:`SUBCOMMANDS`, imported now."""
    module, attribute = SUBCOMMANDS[name][0].split(":")
    command: Command = getattr(importlib.import_module(module), attribute)
    return command


def __getattr__(name: str) -> object:
    """``COMMANDS``: the sub-commands themselves by word, imported when asked for."""
    if name == "COMMANDS":
        return {word: subcommand(word) for word in SUBCOMMANDS}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``extract_features`` and its sub-commands (:data:`SUBCOMMANDS`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return run_command(subcommand(argv[0]), argv[1:])
    return run_command(EXTRACT_COMMAND, argv)


if __name__ == "__main__":
    sys.exit(main())
