#!/usr/bin/env python3
"""Where the detector's time goes: per-stage times, FLOPs, utilisation, throughput, memory.

Runs the full-size ResNet-101 C4 model (seeded random weights that behave: finite activations,
300 proposals per image like the real model) on real photos from scikit-image resized to
600x800 and 600x1000, and prints one JSON document.

    python benchmarks/bench_detector.py --quick          # < 60 s: one size, batch 1
    python benchmarks/bench_detector.py                  # both sizes, batch 1 and 4
    python benchmarks/bench_detector.py --device cuda --precision bf16   # on a GPU
    python benchmarks/bench_detector.py --quick --precision bf16         # CPU with bf16

Utilisation is achieved FLOP/s (2 x fvcore's multiply-adds / detector seconds) over a matmul
peak measured in the same run on the same device, in the precision the convolutions run in.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import io
import json
import platform
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import torch

from detector import Detector, DetectorConfig, InferenceOptions, build_detector, get_preset
from detector.image import load_image
from detector.preprocess import PreparedImage, prepare, preprocess_for
from pipeline.features.output import encode_tsv_line

SIZES = {"600x800": (600, 800), "600x1000": (600, 1000)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, float]:
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - start


def matmul_peak_gflops(
    device: torch.device, *, seconds: float, dtype: torch.dtype = torch.float32
) -> float:
    """Best GFLOP/s of a square ``dtype`` matmul over ``seconds`` (the machine's practical
    peak in that precision: :func:`peak_precision`). 2048^3 on CPU; 8192^3 on CUDA, where a
    smaller one measures launch overhead."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = peak_precision(device, dtype) == "tf32"
    try:
        torch.mm(a, b)
        best = 0.0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            _, elapsed = timed(device, lambda: torch.mm(a, b))
            best = max(best, 2 * n**3 / elapsed / 1e9)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    return best


def peak_precision(device: torch.device, dtype: torch.dtype) -> str:
    """The precision the detector's convolutions really run in, which the peak is measured
    in: on CUDA, fp32 convolutions run in TF32 while ``torch.backends.cudnn.allow_tf32`` is on
    (PyTorch's default), so an fp32 peak with TF32 off would overstate utilisation."""
    if device.type == "cuda" and dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def behaved_detector(
    options: InferenceOptions, *, fold_bn: bool, calibration: PreparedImage
) -> Detector:
    """Full-size model with seeded weights, RPN calibrated on a photo so that its objectness
    and deltas spread like a trained one's and ~300 proposals survive NMS, as with real weights;
    run with ``options`` (BN folded unless ``fold_bn`` is False, e.g. to save it).
    """
    detector = build_detector(get_preset("vg-r101-c4-attr"), seed=0)
    head = detector.proposal_generator.rpn_head
    with torch.inference_mode():
        logits, deltas = head(detector.backbone(calibration.tensor[None]))
    with torch.no_grad():
        head.objectness_logits.weight.mul_(2.0 / logits.std())
        head.anchor_deltas.weight.mul_(0.3 / deltas.std())
    if fold_bn:
        return detector.optimize_for_inference(options)
    return detector.apply_options(options).eval()


