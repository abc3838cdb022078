#!/usr/bin/env python3
"""bf16 on the CPU: fp32 against bf16 with NCHW and with channels_last convolutions.

    python benchmarks/bench_bf16_layout.py --threads 1 --rounds 3

The full R101 detector (seeded random weights, bench_detector's calibrated RPN, 300 proposals)
on one 600x800 photo, the three settings alternating for ``--rounds`` rounds after a warm-up,
so that all see the same load; prints the fastest round of each (the least disturbed by other
jobs on a shared machine) and the matmul peaks of fp32 and bf16 at the same thread count.
oneDNN's bf16 convolutions (AMX, AVX-512 BF16) are NHWC kernels: with NCHW tensors every conv
pays a reorder, which is why ``--precision bf16`` runs channels_last on the CPU. Speed means
something only on a CPU with bf16 instructions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_detector import SIZES, behaved_detector, matmul_peak_gflops, photo_jpeg, prepare_jpeg

from detector import InferenceOptions, get_preset
from detector.precision import cpu_bf16_instructions

SETTINGS = {
    "fp32": InferenceOptions(),
    "bf16_nchw": InferenceOptions(precision="bf16", channels_last=False, allow_emulated_bf16=True),
    "bf16_channels_last": InferenceOptions(precision="bf16", allow_emulated_bf16=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = get_preset("vg-r101-c4-attr")
    photos = [prepare_jpeg(photo_jpeg(i, SIZES["600x800"]), config, f"photo-{i}") for i in range(2)]
    detector = behaved_detector(SETTINGS["fp32"], fold_bn=True, calibration=photos[0])
    for options in SETTINGS.values():  # warm-up: first-call allocations, oneDNN kernel choice
        detector.apply_options(options).detect(photos[:1])
    seconds: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):
        for name, options in SETTINGS.items():
            detector.apply_options(options)
            start = time.perf_counter()
            detector.detect(photos[1:])
            seconds[name].append(round(time.perf_counter() - start, 3))
    cpu = torch.device("cpu")
    report = {
        "bf16_instructions": list(cpu_bf16_instructions()),
        "threads": args.threads,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "seconds_per_image": seconds,
        "fastest": {name: min(values) for name, values in seconds.items()},
        "matmul_peak_gflops": {
            "fp32": round(matmul_peak_gflops(cpu, seconds=2.0), 1),
            "bf16": round(matmul_peak_gflops(cpu, seconds=2.0, dtype=torch.bfloat16), 1),
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
