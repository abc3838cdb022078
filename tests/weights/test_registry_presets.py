"""Every registry record's ``preset`` is a name its package knows, and fits the weights shipped.

The registry (``weights``) imports neither ``detector`` nor ``encoder``; this test is where the
names it holds are checked against theirs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import detector.config
import encoder.config
from weights import REGISTRY, CheckpointRecord
from weights.resolve import default_shipped_root

DETECTORS = sorted(name for name, record in REGISTRY.items() if record.kind == "detector")
ENCODERS = sorted(name for name, record in REGISTRY.items() if record.kind == "encoder")
HEAD_OF_ARCHITECTURE = {
    "LxmertForQuestionAnswering": "qa",
    "LxmertForPreTraining": "pretraining",
    "LxmertModel": "base",
    "LxmertForNLVR2": "nlvr2",
}


def _shipped(record: CheckpointRecord) -> Path:
    assert record.shipped_dir is not None
    return default_shipped_root() / record.shipped_dir


def test_the_registry_has_records_of_both_kinds() -> None:
    assert DETECTORS and ENCODERS
    assert set(DETECTORS) | set(ENCODERS) == set(REGISTRY)


@pytest.mark.parametrize("name", DETECTORS)
def test_detector_preset_resolves(name: str) -> None:
    record = REGISTRY[name]
    config = detector.config.get_preset(record.preset)
    assert config.name == record.preset


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_preset_resolves_and_loads_this_checkpoint(name: str) -> None:
    record = REGISTRY[name]
    config = encoder.config.get_preset(record.preset)
    assert config.checkpoint == record.name
    assert encoder.config.config_for(record.name) == config  # the one lookup agrees


@pytest.mark.parametrize("name", [n for n in DETECTORS if REGISTRY[n].shipped_dir])
def test_shipped_detector_preset_fits_its_vocabularies(name: str) -> None:
    config = detector.config.get_preset(REGISTRY[name].preset)
    directory = _shipped(REGISTRY[name])
    objects = (directory / "objects_vocab.txt").read_text(encoding="utf-8").splitlines()
    attributes = (directory / "attributes_vocab.txt").read_text(encoding="utf-8").splitlines()
    assert (len(objects), len(attributes)) == (config.num_classes, config.num_attributes)


@pytest.mark.parametrize("name", [n for n in ENCODERS if REGISTRY[n].shipped_dir])
def test_shipped_encoder_preset_fits_its_config(name: str) -> None:
    config = encoder.config.get_preset(REGISTRY[name].preset)
    directory = _shipped(REGISTRY[name])
    model_config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    assert [HEAD_OF_ARCHITECTURE[a] for a in model_config["architectures"]] == [config.head]
    if config.answer_set is None and config.head != "nlvr2":  # the checkpoint's own answers
        answers = json.loads((directory / "label2ans.json").read_text(encoding="utf-8"))
        assert len(answers) == model_config["num_qa_labels"]


def test_shipped_pair_agrees_on_the_region_feature_size() -> None:
    detectors = [REGISTRY[n] for n in DETECTORS if REGISTRY[n].shipped_dir]
    encoders = [REGISTRY[n] for n in ENCODERS if REGISTRY[n].shipped_dir]
    assert detectors and encoders
    for det in detectors:
        feature_dim = detector.config.get_preset(det.preset).feature_dim
        for enc in encoders:
            model_config = json.loads((_shipped(enc) / "config.json").read_text("utf-8"))
            assert model_config["visual_feat_dim"] == feature_dim