def photo_jpeg(index: int, size: tuple[int, int]) -> bytes:
    from skimage import data

    photos = [data.astronaut, data.coffee, data.chelsea, data.rocket]
    rgb = photos[index % len(photos)]()
    h, w = size
    resized = cv2.resize(rgb[:, :, ::-1], (w, h), interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", resized, [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return encoded.tobytes()


def prepare_jpeg(jpeg: bytes, config: DetectorConfig, image_id: str) -> PreparedImage:
    return prepare(jpeg, config=config, image_id=image_id)


def count_macs(
    detector: Detector, prepared: PreparedImage, device: torch.device
) -> dict[str, float]:
    """Multiply-adds per image by fvcore: trunk, RPN head, res5 + predictors on the proposals."""
    from fvcore.nn import FlopCountAnalysis

    x = prepared.tensor[None].to(device)
    with torch.no_grad():
        trunk = FlopCountAnalysis(detector.backbone, x)
        trunk.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        features = detector.backbone(x)
        rpn = FlopCountAnalysis(detector.proposal_generator.rpn_head, features)
        rpn.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        proposals = detector.proposal_generator(features, prepared.resized_size).proposals
        # res5 cost is linear in the regions: count one region, multiply (tracing 300 would
        # cost a full res5 pass).
        pooled = detector.roi_heads.pool(features, [proposals[0][:1]])
        res5 = FlopCountAnalysis(detector.roi_heads.res5, pooled)
        res5.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        regions = len(proposals[0])
        return {
            "trunk": trunk.total() / 1e9,
            "rpn_head": rpn.total() / 1e9,
            "res5": res5.total() * regions / 1e9,
            "proposals": float(regions),
        }


def bench_stages(
    detector: Detector, jpeg: bytes, image_id: str, device: torch.device
) -> dict[str, float]:
    """Seconds per stage for one image, batch 1, each stage run as ``Detector.forward_raw``
    runs it (same options: layout, precision, res5 chunk); writing is the pipeline's own TSV
    encoder (:func:`pipeline.features.output.encode_tsv_line`)."""
    config = detector.config
    options = detector.options
    times: dict[str, float] = {}
    image, times["decode"] = timed(device, lambda: load_image(jpeg))
    prepared, times["preprocess"] = timed(
        device,
        lambda: preprocess_for(image, config, image_id=image_id),
    )
    with torch.inference_mode():
        x = prepared.tensor[None].to(device)
        if options.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with detector.low_precision():
            features, times["trunk"] = timed(device, lambda: detector.backbone(x))
            rpn, times["rpn"] = timed(
                device, lambda: detector.proposal_generator(features, prepared.resized_size)
            )
        pooled, times["roi_pool"] = timed(
            device, lambda: detector.roi_heads.pool(features, rpn.proposals)
        )
        if options.channels_last:
            pooled = pooled.contiguous(memory_format=torch.channels_last)

        def head() -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
            region = detector.roi_heads.region_features(
                pooled, chunk_size=options.res5_chunk, conv_dtype=options.precision_dtype
            )
            return region, detector.roi_heads.box_predictor(region)

        (region, (logits, deltas, attr_logits)), times["res5_head"] = timed(device, head)
        regions, times["selection"] = timed(
            device,
            lambda: detector.select_regions(
                prepared, rpn.proposals[0], region, logits.float(), deltas.float(), attr_logits
            ),
        )
    _, times["writing"] = timed(device, lambda: io.BytesIO().write(encode_tsv_line(regions)))
    times["proposals"] = float(len(rpn.proposals[0]))
    return times


def bench_throughput(
    detector: Detector, prepared: list[PreparedImage], batch_size: int, device: torch.device
) -> float:
    """Images per second of ``Detector.detect`` at ``batch_size`` (after one warm-up batch)."""
    detector.detect(prepared[:batch_size], batch_size=batch_size)
    _, elapsed = timed(device, lambda: detector.detect(prepared, batch_size=batch_size))
    return len(prepared) / elapsed


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="one 600x800 image, no throughput runs (< 60 s)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:i (default: cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--channels-last",
        choices=("auto", "on", "off"),
        default="auto",
        help="memory format of the convs (default: the library's per-device choice)",
    )
    parser.add_argument("--no-fold-bn", action="store_true", help="keep frozen BN separate")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="the detector's precision (fp16: CUDA only)",
    )
    parser.add_argument(
        "--allow-emulated-bf16",
        action="store_true",
        help="run bf16 on a CPU without bf16 instructions (slow; for drift, not speed)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the trunk and res5 head"
    )
    parser.add_argument(
        "--res5-chunk",
        type=int,
        default=None,
        help="regions per res5 pass (default: the library's per-device choice)",
    )
    parser.add_argument("--images", type=int, default=4, help="images per throughput run")
    return parser.parse_args(argv)


def inference_options(args: argparse.Namespace) -> InferenceOptions:
    """The detector's options from the flags (None: the library's per-device default)."""
    return InferenceOptions(
        device=args.device,
        precision=args.precision,
        allow_emulated_bf16=args.allow_emulated_bf16,
        channels_last={"auto": None, "on": True, "off": False}[args.channels_last],
        res5_chunk=args.res5_chunk,
        compile=args.compile,
    )


