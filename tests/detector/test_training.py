"""Detector training: matching, sampling and losses against plain reference computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from detector.config import get_preset
from detector.model import build_detector
from detector.training import (
    BACKGROUND,
    FOREGROUND,
    IGNORE,
    Targets,
    TrainingConfig,
    detector_losses,
    match,
    roi_losses,
    rpn_losses,
    sample_proposals,
    subsample_labels,
    trainable_parameters,
)


def _reference_match(
    iou: np.ndarray, low: float, high: float | None, low_quality: bool
) -> tuple[list[int], list[int]]:
    """Detectron2's Matcher written out with loops."""
    num_gt, num_pred = iou.shape
    matches, labels = [], []
    for j in range(num_pred):
        best = max(range(num_gt), key=lambda g: (iou[g, j], -g))
        matches.append(best)
        value = iou[best, j]
        if high is None:
            labels.append(1 if value >= low else 0)
        else:
            labels.append(0 if value < low else (-1 if value < high else 1))
    if low_quality:
        for g in range(num_gt):
            top = iou[g].max()
            for j in range(num_pred):
                if iou[g, j] == top:
                    labels[j] = 1
    return matches, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_match_two_thresholds_low_quality_agrees_with_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    iou = rng.random((4, 50)).astype(np.float32) * 0.8
    iou[1, 7] = iou[1].max()  # a tie for ground truth 1's best prediction
    matches, labels = match(
        torch.from_numpy(iou), thresholds=(0.3, 0.7), allow_low_quality_matches=True
    )
    want_matches, want_labels = _reference_match(iou, 0.3, 0.7, True)
    assert matches.tolist() == want_matches
    assert labels.tolist() == want_labels


def test_match_one_threshold_without_low_quality() -> None:
    iou = torch.tensor([[0.1, 0.5, 0.49], [0.2, 0.3, 0.45]])
    matches, labels = match(iou, thresholds=(0.5,), allow_low_quality_matches=False)
    assert matches.tolist() == [1, 0, 0]
    assert labels.tolist() == [BACKGROUND, FOREGROUND, BACKGROUND]


def test_low_quality_match_rescues_ground_truth_without_a_good_anchor() -> None:
    iou = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.4, 0.35]])
    _, plain = match(iou, thresholds=(0.3, 0.7), allow_low_quality_matches=False)
    _, rescued = match(iou, thresholds=(0.3, 0.7), allow_low_quality_matches=True)
    assert plain.tolist() == [FOREGROUND, IGNORE, IGNORE]
    assert rescued.tolist() == [FOREGROUND, FOREGROUND, IGNORE]


def test_match_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="G >= 1"):
        match(torch.zeros(0, 3), thresholds=(0.5,), allow_low_quality_matches=False)
    with pytest.raises(ValueError, match="increasing"):
        match(torch.zeros(1, 3), thresholds=(0.7, 0.3), allow_low_quality_matches=False)


