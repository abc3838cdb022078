"""Child process of test_simd_independence: computes outputs under whatever SIMD limits its
environment sets, after checking that those limits really hold.

    python tests/detector/simd_child.py synthetic OUT.npz
    python tests/detector/simd_child.py extract OUT.tsv IMAGE...

numpy ignores names in ``NPY_DISABLE_CPU_FEATURES`` that it does not dispatch, without a word,
so the child first asserts that every group named there is off, and that torch runs at the
DEFAULT capability when ``ATEN_CPU_CAPABILITY=default`` asks for it.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
from numpy._core._multiarray_umath import __cpu_features__


def check_limits() -> None:
    for group in os.environ.get("NPY_DISABLE_CPU_FEATURES", "").replace(",", " ").split():
        assert __cpu_features__.get(group) is False, f"numpy still dispatches {group}"
    if os.environ.get("ATEN_CPU_CAPABILITY") == "default":
        capability = torch.backends.cpu.get_cpu_capability()
        assert capability == "DEFAULT", f"torch runs at {capability}"


def tie_heavy_proposals(seed: int) -> dict[str, np.ndarray]:
    """caffe_proposals on objectness logits from a few values either side of ~16.6."""
    from detector.proposals import caffe_cell_anchors, caffe_proposals
    from detector.rpn import AnchorGenerator

    rng = np.random.default_rng(seed)
    sizes, ratios = (64.0, 128.0, 256.0, 512.0), (0.5, 1.0, 2.0)
    values = np.float32([-3.0, 0.0, 15.0, 16.5, 16.7, 17.0, 18.0, 25.0])
    logits = rng.choice(values, size=(38, 50, 4, 3)) + rng.normal(0, 0.01, (38, 50, 4, 3)) * (
        rng.random((38, 50, 4, 3)) < 0.2
    )
    deltas = rng.normal(0, 0.2, (38, 50, 4, 3, 4))
    cell = caffe_cell_anchors(base_size=16, sizes=sizes, ratios=ratios)
    boxes, kept = caffe_proposals(
        torch.from_numpy(logits.astype(np.float32).reshape(-1)),
        torch.from_numpy(deltas.astype(np.float32).reshape(-1, 4)),
        AnchorGenerator(sizes=sizes, ratios=ratios, stride=16)(38, 50, cell=cell),
        image_size=(600, 800),
        im_scale=1.25,
        num_sizes=4,
        num_ratios=3,
        pre_nms_topk=6000,
        post_nms_topk=300,
        nms_thresh=0.7,
    )
    return {f"proposals_{seed}": boxes.numpy(), f"proposal_logits_{seed}": kept.numpy()}


def tie_heavy_selection(seed: int) -> dict[str, np.ndarray]:
    """select_bottom_up on class probabilities where many boxes score exactly 1.0 or 0.5, and
    the attribute softmax on random logits."""
    from detector.select import attributes_from_probs, select_bottom_up

    rng = np.random.default_rng(seed)
    rows, classes = 300, 400
    xy = rng.uniform(0, 500, (rows, 2))
    boxes = np.round(np.concatenate([xy, xy + rng.uniform(20, 200, (rows, 2))], axis=1))
    probs = rng.dirichlet(np.full(classes + 1, 0.05), rows)
    confident = rng.random(rows) < 0.6
    best = rng.integers(0, 5, rows)[confident]  # few classes, many boxes each
    probs[confident] = 0.0
    probs[confident, best] = rng.choice([1.0, 0.5], confident.sum())
    probs[confident, classes] = 1.0 - probs[confident, best]
    out = {}
    for low, high in ((36, 36), (10, 100)):
        chosen = select_bottom_up(
            torch.from_numpy(boxes.astype(np.float32)),
            torch.from_numpy(probs.astype(np.float32)),
            conf_thresh=0.2,
            nms_thresh=0.3,
            min_boxes=low,
            max_boxes=high,
        )
        out[f"selection_{seed}_{low}"] = chosen.indices.numpy()
    attr_ids, attr_conf = attributes_from_probs(
        torch.from_numpy(rng.normal(0, 4, (rows, 401)).astype(np.float32)), renormalize=False
    )
    out[f"attr_ids_{seed}"] = attr_ids.numpy()
    out[f"attr_conf_{seed}"] = attr_conf.numpy()
    return out


def decoded_boxes(seed: int) -> dict[str, np.ndarray]:
    """apply_deltas (Detectron2's proposals and max-class boxes) on random deltas."""
    from detector.boxes import BOX_HEAD_WEIGHTS, apply_deltas

    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 500, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 300, (300, 2))], axis=1)
    deltas = rng.normal(0, 1.0, (300, 4 * 50))
    decoded = apply_deltas(
        torch.from_numpy(deltas.astype(np.float32)),
        torch.from_numpy(boxes.astype(np.float32)),
        weights=BOX_HEAD_WEIGHTS,
    )
    return {f"decoded_{seed}": decoded.numpy()}


def synthetic(out_path: str) -> None:
    arrays: dict[str, np.ndarray] = {}
    for seed in (0, 1):
        arrays.update(tie_heavy_proposals(seed))
        arrays.update(tie_heavy_selection(seed))
        arrays.update(decoded_boxes(seed))
    np.savez(out_path, **arrays)


def extract(out_path: str, images: list[str]) -> None:
    from pipeline.commands.extract import main

    code = main([*images, "--detector", "shapes-detector", "-o", out_path, "-q"])
    assert code == 0, f"extract_features exited {code}"


if __name__ == "__main__":
    check_limits()
    torch.set_num_threads(1)
    if sys.argv[1] == "synthetic":
        synthetic(sys.argv[2])
    else:
        extract(sys.argv[2], sys.argv[3:])
