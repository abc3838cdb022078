#!/usr/bin/env python3
"""Bottom-up selection (generate_tsv's per-class NMS) per image: the shortcut against the full NMS.

    python benchmarks/bench_selection.py --images 8

Selection runs on the CPU with numpy, on purpose: its argsort tie order is the reference's
(tools/generate_tsv.py, numpy 1.x's introsort: detector/reference_sort.py), and the selection
must pick the same boxes. On a GPU the network waits while it runs, so its cost per image is
what this prints (medians over the images and repeats):

- ``full_ms``: NMS over every class (1600) and every rank (300 proposals), as the reference;
- ``shortcut_ms``: ``select_bottom_up`` as it runs, which first does NMS only for the classes and
  ranks that can reach the confidence threshold (or a lower floor) and falls back to the full
  NMS only when ties or too few boxes make every box's exact value matter;
- ``tie_heavy_ms``: ``select_bottom_up`` on inputs where many boxes score exactly 1.0 in a few
  classes, which the shortcut declines by design: the full path, ties in every sort;
- ``same``: shortcut and full chose the same boxes in the same order (they must).

The photo-like inputs are synthetic: 300 proposals, 1601 classes, each proposal confident
in one of ~60 classes present, the rest spread thin (a random-weight detector's probabilities
are flat, which no trained model gives). LXMERT's 36/36 and the 10..100 default.

The script runs on commits before the reference sort too (it then ranks with numpy's own
argsort), so before/after figures come from the same file: run it alternately in a worktree
of the old commit and here, and compare medians.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np
import torch
from bench_startup import cpu_model

from detector.select import _surviving_max_conf, select_bottom_up

try:
    from detector.reference_sort import argsort
except ImportError:  # a commit before the reference sort
    argsort = np.argsort  # type: ignore[assignment]  # (numpy's wider signature)

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


def tie_heavy(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`photo_like` with half the proposals scoring exactly 1.0 in one of 5 classes."""
    boxes, probs = photo_like(seed)
    rng = np.random.default_rng(seed + 1000)
    confident = np.flatnonzero(rng.random(NUM_PROPOSALS) < 0.5)
    probs[confident] = 0.0
    probs[confident, torch.from_numpy(rng.integers(0, 5, len(confident)))] = 1.0
    return boxes, probs


def full_selection(boxes: torch.Tensor, probs: torch.Tensor, low: int, high: int) -> np.ndarray:
    """The reference's steps with the full NMS (every class, every rank)."""
    scores = np.ascontiguousarray(probs[:, :NUM_CLASSES].numpy().T)
    max_conf = _surviving_max_conf(boxes, scores, 0.3)
    keep = np.where(max_conf >= 0.2)[0]
    if len(keep) < low:
        keep = argsort(max_conf)[::-1][:low]
    elif len(keep) > high:
        keep = argsort(max_conf)[::-1][:high]
    return keep


def measure(images: int, repeats: int, low: int, high: int) -> dict[str, object]:
    times: dict[str, list[float]] = {"shortcut_ms": [], "full_ms": [], "tie_heavy_ms": []}
    same = True
    kwargs: dict[str, Any] = {
        "conf_thresh": 0.2,
        "nms_thresh": 0.3,
        "min_boxes": low,
        "max_boxes": high,
    }
    for _ in range(repeats):
        for seed in range(images):
            boxes, probs = photo_like(seed)
            start = time.process_time()
            chosen = select_bottom_up(boxes, probs, **kwargs)
            times["shortcut_ms"].append(time.process_time() - start)
            start = time.process_time()
            expected = full_selection(boxes, probs, low, high)
            times["full_ms"].append(time.process_time() - start)
            same = same and np.array_equal(chosen.indices.numpy(), expected)
            boxes, probs = tie_heavy(seed)
            start = time.process_time()
            select_bottom_up(boxes, probs, **kwargs)
            times["tie_heavy_ms"].append(time.process_time() - start)
    medians = {name: round(float(np.median(values)) * 1000, 1) for name, values in times.items()}
    return {"boxes": f"{low}..{high}", **medians, "same": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1, help="passes over the images")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {
        "cpu": cpu_model(),
        "load_average": os.getloadavg(),
        "per_image": [
            measure(args.images, args.repeats, 36, 36),
            measure(args.images, args.repeats, 10, 100),
        ],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
