#!/usr/bin/env python3
"""End-to-end figures: ``extract_features`` with 0 and 2 workers, and ``answer()`` cold and warm.

``extract_features`` runs through its real entry point (``pipeline.commands.extract.main``, in this
process) on a folder of real photos from scikit-image written as JPEGs. Its wall time is compared
with the detector's own compute time for the same images (``Detector.detect`` on images prepared
beforehand, same batches): with 2 workers, decoding, resizing and writing should hide behind
compute (target: wall within 5% of detector time). Wall time includes loading the detector,
which the small default model cannot hide; more images amortise it. The run's own manifest also
records its loop, detector, waiting and writing seconds: ``in_run_loop_over_detector`` compares
them within one run, free of the drift between runs on a shared machine.

``answer()`` is timed cold (first call in a fresh interpreter, building the default pipeline),
warm, and warm with the regions cached (``Pipeline.answer_regions``), the last compared with a
bare transformers forward of the same LXMERT on the same inputs (target: within 10%).

    python benchmarks/bench_pipeline.py --quick     # < 60 s: shapes-world models, 8 images
    python benchmarks/bench_pipeline.py             # 32 images, more repeats
    python benchmarks/bench_pipeline.py --full      # full-size R101 detector and LXMERT
                                                    # (seeded random weights; minutes)
    python benchmarks/bench_pipeline.py --device cuda   # the same figures on a GPU
    python benchmarks/bench_pipeline.py --engine ray    # local vs Ray engine on examples/
                                                        # (--ray-address ADDR: a cluster)

With ``--engine ray`` only the engine comparison runs: ``extract_features`` with ``--engine
local`` and ``--engine ray`` on the same images (examples/, cycled up to ``--images``), at the
same ``--threads``, in this one process, and the images/s of each (wall, including Ray's start
and the actors' model load, and the in-run loop); the outputs must be byte-identical.

Prints one JSON document. Times are medians of the repeats, in seconds or ms as named.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
ANSWER_IMAGE = ROOT / "examples" / "scene_000.png"
ANSWER_QUESTION = "what color is the circle?"
FULL_PRESET = "vg-r101-c4-attr"
# answer() defaults to the real models; the figures here are for the shipped offline ones.
SHAPES_DETECTOR = "shapes-detector"
SHAPES_ENCODER = "shapes-lxmert"

# The cold start runs here, in a fresh interpreter; it prints one JSON line.
COLD_START_CODE = """
import json, sys, time
start = time.perf_counter()
from pipeline import answer
imported = time.perf_counter()
models = {"detector": sys.argv[3], "encoder": sys.argv[4], "device": sys.argv[5]}
first = answer(sys.argv[1], sys.argv[2], **models)
called = time.perf_counter()
answer(sys.argv[1], sys.argv[2], **models)
again = time.perf_counter()
print(json.dumps({"import_ms": 1e3 * (imported - start), "first_call_ms": 1e3 * (called - imported),
                  "second_call_ms": 1e3 * (again - called), "answer": first}))
"""


def bench_detector_module() -> ModuleType:
    """``benchmarks/bench_detector.py`` by path (works however this script is started)."""
    path = Path(__file__).resolve().parent / "bench_detector.py"
    spec = importlib.util.spec_from_file_location("bench_detector", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"{path} not found; it ships beside this script")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def median_ms(fn: Callable[[], Any], *, repeats: int) -> float:
    """Median wall milliseconds of ``fn()`` over ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def paired_median_ms(
    first: Callable[[], Any], second: Callable[[], Any], *, repeats: int
) -> tuple[float, float]:
    """Median wall milliseconds of two functions timed in alternation (after a warm-up call
    each), so that the machine drifting during the measurement hits both alike."""
    first()
    second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, bucket in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[0]), 1e3 * statistics.median(times[1])


def write_photos(folder: Path, count: int) -> list[Path]:
    """``count`` JPEGs (quality 92) of scikit-image's photos at their own sizes, cycled."""
    import cv2
    from skimage import data

    photos = [data.astronaut, data.coffee, data.chelsea, data.rocket]
    paths = []
    for index in range(count):
        rgb = photos[index % len(photos)]()
        path = folder / f"photo_{index:03d}.jpg"
        if not cv2.imwrite(str(path), rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92]):
            raise RuntimeError(f"could not write {path}")
        paths.append(path)
    return paths


def full_detector_checkpoint(folder: Path) -> Path:
    """Full-size R101 C4 with seeded random weights that behave, saved as safetensors."""
    from detector import InferenceOptions, get_preset, save_detector

    bench = bench_detector_module()
    calibration = bench.prepare_jpeg(
        bench.photo_jpeg(0, (600, 800)), get_preset(FULL_PRESET), "calibration"
    )
    detector = bench.behaved_detector(
        InferenceOptions(device="cpu"), fold_bn=False, calibration=calibration
    )
    return save_detector(detector, folder / "r101-random.safetensors")


