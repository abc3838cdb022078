"""The shipped shapes-nlvr2 model on held-out pairs: NLVR2 accuracy per kind, issue 20's
target of 0.85 overall, and one consistent verdict for two identical images.

Held-out scenes (``vocab.SPLIT_SEED_BASE["heldout"]``) are never used by training; the pairs
are ``shapesworld.pairs``' ``test`` statements over the first held-out scenes, scored by
``encoder.finetune.pair_scores`` on regions of the shipped detector.
"""

from __future__ import annotations

import pytest

from detector.model import Detector
from detector.structures import RegionFeatures
from encoder.build import Encoder, load_encoder
from encoder.finetune import PairEntry, PairReport, pair_scores
from shapesworld.pairs import PAIR_KINDS, pair_entries
from shapesworld.scenes import Scene, make_split

#: Held-out scenes and statements (each on a true and a false pair): the README's held-out
#: set, ``python -m shapesworld.pairs``' test split (200 scenes, 400 statements, 800 pairs).
HELDOUT_SCENES = 200
GROUPS = 400


@pytest.fixture(scope="module")
def models(shapes_detector: Detector) -> tuple[Detector, Encoder]:
    return shapes_detector, load_encoder("shapes-nlvr2", device="cpu")


@pytest.fixture(scope="module")
def heldout(
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
def report(
    models: tuple[Detector, Encoder], heldout: tuple[list[PairEntry], dict[str, RegionFeatures]]
) -> PairReport:
    _, encoder = models
    entries, regions = heldout
    probabilities: list[float] = []
    for start in range(0, len(entries), 100):
        batch = entries[start : start + 100]
        probabilities += encoder.judge(
            [regions[e.left] for e in batch],
            [regions[e.right] for e in batch],
            [e.sentence for e in batch],
        )
    return pair_scores(entries, [p > 0.5 for p in probabilities])


def test_shipped_nlvr2_heldout_accuracy_reaches_the_target(report: PairReport) -> None:
    assert report.accuracy.overall >= 0.85, report


def test_shipped_nlvr2_heldout_accuracy_per_kind(report: PairReport) -> None:
    # Floors under the README's held-out figures (0.855 overall: exist 0.98, conjunction
    # 0.935, count 0.89, spatial 0.615), so a broken model or pipeline cannot pass; spatial
    # statements are above chance but short of the others (README).
    per_kind = report.accuracy.per_type["pair_type"]
    assert set(per_kind) == set(PAIR_KINDS), report
    assert per_kind["exist"] >= 0.90 and per_kind["conjunction"] >= 0.85, report
    assert per_kind["count"] >= 0.85 and per_kind["spatial"] >= 0.55, report


def test_identical_images_give_consistent_verdicts(
    models: tuple[Detector, Encoder], heldout: tuple[list[PairEntry], dict[str, RegionFeatures]]
) -> None:
    # With the same image on both sides "both images have a X" and "at least one image has
    # a X" say the same thing: the verdicts must agree, and match the scene.
    _, encoder = models
    _, regions = heldout
    scenes = {f"seed-{s.seed}": s for s in make_split("heldout", 10)}
    cases = [(seed, shape) for seed in scenes for shape in ("circle", "square", "star")]
    images = [regions[seed] for seed, _ in cases]
    both = encoder.judge(images, images, [f"both images have a {s}" for _, s in cases])
    either = encoder.judge(images, images, [f"at least one image has a {s}" for _, s in cases])
    agree = sum((b > 0.5) == (e > 0.5) for b, e in zip(both, either, strict=True))
    truth = [any(o.shape == s for o in scenes[seed].objects) for seed, s in cases]
    right = sum((b > 0.5) == t for b, t in zip(both, truth, strict=True))
    assert agree >= 0.9 * len(cases) and right >= 0.9 * len(cases), (both, either, truth)
