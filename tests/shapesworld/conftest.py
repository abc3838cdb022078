"""What the quality tests of the shipped shapes-world models share, once per session: the
shipped detector and its regions of the 200 held-out scenes (the README's held-out set),
which the VQA and the NLVR2 quality tests both read."""

from __future__ import annotations

import pytest
import torch

from detector.model import Detector
from detector.structures import RegionFeatures
from shapesworld.models import prepare_scene
from shapesworld.scenes import Scene, make_split

#: The README's held-out set: the first 200 scenes of the held-out split.
HELDOUT_SCENES = 200


@pytest.fixture(scope="session")
def shapes_detector() -> Detector:
    from detector.checkpoint import load_detector

    # One thread: with other jobs on a 2-core machine, two threads spin against each other
    # and made the detector's passes 10x slower.
    torch.set_num_threads(1)
    return load_detector("shapes-detector")


@pytest.fixture(scope="session")
def heldout_scenes() -> list[Scene]:
    return make_split("heldout", HELDOUT_SCENES)


@pytest.fixture(scope="session")
def heldout_regions(
    shapes_detector: Detector, heldout_scenes: list[Scene]
) -> dict[int, RegionFeatures]:
    """The shipped detector's regions of each held-out scene, by the scene's seed (one pass)."""
    return {
        scene.seed: shapes_detector.detect([prepare_scene(scene, shapes_detector.config)])[0]
        for scene in heldout_scenes
    }