def detector_seconds(
    checkpoint: str, preset: str | None, paths: Sequence[Path], batch_size: int, device: str
) -> dict[str, float]:
    """The detector alone on the CLI's images: load time and ``detect`` seconds on images
    prepared beforehand, in the CLI's batches (after a warm-up pass)."""
    from detector import load_detector
    from detector.preprocess import prepare

    start = time.perf_counter()
    detector = load_detector(checkpoint, preset=preset, device=device)
    load = time.perf_counter() - start
    prepared = [prepare(str(p), config=detector.config, image_id=p.stem) for p in paths]

    def detect_all() -> None:
        for first in range(0, len(prepared), batch_size):
            detector.detect(prepared[first : first + batch_size], batch_size=batch_size)

    # One warm-up pass: the first call at each input shape pays one-off kernel set-up costs.
    detect_all()
    start = time.perf_counter()
    detect_all()
    return {"load_seconds": load, "detect_seconds": time.perf_counter() - start}


def run_extract(
    *,
    checkpoint: str,
    preset: str | None,
    folder: Path,
    output: Path,
    workers: int,
    batch_size: int,
    images: int,
    device: str,
    extra: Sequence[str] = (),
) -> tuple[float, dict[str, float]]:
    """Wall seconds of one ``extract_features`` run (in this process) over ``folder``, and the
    seconds its manifest records (extraction loop, detector, waiting for images, writing)."""
    from pipeline.commands.extract import main as extract_features
    from pipeline.features.manifest import manifest_path

    argv = [str(folder), "--out", str(output), "--detector", checkpoint, "--overwrite", "-q"]
    argv += ["--workers", str(workers), "--batch-size", str(batch_size), "--device", device]
    argv += list(extra)
    if preset is not None:
        argv += ["--preset", preset]
    start = time.perf_counter()
    status = extract_features(argv)
    wall = time.perf_counter() - start
    manifest = json.loads(manifest_path(output).read_text())
    written = manifest["counts"]["written"]
    if status != 0 or written != images:
        raise RuntimeError(
            f"extract_features {' '.join(argv)} exited {status} with {written}/{images} written"
        )
    return wall, manifest["seconds"]


def bench_extract(
    work: Path,
    *,
    images: int,
    batch_size: int,
    full: bool,
    worker_counts: Sequence[int],
    device: str,
) -> dict[str, Any]:
    """Wall time of ``extract_features`` on ``images`` photos and on one photo (its fixed
    cost: detector load, worker start-up, output and manifest), against the detector alone.

    ``steady_wall_over_detector`` = (wall(N) - wall(1)) / (detector(N) * (N - 1) / N): the
    per-image cost once running, which is what overlapping decode and writing can hide.
    """
    folder, single = work / "photos", work / "one_photo"
    folder.mkdir()
    single.mkdir()
    paths = write_photos(folder, images)
    write_photos(single, 1)
    if full:
        checkpoint, preset = str(full_detector_checkpoint(work)), FULL_PRESET
    else:
        checkpoint, preset = SHAPES_DETECTOR, None
    # Detector first: it also warms this process up, so no CLI run pays first-call costs.
    alone = detector_seconds(checkpoint, preset, paths, batch_size, device)
    detect = alone["detect_seconds"]
    report: dict[str, Any] = {
        "detector": checkpoint if not full else f"R101 C4 random ({FULL_PRESET})",
        "images": images,
        "batch_size": batch_size,
        "detector_load_seconds": round(alone["load_seconds"], 3),
        "detector_seconds": round(detect, 3),
        "detector_images_per_second": round(images / detect, 3),
        "runs": {},
    }
    outputs = []
    for workers in worker_counts:
        common: dict[str, Any] = {
            "checkpoint": checkpoint,
            "preset": preset,
            "workers": workers,
            "device": device,
        }
        output = work / f"features_w{workers}.tsv"
        fixed, _ = run_extract(
            **common,
            folder=single,
            output=work / f"one_w{workers}.tsv",
            batch_size=batch_size,
            images=1,
        )
        wall, seconds = run_extract(
            **common, folder=folder, output=output, batch_size=batch_size, images=images
        )
        outputs.append(output.read_bytes())
        entry = {
            "wall_seconds": round(wall, 3),
            "images_per_second": round(images / wall, 3),
            "wall_over_detector": round(wall / detect, 3),
            "one_image_wall_seconds": round(fixed, 3),
            # Same run, same process: immune to the machine drifting between runs.
            "in_run_seconds": seconds,
            "in_run_loop_over_detector": round(seconds["loop"] / seconds["detector"], 3),
        }
        if images > 1:
            entry["steady_wall_over_detector"] = round(
                (wall - fixed) / (detect * (images - 1) / images), 3
            )
        report["runs"][f"workers_{workers}"] = entry
    report["outputs_identical"] = all(out == outputs[0] for out in outputs)
    return report


