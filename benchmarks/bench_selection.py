#!/usr/bin/env python3
"""Bottom-up selection (generate_tsv's per-class NMS) per image: the shortcut against the full NMS.

    python benchmarks/bench_selection.py --images 8

Selection runs on the CPU with numpy, on purpose: its argsort tie order is the reference's
(tools/generate_tsv.py), and the selection must pick the same boxes. On a GPU the network
waits while it runs, so its cost per image is what this prints:

- ``full_ms``: NMS over every class (1600) and every rank (300 proposals), as the reference;
- ``shortcut_ms``: ``select_bottom_up`` as it runs, which first does NMS only for the classes and
  ranks that can reach the confidence threshold (or a lower floor) and falls back to the full
  NMS only when ties or too few boxes make every box's exact value matter;
- ``same``: both chose the same boxes in the same order (they must).

The inputs are synthetic but photo-like: 300 proposals, 1601 classes, each proposal confident
in one of ~60 classes present, the rest spread thin (a random-weight detector's probabilities
are flat, which no trained model gives). LXMERT's 36/36 and the 10..100 default.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from detector.select import _surviving_max_conf, select_bottom_up

NUM_PROPOSALS = 300
NUM_CLASSES = 1600


def photo_like(seed: int, present: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    """Proposals ``[R, 4]`` xyxy raw pixels and class probabilities ``[R, C + 1]``."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 600, (NUM_PROPOSALS, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10, 300, (NUM_PROPOSALS, 2))], axis=1)
    logits = rng.normal(size=(NUM_PROPOSALS, NUM_CLASSES + 1)) * 1.5
    classes = rng.choice(rng.choice(NUM_CLASSES, present, replace=False), NUM_PROPOSALS)
    logits[np.arange(NUM_PROPOSALS), classes] += rng.uniform(2, 10, NUM_PROPOSALS)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return torch.from_numpy(boxes.astype(np.float32)), torch.from_numpy(probs.astype(np.float32))


def full_selection(boxes: torch.Tensor, probs: torch.Tensor, low: int, high: int) -> np.ndarray:
    """The reference's steps with the full NMS (every class, every rank)."""
    scores = np.ascontiguousarray(probs[:, :NUM_CLASSES].numpy().T)
    max_conf = _surviving_max_conf(boxes, scores, 0.3)
    keep = np.where(max_conf >= 0.2)[0]
    if len(keep) < low:
        keep = np.argsort(max_conf)[::-1][:low]
    elif len(keep) > high:
        keep = np.argsort(max_conf)[::-1][:high]
    return keep


def measure(images: int, low: int, high: int) -> dict[str, object]:
    fast = full = 0.0
    same = True
    for seed in range(images):
        boxes, probs = photo_like(seed)
        start = time.perf_counter()
        chosen = select_bottom_up(
            boxes, probs, conf_thresh=0.2, nms_thresh=0.3, min_boxes=low, max_boxes=high
        )
        fast += time.perf_counter() - start
        start = time.perf_counter()
        expected = full_selection(boxes, probs, low, high)
        full += time.perf_counter() - start
        same = same and np.array_equal(chosen.indices.numpy(), expected)
    return {
        "boxes": f"{low}..{high}",
        "shortcut_ms": round(fast / images * 1000, 1),
        "full_ms": round(full / images * 1000, 1),
        "same": same,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    result = {
        "cpu": next((ln.split(":", 1)[1].strip() for ln in lines if "model name" in ln), "?"),
        "load_average": os.getloadavg(),
        "per_image": [measure(args.images, 36, 36), measure(args.images, 10, 100)],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
