"""Measured quality of the shapes-world models on held-out scenes.

    python -m shapesworld.evaluate --detector weights/shipped/shapes-detector \
        --lxmert weights/shipped/shapes-lxmert --split heldout --count 200

Detector: mAP@0.5 over the shape classes (VOC all-point AP per class, averaged) of the
standard Faster R-CNN test output (class-specific regressed boxes, score > 0.05, per-class NMS
at 0.5, at most 100 per image); attribute accuracy over the ground-truth objects that a
detection matched at IoU >= 0.5 (the attribute of that detection's region, the attribute head
fed the predicted class, as at inference). VQA: the pipeline's path (the detector's regions ->
LXMERT QA head -> argmax answer), accuracy overall and per question kind.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torchvision.ops import batched_nms

from detector.boxes import BOX_HEAD_WEIGHTS, apply_deltas, clip_boxes, pairwise_iou
from detector.model import Detector
from detector.structures import RegionFeatures
from shapesworld.models import load_trained_detector, prepare_scene
from shapesworld.questions import scene_questions
from shapesworld.scenes import Scene, make_split
from shapesworld.vocab import QUESTION_KINDS, SHAPES

if TYPE_CHECKING:
    # transformers loads only when VQA is evaluated.
    from encoder.build import Encoder


@dataclass(frozen=True, eq=False)
class Detections:
    """Standard detections of one image.

    Attributes:
        boxes: float32 ``[K, 4]`` xyxy, raw-image pixels.
        scores: float32 ``[K]`` class probabilities.
        classes: int64 ``[K]`` class ids.
        attributes: int64 ``[K]`` attribute ids (argmax over the A attributes).
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    attributes: np.ndarray


@torch.inference_mode()
def detect_standard(
    detector: Detector,
    scene: Scene,
    *,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    max_detections: int = 100,
) -> Detections:
    """Detectron2's ``fast_rcnn_inference`` on one scene, boxes mapped back to raw pixels."""
    image = prepare_scene(scene, detector.config)
    raw = detector.forward_raw(image.tensor[None].to(detector.device))
    proposals = raw.rpn.proposals[0]
    num_classes = detector.config.num_classes
    probs = torch.softmax(raw.roi.class_logits, dim=1)[:, :num_classes]
    boxes = apply_deltas(raw.roi.deltas, proposals, weights=BOX_HEAD_WEIGHTS)
    boxes = clip_boxes(boxes.view(-1, 4), image.resized_size).view(-1, num_classes, 4)
    attrs = raw.roi.attr_logits[:, :-1].argmax(dim=1)
    keep = probs > score_thresh
    rows, cols = torch.nonzero(keep, as_tuple=True)
    kept_boxes, kept_scores = boxes[rows, cols], probs[rows, cols]
    order = batched_nms(kept_boxes, kept_scores, cols, nms_thresh)[:max_detections]
    return Detections(
        boxes=(kept_boxes[order] / image.scale).cpu().numpy().astype(np.float32),
        scores=kept_scores[order].cpu().numpy().astype(np.float32),
        classes=cols[order].cpu().numpy().astype(np.int64),
        attributes=attrs[rows[order]].cpu().numpy().astype(np.int64),
    )