def example_copies(folder: Path, count: int) -> None:
    """``count`` images: the scenes of examples/, cycled (copies get a numbered name)."""
    scenes = sorted((ROOT / "examples").glob("scene_*.png"))
    if not scenes:
        raise FileNotFoundError(f"no scene_*.png in {ROOT / 'examples'}; they ship with the repo")
    for index in range(count):
        source = scenes[index % len(scenes)]
        (folder / f"{source.stem}_{index // len(scenes)}.png").write_bytes(source.read_bytes())


def bench_engines(
    work: Path, *, images: int, threads: int, device: str, ray_address: str | None
) -> dict[str, Any]:
    """``extract_features --engine local`` and ``--engine ray`` on the same images at the
    same thread count: wall and in-run images/s of each, and whether the outputs are equal."""
    folder = work / "examples"
    folder.mkdir()
    example_copies(folder, images)
    common = ["--threads", str(threads)]
    address = ["--ray-address", ray_address] if ray_address else []
    report: dict[str, Any] = {"inputs": f"examples/ cycled to {images} images", "runs": {}}
    outputs = []
    for engine, extra in (("local", []), ("ray", ["--actors", "1", *address])):
        output = work / f"features_{engine}.tsv"
        wall, seconds = run_extract(
            checkpoint=SHAPES_DETECTOR,
            preset=None,
            folder=folder,
            output=output,
            workers=0,
            batch_size=1,
            images=images,
            device=device,
            extra=[*common, "--engine", engine, *extra],
        )
        outputs.append(output.read_bytes())
        report["runs"][engine] = {
            "wall_seconds": round(wall, 3),
            "images_per_second": round(images / wall, 3),
            "loop_seconds": seconds["loop"],
            "loop_images_per_second": round(images / seconds["loop"], 3),
            # Ray: summed over the actors, so the images/s once the actors have started.
            "detector_seconds": seconds["detector"],
            "detector_images_per_second": round(images / seconds["detector"], 3),
        }
    local, ray = report["runs"]["local"], report["runs"]["ray"]
    report["ray_over_local_wall"] = round(ray["wall_seconds"] / local["wall_seconds"], 3)
    report["outputs_identical"] = outputs[0] == outputs[1]
    return report


