"""NLVR2 fine-tuning pieces: the statement files, the metrics on hand-worked cases, the
prediction CSV, and a tiny NLVR2 model learning a pair task through ``fit``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from encoder_fixtures import FEAT_DIM, SMALL_VOCAB, make_regions, tiny_config
from finetune_helpers import DictSource
from transformers import LxmertForPreTraining

from detector.structures import RegionFeatures
from encoder.finetune import (
    DataError,
    FinetuneConfig,
    PairDataset,
    PairEntry,
    evaluate_pairs,
    fit,
    pair_scores,
    pairs_with_regions,
    prediction_csv,
    prepare_nlvr2_encoder,
    read_pair_files,
    statement_group,
    write_model_dir,
)
from encoder.nlvr2 import LxmertForNLVR2


def _entry(identifier: str, label: bool | None, pair_type: str | None = None) -> PairEntry:
    return PairEntry(identifier, "a", "b", "a statement", label, pair_type, "test")


def test_read_pair_files_reads_both_label_spellings(tmp_path: Path) -> None:
    path = tmp_path / "pairs.json"
    raw = [
        {"identifier": "dev-1-0-0", "img0": "x", "img1": "y", "sent": "s", "label": 1},
        {"identifier": "dev-1-0-1", "img0": "y", "img1": "x", "sent": "s", "label": "False"},
        {"identifier": "dev-2-0-0", "img0": "x", "img1": "x", "sent": "t", "label": True},
        {"identifier": "test-3", "img0": "x", "img1": "y", "sent": "u", "type": "count"},
    ]
    path.write_text(json.dumps(raw), encoding="utf-8")
    entries = read_pair_files([path])
    assert [e.label for e in entries] == [True, False, True, None]
    assert (entries[1].left, entries[1].right) == ("y", "x")
    assert entries[3].pair_type == "count" and entries[0].pair_type is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"label": 2}, r"entry 1 \(identifier 'p-1'\): 'label' must be 0, 1"),
        ({"label": 1.0}, r"entry 1 \(identifier 'p-1'\): 'label' must be 0, 1"),
        ({"img1": ""}, r"entry 1 \(identifier 'p-1'\): 'img1' must be a non-empty string"),
        ({"identifier": "p-0"}, r"entry 1: identifier 'p-0' repeats .*entry 0"),
        ({"identifier": 7}, r"entry 1: 'identifier' must be a non-empty string"),
    ],
)
def test_bad_statement_files_name_the_file_and_entry(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    good = {"identifier": "p-0", "img0": "x", "img1": "y", "sent": "s", "label": 0}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([good, {**good, "identifier": "p-1", **change}]), "utf-8")
    with pytest.raises(DataError, match=rf"bad\.json: {message}"):
        read_pair_files([path])
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.json: not valid JSON"):
        read_pair_files([path])


def test_missing_images_are_named_or_skipped() -> None:
    source = DictSource({"a": make_regions("a", 2, seed=0)})
    entries = [_entry("p-0", True), PairEntry("p-1", "a", "gone", "s", False, None, "f: entry 1")]
    with pytest.raises(DataError, match=r"f: entry 1 \(identifier 'p-1'\): image 'gone'"):
        pairs_with_regions(entries[1:], source, skip_missing=False)
    source.regions["b"] = make_regions("b", 2, seed=1)
    kept, skipped = pairs_with_regions(entries, source, skip_missing=True)
    assert [e.identifier for e in kept] == ["p-0"] and skipped == 1


def test_statement_groups_accuracy_and_consistency_by_hand() -> None:
    assert statement_group("dev-850-0-1") == "dev-850-0"
    assert statement_group("dev-850-0-x") is None and statement_group("plain") is None
    entries = [
        _entry("dev-1-0-0", True, "count"),  # right
        _entry("dev-1-0-1", False, "count"),  # wrong: group dev-1-0 inconsistent
        _entry("dev-2-0-0", False, "exist"),  # right
        _entry("dev-2-0-1", True, "exist"),  # right: group dev-2-0 consistent
        _entry("dev-3-0-0", True, "exist"),  # right: group dev-3-0 consistent
        _entry("dev-4-0-0", None, "exist"),  # no label: not scored
    ]
    report = pair_scores(entries, [True, True, False, True, True, False])
    assert report.accuracy.overall == pytest.approx(4 / 5) and report.accuracy.count == 5
    assert report.accuracy.per_type == {"pair_type": {"count": 0.5, "exist": 1.0}}
    assert report.consistency == pytest.approx(2 / 3) and report.groups == 3
    plain = pair_scores([_entry("a", True), _entry("b", False)], [True, True])
    assert plain.consistency is None and plain.accuracy.overall == 0.5
    with pytest.raises(ValueError, match="1 predictions for 2 statements"):
        pair_scores([_entry("a", True), _entry("b", False)], [True])


def test_prediction_csv_is_nlvr2s_format() -> None:
    text = prediction_csv([_entry("dev-1-0-0", True), _entry("dev-1-0-1", None)], [True, False])
    assert text == "identifier,prediction\ndev-1-0-0,True\ndev-1-0-1,False\n"


def _image(image_id: str, *, kind: int, boxes: int, seed: int) -> RegionFeatures:
    """Random boxes whose features say the image's kind: +1 or -1 everywhere, plus noise."""
    regions = make_regions(image_id, boxes, seed=seed)
    features = (1.0 if kind else -1.0) + 0.1 * regions.features
    return RegionFeatures(**{**vars(regions), "features": features})


def test_a_tiny_nlvr2_model_learns_a_pair_task(tmp_path: Path) -> None:
    # True exactly when the left image is of kind 1; box counts differ within pairs.
    rng = np.random.default_rng(0)
    images = {
        f"img-{i}": _image(f"img-{i}", kind=i % 2, boxes=3 + i % 5, seed=i) for i in range(16)
    }
    entries = []
    for k in range(96):
        left, right = (f"img-{int(i)}" for i in rng.integers(0, 16, 2))
        label = int(left.split("-")[1]) % 2 == 1
        entries.append(PairEntry(f"p-{k // 2}-{k % 2}", left, right, "the ball", label, None, ""))
    source = DictSource(images)
    start = tmp_path / "start"
    torch.manual_seed(0)
    LxmertForPreTraining(tiny_config()).save_pretrained(start, safe_serialization=True)
    (start / "vocab.txt").write_text("\n".join(SMALL_VOCAB) + "\n", encoding="utf-8")
    config = FinetuneConfig(epochs=6, batch_size=8, lr=2e-3, max_question_length=8, seed=0)
    encoder = prepare_nlvr2_encoder(start, config=config, device="cpu")
    assert isinstance(encoder.model, LxmertForNLVR2) and encoder.answers is None
    train = PairDataset(entries[:64], source, num_boxes=36)
    valid = PairDataset(entries[64:], source, num_boxes=36)
    out = tmp_path / "out"
    result = fit(
        encoder=encoder,
        train=train,
        valid=valid,
        config=config,
        task="nlvr2",
        checkpoint=tmp_path / "last.pt",
        on_best=lambda best, epoch: write_model_dir(best, out, record={"epoch": epoch.epoch}),
    )
    losses = [record.loss for record in result.history]
    assert losses[-1] < losses[0] * 0.5, losses
    report = evaluate_pairs(encoder, valid, config=config)
    assert report.accuracy.overall >= 0.9, report
    assert report.groups == 16 and report.consistency is not None
    assert result.best is not None and result.best >= 0.9
    assert not (out / "label2ans.json").exists() and (out / "config.json").is_file()
    assert encoder.model.config.visual_feat_dim == FEAT_DIM
