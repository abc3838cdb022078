#!/usr/bin/env python3
"""fp32 against bf16 in one run: speed, matmul peaks, CPU flags, and the drift bf16 causes.

    python benchmarks/bench_precision.py --threads 2                # ~3 min on a 2-core box
    python benchmarks/bench_precision.py --allow-emulated-bf16      # drift on any CPU (slow)

Prints one JSON document:

- ``machine``: CPU model, the bf16-relevant flags of /proc/cpuinfo, threads, load averages at
  the start and the end (the box may be shared);
- ``matmul_peak_gflops``: best 2048^3 matmul GFLOP/s in fp32 and in bf16;
- ``speed``: detector seconds per image (``Detector.detect``, batch 1, after a warm-up image)
  of the full ResNet-101 preset with seeded random weights (bench_detector's calibrated RPN,
  300 proposals) in fp32 and in bf16, the same weights, images alternating;
- ``given_boxes``: the same R101 on the fp32 run's proposals of each photo in both
  precisions, so only arithmetic differs: per-box feature cosine and relative L2 difference,
  and the worst element difference relative to the largest fp32 feature;
- ``full_run_random_weights``: boxes of the two full runs matched at IoU >= 0.9 (random
  weights compare near-ties here: not a quality figure);
- ``shapes_world``: the trained shapes models on held-out scenes (shapesworld.evaluate:
  detector mAP@0.5, attribute accuracy, VQA accuracy) in both precisions, plus box matching
  and object-id agreement of the pipeline's regions, where the model is trained.

Speed means something only where bf16 runs natively (avx512_bf16/AMX, or a GPU); with
``--allow-emulated-bf16`` the drift figures hold, the bf16 seconds do not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_detector import SIZES, behaved_detector, matmul_peak_gflops, photo_jpeg, prepare_jpeg

from detector import Detector, InferenceOptions, RegionFeatures, get_preset
from detector.boxes import pairwise_iou
from detector.precision import Precision
from detector.preprocess import PreparedImage

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
PRECISIONS: tuple[Precision, Precision] = ("fp32", "bf16")
REPO = Path(__file__).resolve().parents[1]


def machine(threads: int) -> dict[str, Any]:
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                flags.update(value.split())
            elif key.strip() == "model name":
                model = value.strip()
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "flags": {flag: flag in flags for flag in CPU_FLAGS},
        "threads": threads,
        "torch": torch.__version__,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def options(precision: Precision, args: argparse.Namespace) -> InferenceOptions:
    return InferenceOptions(precision=precision, allow_emulated_bf16=args.allow_emulated_bf16)


def bench_speed(
    detector: Detector, prepared: list[PreparedImage], args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, list[RegionFeatures]]]:
    """Seconds per image of ``detect`` in each precision, images alternating fp32/bf16."""
    seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    regions: dict[str, list[RegionFeatures]] = {"fp32": [], "bf16": []}
    for precision in PRECISIONS:  # warm-up: first-call allocations, oneDNN kernel choice
        detector.apply_options(options(precision, args)).detect(prepared[:1])
    for image in prepared[1:]:
        for precision in PRECISIONS:
            detector.apply_options(options(precision, args))
            start = time.perf_counter()
            (result,) = detector.detect([image])
            seconds[precision].append(time.perf_counter() - start)
            regions[precision].append(result)
    report: dict[str, Any] = {
        p: {"seconds_per_image": round(float(np.mean(s)), 3), "each": [round(x, 3) for x in s]}
        for p, s in seconds.items()
    }
    report["speedup_bf16"] = round(
        report["fp32"]["seconds_per_image"] / report["bf16"]["seconds_per_image"], 2
    )
    return report, regions


def feature_drift(low: torch.Tensor, exact: torch.Tensor) -> dict[str, float]:
    """``[R, D]`` features of the same boxes: cosine and relative differences per box."""
    cosine = F.cosine_similarity(low, exact, dim=1)
    relative = (low - exact).norm(dim=1) / exact.norm(dim=1).clamp_min(1e-12)
    return {
        "boxes": len(exact),
        "cosine_min": round(float(cosine.min()), 6),
        "cosine_mean": round(float(cosine.mean()), 6),
        "relative_l2_max": round(float(relative.max()), 5),
        "relative_l2_mean": round(float(relative.mean()), 5),
        "max_abs_over_max_feature": round(float((low - exact).abs().max() / exact.abs().max()), 5),
    }


@torch.inference_mode()
def given_boxes_drift(
    detector: Detector, prepared: list[PreparedImage], args: argparse.Namespace
) -> dict[str, Any]:
    """Both precisions on the fp32 proposals of each image: only arithmetic differs."""
    low, exact, logits_low, logits_exact = [], [], [], []
    for image in prepared:
        x = image.tensor[None]
        reference = detector.apply_options(options("fp32", args)).forward_raw(x)
        boxes = reference.rpn.proposals
        ours = detector.apply_options(options("bf16", args)).forward_raw(x, proposals=boxes)
        exact.append(reference.roi.features)
        low.append(ours.roi.features)
        logits_exact.append(reference.roi.class_logits.softmax(dim=1))
        logits_low.append(ours.roi.class_logits.softmax(dim=1))
    report = feature_drift(torch.cat(low), torch.cat(exact))
    report["class_prob_max_abs_diff"] = round(
        float((torch.cat(logits_low) - torch.cat(logits_exact)).abs().max()), 6
    )
    return report


def match_regions(low: list[RegionFeatures], exact: list[RegionFeatures]) -> dict[str, float]:
    """Share of fp32 boxes with a bf16 box at IoU >= 0.9 (best match), and of those the share
    with the same object id."""
    matched = agree = total = 0
    for a, b in zip(low, exact, strict=True):
        iou = pairwise_iou(torch.from_numpy(b.boxes), torch.from_numpy(a.boxes))
        best, index = iou.max(dim=1) if iou.numel() else (torch.zeros(0), torch.zeros(0))
        hit = best >= 0.9
        total += len(b.boxes)
        matched += int(hit.sum())
        same = a.objects_id[index[hit].numpy()] == b.objects_id[hit.numpy()]
        agree += int(same.sum())
    return {
        "boxes": total,
        "matched_iou_0_9": round(matched / max(total, 1), 4),
        "object_id_agreement_of_matched": round(agree / max(matched, 1), 4),
    }


def shapes_world(args: argparse.Namespace) -> dict[str, Any]:
    from encoder.build import load_encoder
    from shapesworld.evaluate import detect_standard, evaluate_detections, evaluate_vqa
    from shapesworld.models import load_trained_detector, prepare_scene
    from shapesworld.scenes import make_split

    detector = load_trained_detector(REPO / "weights/shipped/shapes-detector")
    encoder = load_encoder(REPO / "weights/shipped/shapes-lxmert")
    scenes = make_split("heldout", args.scenes)
    report: dict[str, Any] = {"split": "heldout", "scenes": len(scenes)}
    regions: dict[str, list[RegionFeatures]] = {}
    for precision in PRECISIONS:
        detector.apply_options(options(precision, args))
        metrics = evaluate_detections(scenes, [detect_standard(detector, s) for s in scenes])
        vqa = evaluate_vqa(detector, encoder, scenes)
        report[precision] = {
            "map50": round(metrics.map50, 4),
            "attribute_accuracy": round(metrics.attribute_accuracy, 4),
            "vqa_accuracy": round(vqa.accuracy, 4),
        }
        with torch.inference_mode():
            prepared = [prepare_scene(s, detector.config) for s in scenes]
            regions[precision] = detector.detect(prepared)
    report["drop_bf16"] = {
        k: round(report["fp32"][k] - report["bf16"][k], 4) for k in report["fp32"]
    }
    report["regions"] = match_regions(regions["bf16"], regions["fp32"])
    return report


def progress(report: dict[str, Any], key: str, started: float) -> None:
    """Each part on stderr as it ends (a long run killed midway keeps what it measured)."""
    report.setdefault("part_seconds", {})[key] = round(time.perf_counter() - started, 1)
    print(json.dumps({key: report[key]}), file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--images", type=int, default=2, help="timed photos (after a warm-up)")
    parser.add_argument("--scenes", type=int, default=100, help="held-out shapes scenes")
    parser.add_argument(
        "--allow-emulated-bf16",
        action="store_true",
        help="run bf16 on a CPU without bf16 instructions (drift only; its speed means nothing)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"machine": machine(torch.get_num_threads())}
    cpu = torch.device("cpu")
    report["matmul_peak_gflops"] = {
        "fp32": round(matmul_peak_gflops(cpu, seconds=2.0), 1),
        "bf16": round(matmul_peak_gflops(cpu, seconds=2.0, dtype=torch.bfloat16), 1),
    }
    config = get_preset("vg-r101-c4-attr")
    size = SIZES["600x800"]
    prepared = [prepare_jpeg(photo_jpeg(i, size), config, f"photo-{i}") for i in range(4)]
    detector = behaved_detector(options("fp32", args), fold_bn=True, calibration=prepared[0])
    timed_images = prepared[: args.images + 1]
    started = time.perf_counter()
    report["speed"], regions = bench_speed(detector, timed_images, args)
    report["speed"]["resized"] = list(prepared[0].resized_size)
    progress(report, "speed", started)
    started = time.perf_counter()
    report["given_boxes"] = given_boxes_drift(detector, timed_images[1:], args)
    report["full_run_random_weights"] = match_regions(regions["bf16"], regions["fp32"])
    progress(report, "given_boxes", started)
    started = time.perf_counter()
    report["shapes_world"] = shapes_world(args)
    progress(report, "shapes_world", started)
    report["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