def bench_cold_start(repeats: int, device: str) -> dict[str, Any]:
    """``answer()`` in fresh interpreters: process, import and first-call milliseconds."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                COLD_START_CODE,
                str(ANSWER_IMAGE),
                ANSWER_QUESTION,
                SHAPES_DETECTOR,
                SHAPES_ENCODER,
                device,
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
        process_ms = 1e3 * (time.perf_counter() - start)
        if done.returncode != 0:
            raise RuntimeError(f"cold-start subprocess failed:\n{done.stderr[-2000:]}")
        runs.append({**json.loads(done.stdout.strip().splitlines()[-1]), "process_ms": process_ms})
    result: dict[str, Any] = {
        key: round(statistics.median(run[key] for run in runs), 1)
        for key in ("process_ms", "import_ms", "first_call_ms", "second_call_ms")
    }
    result["repeats"] = repeats
    result["answer"] = runs[0]["answer"]
    return result


def cached_vs_bare(pipeline: Any, regions: list[Any], repeats: int) -> dict[str, float]:
    """``Pipeline.answer_regions`` on cached regions against the bare transformers forward of
    the same model on the same inputs (tokenised and stacked once, outside the timing)."""
    encoder = pipeline.encoder
    inputs = encoder.model_inputs(regions, [ANSWER_QUESTION])

    def bare() -> None:
        with torch.inference_mode():
            encoder.model(**inputs)

    cached, forward = paired_median_ms(
        lambda: pipeline.answer_regions(regions, [ANSWER_QUESTION]), bare, repeats=repeats
    )
    return {
        "cached_regions_ms": round(cached, 2),
        "bare_forward_ms": round(forward, 2),
        "cached_over_bare": round(cached / forward, 3),
    }


def full_size_encoder_pipeline(detector: Any, device: str) -> Any:
    """A Pipeline whose LXMERT has the real size (9/5/5 layers, 768 hidden, 3129 VQA answers)
    with seeded random weights; the detector is only there because Pipeline needs one."""
    from transformers import LxmertConfig

    from encoder import Encoder, EncoderConfig, answer_table_for, build_model, load_tokenizer
    from pipeline.api import Pipeline

    torch.manual_seed(0)
    model = build_model(LxmertConfig(num_qa_labels=3129), head="qa")
    encoder = Encoder(
        config=EncoderConfig(checkpoint="random-lxmert-base-size"),
        model=model,
        tokenizer=load_tokenizer(),
        answers=answer_table_for(3129, "vqa"),
    )
    return Pipeline(detector=detector, encoder=encoder, device=device)


def random_regions(boxes: int, dim: int, seed: int) -> Any:
    """RegionFeatures of a 480x640 image with ``boxes`` random regions (timing only)."""
    from detector import RegionFeatures

    rng = np.random.default_rng(seed)
    corner = rng.uniform(0, 300, (boxes, 2)).astype(np.float32)
    size = rng.uniform(20, 300, (boxes, 2)).astype(np.float32)
    return RegionFeatures(
        image_id="random",
        image_h=480,
        image_w=640,
        boxes=np.concatenate([corner, np.minimum(corner + size, [640, 480])], axis=1).astype(
            np.float32
        ),
        features=rng.random((boxes, dim), dtype=np.float32),
        objects_id=rng.integers(0, 1600, boxes),
        objects_conf=rng.random(boxes, dtype=np.float32),
        attrs_id=rng.integers(0, 400, boxes),
        attrs_conf=rng.random(boxes, dtype=np.float32),
    )


def bench_answer(*, repeats: int, cold_repeats: int, full: bool, device: str) -> dict[str, Any]:
    from pipeline.api import answer, default_pipeline

    report: dict[str, Any] = {
        "image": str(ANSWER_IMAGE.relative_to(ROOT)),
        "question": ANSWER_QUESTION,
        "models": f"{SHAPES_DETECTOR} + {SHAPES_ENCODER}",
        "cold_start": bench_cold_start(cold_repeats, device),
    }
    image = str(ANSWER_IMAGE)
    report["warm_call_ms"] = round(
        median_ms(
            lambda: answer(
                image,
                ANSWER_QUESTION,
                detector=SHAPES_DETECTOR,
                encoder=SHAPES_ENCODER,
                device=device,
            ),
            repeats=repeats,
        ),
        2,
    )
    # The very pipeline answer() cached (one cache entry however the arguments are spelt).
    pipeline = default_pipeline(SHAPES_DETECTOR, SHAPES_ENCODER, device=device)
    regions = pipeline.regions([image])
    report["num_boxes"] = regions[0].num_boxes
    # A 5 ms call: ten times the repeats cost little and steady the median.
    report.update(cached_vs_bare(pipeline, regions, 10 * repeats))
    if full:
        big = full_size_encoder_pipeline(pipeline.detector, device)
        report["full_size_lxmert"] = {
            "model": "LxmertConfig() defaults, random weights, 3129 answers, 36 boxes x 2048",
            **cached_vs_bare(big, [random_regions(36, 2048, seed=0)], repeats),
        }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats (< 60 s)")
    parser.add_argument(
        "--full",
        action="store_true",
        help="full-size R101 detector (seeded random weights, via --detector PATH --preset "
        f"{FULL_PRESET}) and a full-size LXMERT for the cached-regions comparison",
    )
    parser.add_argument(
        "--images",
        type=int,
        default=None,
        help="photos to extract (default: 8 quick, 32 otherwise, 4 with --full)",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="extract_features --batch-size")
    parser.add_argument("--repeats", type=int, default=None, help="warm repeats (default 5/20)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="ray: only compare extract_features --engine local and --engine ray on examples/",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help="with --engine ray: join this cluster (default: start Ray on this machine)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="where the detector and LXMERT run: cpu, cuda, cuda:N or auto (default: cpu)",
    )
    args = parser.parse_args(argv)
    if args.images is not None and args.images < 1:
        parser.error(f"--images must be >= 1, got {args.images}")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if not ANSWER_IMAGE.is_file():
        parser.error(f"{ANSWER_IMAGE} is missing; it ships in examples/ of the repository")
    from weights.defaults import DeviceError, resolve_device

    try:
        device = str(resolve_device(args.device))
    except DeviceError as error:
        parser.error(f"--device {args.device}: {error}")

    if args.threads:
        torch.set_num_threads(args.threads)
    images = args.images or (4 if args.full else 8 if args.quick else 32)
    repeats = args.repeats or (5 if args.quick else 20)
    report: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "quick": args.quick,
        "full": args.full,
        "device": device,
    }
    if device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name(device)
    if args.engine == "ray":
        with tempfile.TemporaryDirectory(prefix="bench_engines_") as work:
            report["engines"] = bench_engines(
                Path(work),
                images=args.images or 8,
                threads=torch.get_num_threads(),
                device=device,
                ray_address=args.ray_address,
            )
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as work:
        report["extract_features"] = bench_extract(
            Path(work),
            images=images,
            batch_size=args.batch_size,
            full=args.full,
            worker_counts=(0, 2),
            device=device,
        )
    report["answer"] = bench_answer(
        repeats=repeats, cold_repeats=2 if args.quick else 3, full=args.full, device=device
    )
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
