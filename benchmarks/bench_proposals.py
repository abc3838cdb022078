#!/usr/bin/env python3
"""The Caffe proposal layer (detector.proposals.caffe_proposals) per image, on the CPU.

    python benchmarks/bench_proposals.py --images 5 --repeats 3

It runs in numpy on every image of a bottom-up run (sort of every anchor's fg probability,
top 6000, cpu_nms, keep 300), so its time is added to each image's. The inputs are synthetic
RPN outputs of a 600 x 1000 image (38 x 63 cells, 12 anchors: 28,728 anchors): objectness
logits spread wide enough that confident anchors saturate to probability 1.0 and tie, as a
trained RPN's do, and small deltas. Prints the median per image over images and repeats.

Only names that existed before the reference sort are used, so the same file times an older
commit too (run it alternately in a worktree of that commit and here, and compare medians).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from bench_startup import cpu_model

from detector.proposals import caffe_cell_anchors, caffe_proposals
from detector.rpn import AnchorGenerator

SIZES = (64.0, 128.0, 256.0, 512.0)
RATIOS = (0.5, 1.0, 2.0)
GRID = (38, 63)  # feature map of a 600 x 1000 image at stride 16


def rpn_outputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[M]`` (about 3% above 16.6, where probabilities saturate) and deltas ``[M, 4]``."""
    rng = np.random.default_rng(seed)
    height, width = GRID
    logits = rng.normal(0.0, 8.0, (height, width, 4, 3)).astype(np.float32)
    deltas = rng.normal(0.0, 0.3, (height, width, 4, 3, 4)).astype(np.float32)
    return torch.from_numpy(logits.reshape(-1)), torch.from_numpy(deltas.reshape(-1, 4))


def measure(images: int, repeats: int) -> dict[str, object]:
    cell = caffe_cell_anchors(base_size=16, sizes=SIZES, ratios=RATIOS)
    anchors = AnchorGenerator(sizes=SIZES, ratios=RATIOS, stride=16)(*GRID, cell=cell)
    inputs = [rpn_outputs(seed) for seed in range(images)]
    times = []
    kept = []
    for _ in range(repeats):
        for logits, deltas in inputs:
            start = time.process_time()
            boxes, _ = caffe_proposals(
                logits,
                deltas,
                anchors,
                image_size=(600, 1000),
                im_scale=1.6,
                num_sizes=len(SIZES),
                num_ratios=len(RATIOS),
                pre_nms_topk=6000,
                post_nms_topk=300,
                nms_thresh=0.7,
            )
            times.append(time.process_time() - start)
            kept.append(len(boxes))
    saturated = int(sum(int((logits > 16.6).sum()) for logits, _ in inputs) / images)
    return {
        "anchors": int(anchors.shape[0]),
        "saturated_per_image": saturated,
        "kept_per_image": int(np.median(kept)),
        "median_ms": round(float(np.median(times)) * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="passes over the images")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {
        "cpu": cpu_model(),
        "load_average": os.getloadavg(),
        "per_image": measure(args.images, args.repeats),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
