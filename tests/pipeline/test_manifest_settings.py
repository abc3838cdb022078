"""Settings of manifests written before they were recorded (derived, never assumed)."""

from __future__ import annotations

import pytest

from detector import get_preset
from pipeline.features.manifest import recorded_settings


def old_manifest(command: list[str], device: str) -> dict[str, object]:
    config = get_preset("tiny").to_dict()
    config.pop("proposals", None)  # written before the field existed
    return {
        "manifest_version": 1,
        "status": "finished",
        "command": command,
        "device": device,
        "detector": {"config": config, "sha256": "ab" * 32},
    }


@pytest.mark.parametrize(
    ("command", "device", "precision"),
    [
        (["extract_features", "imgs", "--out", "x.tsv"], "cuda", "fp32"),
        (["extract_features", "imgs", "--autocast", "bf16"], "cuda:0", "bf16"),
        (["extract_features", "imgs", "--autocast=fp16"], "cuda", "fp16"),
        (["extract_features", "imgs", "--autocast", "bf16"], "cpu", "fp32"),  # CUDA only then
        (["extract_features", "imgs", "--autocast", "none"], "cuda", "fp32"),
    ],
)
def test_old_manifests_get_the_precision_their_autocast_ran(command, device, precision) -> None:
    settings = recorded_settings(old_manifest(command, device))
    assert settings is not None
    assert settings["precision"] == precision
    assert settings["proposals"] == "detectron2"  # every run before the field was
    assert settings["detector_sha256"] == "ab" * 32


def test_a_manifest_from_before_no_clip_reads_as_clipped_for_given_boxes() -> None:
    given = {"settings": {"boxes_sha256": "ab"}, "given_boxes": {"kind": "json"}}
    assert recorded_settings(given)["clip"] is True  # given boxes were always clipped then
    assert recorded_settings({"settings": {}, "given_boxes": None})["clip"] is None
    older = recorded_settings(old_manifest(["extract_features", "imgs"], "cpu"))
    assert older is not None and older["clip"] is None  # detected boxes: no such setting
    recorded = {"settings": {"clip": False}, "given_boxes": {"kind": "json"}}
    assert recorded_settings(recorded)["clip"] is False
