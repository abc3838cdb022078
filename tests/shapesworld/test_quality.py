"""Quality of the shipped shapes-world models on held-out scenes, and the metrics themselves.

The held-out split (``vocab.SPLIT_SEED_BASE["heldout"]``) is never used by training.
Thresholds are the README's ("Shapes world", quality table): detector mAP@0.5 >= 0.90,
attribute accuracy >= 0.90 on matched boxes, VQA accuracy >= 0.85 overall and for every
question kind (spatial included); NLVR2 (shapes-nlvr2) 0.85 overall, issue 20's target, and
one consistent verdict for two identical images. VQA and NLVR2 share one pass of the
detector over the held-out scenes (the session's ``heldout_regions``): in one file, since
pytest-xdist gives each file to one worker and a session fixture is made once per worker.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detector.model import Detector
from detector.structures import RegionFeatures
from encoder.build import Encoder, load_encoder
from encoder.finetune import PairEntry, PairReport, pair_scores
from shapesworld.evaluate import (
    Detections,
    DetectorMetrics,
    VqaMetrics,
    detect_standard,
    evaluate_detections,
    evaluate_vqa,
    score_answers,
    voc_average_precision,
)
from shapesworld.models import DETECTOR_DIR, DETECTOR_FILE, LABEL2ANS_FILE, LXMERT_DIR
from shapesworld.pairs import PAIR_KINDS, pair_entries
from shapesworld.scenes import Scene, make_scene, make_split
from shapesworld.vocab import ANSWERS, QUESTION_KINDS

SHIPPED = Path(__file__).resolve().parents[2] / "weights" / "shipped"
HELDOUT_SCENES = 200


# --- the metrics ----------------------------------------------------------------------------


def test_voc_average_precision_by_hand() -> None:
    # 3 ground truths; ranked detections TP, FP, TP, FP -> recall 1/3, 1/3, 2/3, 2/3.
    tp = np.array([1, 0, 1, 0], float)
    recall = np.cumsum(tp) / 3
    precision = np.cumsum(tp) / np.arange(1, 5)
    # Envelope: precision 1 up to recall 1/3, 2/3 up to recall 2/3, 0 after.
    assert voc_average_precision(recall, precision) == pytest.approx(1 / 3 + (1 / 3) * (2 / 3))
    assert voc_average_precision(np.array([1.0]), np.array([1.0])) == 1.0
    assert voc_average_precision(np.array([]), np.array([])) == 0.0


def _perfect(scene: Scene) -> Detections:
    return Detections(
        boxes=scene.boxes_array(),
        scores=np.linspace(0.9, 0.5, len(scene.objects)).astype(np.float32),
        classes=scene.class_ids(),
        attributes=scene.attribute_ids(),
    )


def test_evaluate_detections_perfect_shifted_and_wrong_colour() -> None:
    scenes = [make_scene(seed) for seed in (30_000_000 + 7, 30_000_000 + 8)]
    perfect = evaluate_detections(scenes, [_perfect(s) for s in scenes])
    assert perfect.map50 == 1.0 and perfect.attribute_accuracy == 1.0
    assert perfect.matched == perfect.objects == sum(len(s.objects) for s in scenes)

    # Every box moved by its own width: IoU 0, so no class has a true positive.
    moved = []
    for s in scenes:
        det = _perfect(s)
        boxes = det.boxes.copy()
        width = boxes[:, 2] - boxes[:, 0]
        boxes[:, 0] += width
        boxes[:, 2] += width
        moved.append(Detections(boxes, det.scores, det.classes, det.attributes))
    assert evaluate_detections(scenes, moved).map50 == 0.0

    # Wrong colours leave mAP alone and zero the attribute accuracy.
    recoloured = [
        Detections(d.boxes, d.scores, d.classes, (d.attributes + 1) % 7)
        for d in (_perfect(s) for s in scenes)
    ]
    metrics = evaluate_detections(scenes, recoloured)
    assert metrics.map50 == 1.0 and metrics.attribute_accuracy == 0.0

    # A duplicate of every detection at lower score is a false positive ranked last per class:
    # AP stays 1 (all true positives come first).
    doubled = []
    for d in (_perfect(s) for s in scenes):
        doubled.append(
            Detections(
                np.concatenate([d.boxes, d.boxes]),
                np.concatenate([d.scores, d.scores * 0.1]),
                np.concatenate([d.classes, d.classes]),
                np.concatenate([d.attributes, d.attributes]),
            )
        )
    assert evaluate_detections(scenes, doubled).map50 == 1.0
    with pytest.raises(ValueError, match="detection sets"):
        evaluate_detections(scenes, doubled[:1])


def test_score_answers_per_kind() -> None:
    metrics = score_answers(
        ["count", "color", "color", "exist"], ["2", "red", "blue", "no"], ["2", "red", "red", "yes"]
    )
    assert metrics.accuracy == 0.5
    assert metrics.per_kind == {"color": 0.5, "count": 1.0, "exist": 0.0}
    assert list(metrics.per_kind) == ["color", "count", "exist"]  # QUESTION_KINDS order
    assert metrics.counts == {"color": 2, "count": 1, "exist": 1}
    with pytest.raises(ValueError, match="one entry per question"):
        score_answers(["count"], [], ["2"])


# --- the shipped models ---------------------------------------------------------------------


def _shipped(directory: str, file_name: str) -> Path:
    path = SHIPPED / directory / file_name
    if not path.is_file():
        pytest.fail(
            f"{path} is missing; the shapes-world weights ship with the package "
            "(retrain: python -m shapesworld.train --out weights/shipped --seed 0)"
        )
    return path


@pytest.fixture(scope="module")
def heldout(heldout_scenes: list[Scene]) -> list[Scene]:
    return heldout_scenes


@pytest.fixture(scope="module")
def detector(shapes_detector: Detector) -> Detector:
    _shipped(DETECTOR_DIR, DETECTOR_FILE)  # the shipped file, not another copy, is tested
    return shapes_detector


@pytest.fixture(scope="module")
def detector_metrics(detector: Detector, heldout: list[Scene]) -> DetectorMetrics:
    return evaluate_detections(heldout, [detect_standard(detector, s) for s in heldout])


def test_shipped_detector_map50(detector_metrics: DetectorMetrics) -> None:
    assert len(detector_metrics.ap50) == 6, detector_metrics.ap50
    assert detector_metrics.map50 >= 0.90, detector_metrics


def test_shipped_detector_attribute_accuracy(detector_metrics: DetectorMetrics) -> None:
    assert detector_metrics.matched >= 0.9 * detector_metrics.objects, detector_metrics
    assert detector_metrics.attribute_accuracy >= 0.90, detector_metrics


def test_shipped_detector_vocabularies(detector: Detector) -> None:
    from shapesworld.vocab import COLORS, SHAPES

    assert detector.object_names == list(SHAPES)
    assert detector.attribute_names == list(COLORS)


@pytest.fixture(scope="module")
def vqa_metrics(
    detector: Detector, heldout: list[Scene], heldout_regions: dict[int, RegionFeatures]
) -> VqaMetrics:
    from encoder.build import load_encoder

    directory = _shipped(LXMERT_DIR, LABEL2ANS_FILE).parent
    encoder = load_encoder(directory)
    # lxmert-finetune's table: the training labels' answers, sorted ("6" never occurs).
    assert encoder.answers is not None and set(encoder.answers.answers) <= set(ANSWERS)
    assert len(encoder.answers.answers) >= len(ANSWERS) - 1
    return evaluate_vqa(detector, encoder, heldout, regions=heldout_regions)


def test_shipped_lxmert_vqa_accuracy(vqa_metrics: VqaMetrics) -> None:
    assert set(vqa_metrics.per_kind) == set(QUESTION_KINDS), vqa_metrics
    assert vqa_metrics.accuracy >= 0.85, vqa_metrics


@pytest.mark.parametrize("kind", QUESTION_KINDS)
def test_shipped_lxmert_vqa_accuracy_per_kind(vqa_metrics: VqaMetrics, kind: str) -> None:
    assert vqa_metrics.per_kind[kind] >= 0.85, vqa_metrics


# --- the shipped shapes-nlvr2 model on held-out pairs ---------------------------------------
# The pairs are ``shapesworld.pairs``' ``test`` statements over the first held-out scenes,
# scored by ``encoder.finetune.pair_scores``.

#: Held-out scenes and statements (each on a true and a false pair): the README's held-out
#: set, ``python -m shapesworld.pairs``' test split (200 scenes, 400 statements, 800 pairs).
GROUPS = 400


@pytest.fixture(scope="module")
def nlvr2() -> Encoder:
    return load_encoder("shapes-nlvr2", device="cpu")


@pytest.fixture(scope="module")
def pairs(
    heldout_scenes: list[Scene], heldout_regions: dict[int, RegionFeatures]
) -> tuple[list[PairEntry], dict[str, RegionFeatures]]:
    """The statements, and the regions of the held-out scenes by image id (the session's)."""
    scenes = heldout_scenes[:HELDOUT_SCENES]
    regions = {f"seed-{scene.seed}": heldout_regions[scene.seed] for scene in scenes}
    entries = [
        PairEntry(
            identifier=str(raw["identifier"]),
            left=str(raw["img0"]),
            right=str(raw["img1"]),
            sentence=str(raw["sent"]),
            label=bool(raw["label"]),
            pair_type=str(raw["type"]),
            origin="heldout",
        )
        for raw in pair_entries("test", scenes, GROUPS)
    ]
    return entries, regions


@pytest.fixture(scope="module")
def nlvr2_report(
    nlvr2: Encoder, pairs: tuple[list[PairEntry], dict[str, RegionFeatures]]
) -> PairReport:
    encoder = nlvr2
    entries, regions = pairs
    probabilities: list[float] = []
    for start in range(0, len(entries), 100):
        batch = entries[start : start + 100]
        probabilities += encoder.judge(
            [regions[e.left] for e in batch],
            [regions[e.right] for e in batch],
            [e.sentence for e in batch],
        )
    return pair_scores(entries, [p > 0.5 for p in probabilities])


def test_shipped_nlvr2_heldout_accuracy_reaches_the_target(nlvr2_report: PairReport) -> None:
    assert nlvr2_report.accuracy.overall >= 0.85, nlvr2_report


def test_shipped_nlvr2_heldout_accuracy_per_kind(nlvr2_report: PairReport) -> None:
    # Floors under the README's held-out figures (0.855 overall: exist 0.98, conjunction
    # 0.935, count 0.89, spatial 0.615), so a broken model or pipeline cannot pass; spatial
    # statements are above chance but short of the others (README).
    per_kind = nlvr2_report.accuracy.per_type["pair_type"]
    assert set(per_kind) == set(PAIR_KINDS), nlvr2_report
    assert per_kind["exist"] >= 0.90 and per_kind["conjunction"] >= 0.85, nlvr2_report
    assert per_kind["count"] >= 0.85 and per_kind["spatial"] >= 0.55, nlvr2_report


def test_identical_images_give_consistent_verdicts(
    nlvr2: Encoder, pairs: tuple[list[PairEntry], dict[str, RegionFeatures]]
) -> None:
    # With the same image on both sides "both images have a X" and "at least one image has
    # a X" say the same thing: the verdicts must agree, and match the scene.
    encoder = nlvr2
    _, regions = pairs
    scenes = {f"seed-{s.seed}": s for s in make_split("heldout", 10)}
    cases = [(seed, shape) for seed in scenes for shape in ("circle", "square", "star")]
    images = [regions[seed] for seed, _ in cases]
    both = encoder.judge(images, images, [f"both images have a {s}" for _, s in cases])
    either = encoder.judge(images, images, [f"at least one image has a {s}" for _, s in cases])
    agree = sum((b > 0.5) == (e > 0.5) for b, e in zip(both, either, strict=True))
    truth = [any(o.shape == s for o in scenes[seed].objects) for seed, s in cases]
    right = sum((b > 0.5) == t for b, t in zip(both, truth, strict=True))
    assert agree >= 0.9 * len(cases) and right >= 0.9 * len(cases), (both, either, truth)