def test_subsample_labels_counts_fraction_and_seed() -> None:
    labels = torch.tensor([1] * 30 + [0] * 100 + [-1] * 20)
    draw = {}
    for attempt in range(2):
        pos, neg = subsample_labels(
            labels,
            num_samples=64,
            positive_fraction=0.25,
            background_label=0,
            generator=torch.Generator().manual_seed(3),
        )
        draw[attempt] = (pos.tolist(), neg.tolist())
        assert len(pos) == 16 and len(neg) == 48
        assert bool((labels[pos] == 1).all()) and bool((labels[neg] == 0).all())
        assert len(set(pos.tolist())) == 16 and len(set(neg.tolist())) == 48
    assert draw[0] == draw[1]
    # Few positives: the background fills the rest.
    pos, neg = subsample_labels(
        torch.tensor([5, 2, 2, 2, 2]),
        num_samples=4,
        positive_fraction=0.5,
        background_label=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert pos.tolist() == [0] and len(neg) == 3


def _encode(src: np.ndarray, dst: np.ndarray, weights: tuple[float, ...]) -> np.ndarray:
    sw, sh = src[:, 2] - src[:, 0], src[:, 3] - src[:, 1]
    dw, dh = dst[:, 2] - dst[:, 0], dst[:, 3] - dst[:, 1]
    sx, sy = src[:, 0] + sw / 2, src[:, 1] + sh / 2
    dx, dy = dst[:, 0] + dw / 2, dst[:, 1] + dh / 2
    wx, wy, ww, wh = weights
    return np.stack(
        [wx * (dx - sx) / sw, wy * (dy - sy) / sh, ww * np.log(dw / sw), wh * np.log(dh / sh)],
        axis=1,
    )


def test_rpn_losses_equal_plain_bce_and_l1_when_everything_is_sampled() -> None:
    rng = np.random.default_rng(0)
    anchors = np.array(
        [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [40, 40, 60, 60], [5, 0, 15, 10]],
        dtype=np.float32,
    )
    gt = np.array([[0, 0, 10, 10], [41, 40, 61, 62]], dtype=np.float32)
    logits = rng.normal(size=(1, 5)).astype(np.float32)
    deltas = rng.normal(size=(1, 5, 4)).astype(np.float32) * 0.1
    config = TrainingConfig(rpn_batch_size_per_image=1000, rpn_positive_fraction=1.0)
    target = Targets(torch.from_numpy(gt), torch.tensor([0, 1]), torch.tensor([0, 0]))
    objectness, box = rpn_losses(
        anchors=torch.from_numpy(anchors),
        logits=torch.from_numpy(logits),
        deltas=torch.from_numpy(deltas),
        targets=[target],
        config=config,
        generator=torch.Generator().manual_seed(0),
    )
    # Reference by hand: IoUs of the anchors with the gt boxes.
    iou_first = [1.0, 81 / 119, 0.0, 0.0, 50 / 150]
    assert iou_first[1] < 0.7  # ignored (between 0.3 and 0.7), as is anchor 4
    labels = {0: 1, 1: -1, 2: 0, 3: 1, 4: -1}  # anchor 3 is gt 1's best (low-quality match)
    matched = {0: 0, 3: 1}
    bce = 0.0
    for j, label in labels.items():
        if label >= 0:
            p = 1 / (1 + math.exp(-float(logits[0, j])))
            bce -= math.log(p) if label == 1 else math.log(1 - p)
    goal = _encode(anchors[[0, 3]], gt[[matched[0], matched[3]]], (1, 1, 1, 1))
    l1 = np.abs(deltas[0, [0, 3]] - goal).sum()
    assert float(objectness) == pytest.approx(bce / 1000, rel=1e-5)
    assert float(box) == pytest.approx(l1 / 1000, rel=1e-5)


def _tiny_detector() -> torch.nn.Module:
    return build_detector(get_preset("tiny"), seed=0)


def test_sample_proposals_adds_ground_truth_and_labels_background_last() -> None:
    gt = torch.tensor([[10.0, 10.0, 40.0, 40.0], [50.0, 50.0, 90.0, 80.0]])
    target = Targets(gt, torch.tensor([3, 5]), torch.tensor([1, 6]))
    proposals = torch.tensor([[11.0, 11.0, 41.0, 41.0], [0.0, 0.0, 5.0, 5.0]])
    samples = sample_proposals(
        proposals,
        target,
        num_classes=12,
        config=TrainingConfig(roi_batch_size_per_image=10, roi_positive_fraction=1.0),
        generator=torch.Generator().manual_seed(0),
    )
    assert samples.num_foreground == 3  # the good proposal and both gt boxes
    fg = samples.classes[: samples.num_foreground].tolist()
    assert sorted(fg) == [3, 3, 5]
    assert samples.classes[samples.num_foreground :].tolist() == [12]
    # Every foreground sample carries the attribute and box of its ground truth.
    for cls, attr, box in zip(
        samples.classes[:3], samples.attributes[:3], samples.target_boxes[:3], strict=True
    ):
        index = 0 if int(cls) == 3 else 1
        assert int(attr) == int(target.attributes[index])
        assert torch.equal(box, gt[index])


def test_roi_losses_match_manual_computation() -> None:
    detector = _tiny_detector()
    config = detector.config
    torch.manual_seed(0)
    features = torch.randn(1, config.res4_channels, 6, 8)
    gt = torch.tensor([[10.0, 10.0, 50.0, 60.0]])
    target = Targets(gt, torch.tensor([4]), torch.tensor([2]))
    proposals = torch.tensor([[12.0, 8.0, 52.0, 58.0], [70.0, 40.0, 120.0, 90.0]])
    samples = sample_proposals(
        proposals,
        target,
        num_classes=config.num_classes,
        config=TrainingConfig(roi_batch_size_per_image=8, roi_positive_fraction=1.0),
        generator=torch.Generator().manual_seed(0),
    )
    cls_loss, box_loss, attr_loss = roi_losses(
        detector, features=features, samples=[samples], config=TrainingConfig()
    )
    heads = detector.roi_heads
    with torch.no_grad():
        region = heads.region_features(heads.pool(features, [samples.boxes]), chunk_size=8)
        logits, deltas, attr_logits = heads.box_predictor(region, attr_classes=samples.classes)
    logp = torch.log_softmax(logits.double(), dim=1).numpy()
    classes = samples.classes.numpy()
    assert float(cls_loss.detach()) == pytest.approx(
        -logp[np.arange(len(classes)), classes].mean(), 1e-5
    )
    fg = np.nonzero(classes < config.num_classes)[0]
    goal = _encode(samples.boxes.numpy()[fg], samples.target_boxes.numpy()[fg], (10, 10, 5, 5))
    picked = deltas.numpy().reshape(len(classes), -1, 4)[fg, classes[fg]]
    assert float(box_loss.detach()) == pytest.approx(
        np.abs(picked - goal).sum() / len(classes), 1e-5
    )
    attr_logp = torch.log_softmax(attr_logits.double(), dim=1).numpy()
    assert float(attr_loss.detach()) == pytest.approx(-attr_logp[fg, 2].mean(), 1e-5)


def test_training_steps_reduce_the_loss_and_are_seeded() -> None:
    def run() -> list[float]:
        detector = _tiny_detector().train()
        params = trainable_parameters(detector)
        optimizer = torch.optim.AdamW(params, lr=3e-3)
        generator = torch.Generator().manual_seed(0)
        image = torch.zeros(1, 3, 96, 128)
        image[:, :, 20:60, 30:70] = 100.0
        image[:, 0, 50:90, 80:120] = -80.0
        target = Targets(
            torch.tensor([[30.0, 20.0, 70.0, 60.0], [80.0, 50.0, 120.0, 90.0]]),
            torch.tensor([1, 7]),
            torch.tensor([0, 5]),
        )
        totals = []
        for _ in range(25):
            losses = detector_losses(
                detector, image, [target], config=TrainingConfig(), generator=generator
            )
            optimizer.zero_grad()
            losses.total.backward()
            optimizer.step()
            totals.append(losses.as_floats()["total"])
        return totals

    first, second = run(), run()
    assert first == second
    assert all(math.isfinite(v) for v in first)
    assert np.mean(first[-5:]) < 0.5 * np.mean(first[:5])


def test_trainable_parameters_unfreezes_norms_and_refuses_folded_models() -> None:
    detector = _tiny_detector()
    norm_weight = detector.backbone.stem.conv1.norm.weight
    assert not norm_weight.requires_grad
    params = trainable_parameters(detector, train_norm=True)
    assert norm_weight.requires_grad and any(p is norm_weight for p in params)
    trainable_parameters(detector, train_norm=False)
    assert not norm_weight.requires_grad
    detector.optimize_for_inference()
    with pytest.raises(ValueError, match="folded"):
        trainable_parameters(detector)


def test_bad_targets_and_configs_are_rejected() -> None:
    with pytest.raises(ValueError, match="boxes"):
        Targets(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.zeros(2))
    with pytest.raises(ValueError, match="classes"):
        Targets(torch.zeros(2, 4), torch.zeros(3, dtype=torch.long), torch.zeros(2))
    with pytest.raises(ValueError, match="rpn_iou_thresholds"):
        TrainingConfig(rpn_iou_thresholds=(0.8, 0.2))
    detector = _tiny_detector()
    with pytest.raises(ValueError, match="targets"):
        detector_losses(
            detector,
            torch.zeros(2, 3, 64, 64),
            [Targets(torch.tensor([[1.0, 1.0, 9.0, 9.0]]), torch.tensor([0]), torch.tensor([0]))],
            config=TrainingConfig(),
            generator=torch.Generator(),
        )