def bench_size(
    detector: Detector,
    size: tuple[int, int],
    label: str,
    *,
    args: argparse.Namespace,
    peak: float,
    counting: Detector,
) -> dict[str, Any]:
    """Stage times, FLOPs, utilisation against ``peak`` and throughput at one image size;
    FLOPs are counted on ``counting``, the same model never compiled (fvcore's trace refuses a
    compiled module)."""
    device = detector.options.device
    jpegs = [photo_jpeg(i, size) for i in range(args.images)]
    if not args.quick:
        bench_stages(detector, jpegs[0], "warmup", device)
    stages = bench_stages(detector, jpegs[1 % len(jpegs)], label, device)
    prepared = [prepare_jpeg(jpeg, detector.config, f"{label}-{i}") for i, jpeg in enumerate(jpegs)]
    macs = count_macs(counting, prepared[1 % len(prepared)], device)
    detector_seconds = sum(
        stages[k] for k in ("trunk", "rpn", "roi_pool", "res5_head", "selection")
    )
    gmacs = macs["trunk"] + macs["rpn_head"] + macs["res5"]
    entry: dict[str, Any] = {
        "resized": list(prepared[0].resized_size),
        "stage_seconds": {k: round(v, 4) for k, v in stages.items() if k != "proposals"},
        "proposals": int(stages["proposals"]),
        "gmac": {k: round(v, 1) for k, v in macs.items() if k != "proposals"},
        "detector_seconds": round(detector_seconds, 3),
        "achieved_gflops": round(2 * gmacs / detector_seconds, 1),
        "utilisation_pct": round(100 * 2 * gmacs / detector_seconds / peak, 1),
        "selection_pct_of_detector": round(100 * stages["selection"] / detector_seconds, 2),
        "images_per_second": {},
        "peak_rss_mb_after_batch1": round(peak_rss_mb(), 1),
    }
    if args.quick:
        total = sum(v for k, v in stages.items() if k != "proposals")
        entry["images_per_second"]["1"] = round(1.0 / total, 4)
        return entry
    for batch_size in (1, 4):
        entry["images_per_second"][str(batch_size)] = round(
            bench_throughput(detector, prepared, batch_size, device), 4
        )
    return entry


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = get_preset("vg-r101-c4-attr")
    calibration = prepare_jpeg(photo_jpeg(0, SIZES["600x800"]), config, "calibration")
    requested = inference_options(args)
    detector = behaved_detector(
        dataclasses.replace(requested, compile=False),
        fold_bn=not args.no_fold_bn,
        calibration=calibration,
    )
    # fvcore traces with torch.jit, which refuses a compiled module: count FLOPs on an
    # uncompiled copy (same weights, so the same proposals), time the compiled one.
    counting = copy.deepcopy(detector) if requested.compile else detector
    detector.apply_options(requested)
    options = detector.options
    device = options.device
    dtype = options.precision_dtype or torch.float32
    peak = matmul_peak_gflops(device, seconds=1.0 if args.quick else 3.0, dtype=dtype)
    sizes = {"600x800": SIZES["600x800"]} if args.quick else SIZES
    report: dict[str, Any] = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "fold_bn": detector.bn_folded,
        "channels_last": options.channels_last,
        "res5_chunk": options.res5_chunk,
        "precision": options.precision,
        "compile": options.compile,
        "matmul_peak_gflops": round(peak, 1),
        "matmul_peak_precision": peak_precision(device, dtype),
        "sizes": {
            label: bench_size(detector, size, label, args=args, peak=peak, counting=counting)
            for label, size in sizes.items()
        },
    }
    # The peak is measured again after the runs and the best kept: turbo and neighbours make
    # a single short measurement noisy, and a low peak would inflate the utilisation.
    final_peak = max(
        peak, matmul_peak_gflops(device, seconds=1.0 if args.quick else 3.0, dtype=dtype)
    )
    if final_peak > peak:
        report["matmul_peak_gflops"] = round(final_peak, 1)
        for entry in report["sizes"].values():
            entry["utilisation_pct"] = round(entry["achieved_gflops"] / final_peak * 100, 1)
    report["peak_rss_mb"] = round(peak_rss_mb(), 1)
    if device.type == "cuda":
        report["cuda_peak_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())