def voc_average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-point AP: area under the precision envelope (precision made non-increasing).

    Args:
        recall: float ``[K]`` cumulative recall at each ranked detection (non-decreasing).
        precision: float ``[K]`` cumulative precision at each ranked detection.
    """
    mrec = np.concatenate(([0.0], np.asarray(recall, np.float64), [1.0]))
    mpre = np.concatenate(([0.0], np.asarray(precision, np.float64), [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


@dataclass(frozen=True)
class DetectorMetrics:
    """Detector quality on a set of scenes.

    Attributes:
        map50: mean over the shape classes of the VOC all-point AP at IoU 0.5.
        ap50: class name -> AP.
        attribute_accuracy: share of matched ground-truth objects whose detection has the
            right colour.
        matched: ground-truth objects matched by a detection at IoU >= 0.5.
        objects: ground-truth objects in all.
    """

    map50: float
    ap50: dict[str, float]
    attribute_accuracy: float
    matched: int
    objects: int


def evaluate_detections(
    scenes: Sequence[Scene], detections: Sequence[Detections], *, iou_thresh: float = 0.5
) -> DetectorMetrics:
    """mAP@``iou_thresh`` and attribute accuracy of ``detections`` (one per scene).

    Matching per class, VOC style: detections of all images by score descending; each takes
    its highest-IoU ground truth of that class in its image; a true positive if that IoU >=
    ``iou_thresh`` and the ground truth is not taken yet, else a false positive.
    """
    if len(scenes) != len(detections):
        raise ValueError(f"{len(scenes)} scenes but {len(detections)} detection sets")
    ap50: dict[str, float] = {}
    correct_attr = matched = 0
    for class_id, name in enumerate(SHAPES):
        records = []  # (score, image index, box, attribute)
        gt_boxes, gt_attrs, taken = [], [], []
        total = 0
        for index, (scene, dets) in enumerate(zip(scenes, detections, strict=True)):
            mask = scene.class_ids() == class_id
            gt_boxes.append(torch.from_numpy(scene.boxes_array()[mask]))
            gt_attrs.append(scene.attribute_ids()[mask])
            taken.append(np.zeros(int(mask.sum()), bool))
            total += int(mask.sum())
            for k in np.nonzero(dets.classes == class_id)[0]:
                records.append((float(dets.scores[k]), index, dets.boxes[k], dets.attributes[k]))
        records.sort(key=lambda r: -r[0])
        tp = np.zeros(len(records))
        for rank, (_, index, box, attribute) in enumerate(records):
            if gt_boxes[index].shape[0] == 0:
                continue
            iou = pairwise_iou(torch.from_numpy(box[None]), gt_boxes[index])[0]
            best = int(iou.argmax())
            if float(iou[best]) >= iou_thresh and not taken[index][best]:
                taken[index][best] = True
                tp[rank] = 1
                matched += 1
                correct_attr += int(attribute == gt_attrs[index][best])
        if total == 0:
            continue  # a class absent from every scene has no AP
        cum_tp = np.cumsum(tp)
        recall = cum_tp / total
        precision = cum_tp / np.arange(1, len(records) + 1)
        ap50[name] = voc_average_precision(recall, precision)
    objects = sum(len(scene.objects) for scene in scenes)
    return DetectorMetrics(
        map50=float(np.mean(list(ap50.values()))) if ap50 else 0.0,
        ap50=ap50,
        attribute_accuracy=correct_attr / matched if matched else 0.0,
        matched=matched,
        objects=objects,
    )


@dataclass(frozen=True)
class VqaMetrics:
    """Answer accuracy.

    Attributes:
        accuracy: share of questions answered exactly right.
        per_kind: question kind -> accuracy (kinds with no question are left out).
        counts: question kind -> number of questions.
    """

    accuracy: float
    per_kind: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


def score_answers(
    kinds: Sequence[str], predicted: Sequence[str], expected: Sequence[str]
) -> VqaMetrics:
    """Exact-match accuracy overall and per kind."""
    if not len(kinds) == len(predicted) == len(expected):
        raise ValueError("kinds, predicted and expected must have one entry per question")
    right: dict[str, int] = {}
    counts: dict[str, int] = {}
    for kind, guess, truth in zip(kinds, predicted, expected, strict=True):
        counts[kind] = counts.get(kind, 0) + 1
        right[kind] = right.get(kind, 0) + int(guess == truth)
    ordered = [k for k in QUESTION_KINDS if k in counts] + sorted(set(counts) - set(QUESTION_KINDS))
    return VqaMetrics(
        accuracy=sum(right.values()) / max(sum(counts.values()), 1),
        per_kind={k: right[k] / counts[k] for k in ordered},
        counts={k: counts[k] for k in ordered},
    )


@torch.inference_mode()
def answer_scenes(
    detector: Detector,
    encoder: Encoder,
    scenes: Sequence[Scene],
    *,
    regions: Mapping[int, RegionFeatures] | None = None,
) -> list[str]:
    """The encoder's most probable answer to every question of every scene, in order
    (``questions.scene_questions``); the scene's regions are ``regions[scene.seed]`` when
    given (the same detector's, computed once), else ``detector``'s now."""
    out: list[str] = []
    for scene in scenes:
        questions = [q.text for q in scene_questions(scene)]
        if not questions:
            continue
        if regions is not None:
            found = regions[scene.seed]
        else:
            found = detector.detect([prepare_scene(scene, detector.config)])[0]
        ranked = encoder.answer([found] * len(questions), questions, k=1)
        out.extend(best[0].answer for best in ranked)
    return out


def evaluate_vqa(
    detector: Detector,
    encoder: Encoder,
    scenes: Sequence[Scene],
    *,
    regions: Mapping[int, RegionFeatures] | None = None,
) -> VqaMetrics:
    """VQA accuracy of the detector + encoder pair on ``scenes`` (``regions``: as in
    :func:`answer_scenes`)."""
    predicted = answer_scenes(detector, encoder, scenes, regions=regions)
    questions = [q for scene in scenes for q in scene_questions(scene)]
    return score_answers([q.kind for q in questions], predicted, [q.answer for q in questions])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; prints the metrics as JSON and returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m shapesworld.evaluate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--detector", type=Path, required=True, help="shapes-detector directory")
    parser.add_argument("--lxmert", type=Path, help="shapes-lxmert directory (skip VQA if absent)")
    parser.add_argument("--split", default="heldout", choices=("val", "test", "heldout"))
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    detector = load_trained_detector(args.detector)
    scenes = make_split(args.split, args.count)
    metrics = evaluate_detections(scenes, [detect_standard(detector, s) for s in scenes])
    report: dict[str, object] = {
        "split": args.split,
        "scenes": len(scenes),
        "detector": vars(metrics),
    }
    if args.lxmert is not None:
        from encoder.build import load_encoder

        # The directory's label2ans.json names the answers (Encoder reads it).
        report["vqa"] = vars(evaluate_vqa(detector, load_encoder(args.lxmert), scenes))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
