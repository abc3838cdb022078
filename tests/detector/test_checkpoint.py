"""Checkpoint layouts: the real HF key list, the Detectron2 pickle, our safetensors."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import weights
import weights.resolve
from detector import (
    CheckpointInfo,
    InferenceOptions,
    build_detector,
    detector_config,
    get_preset,
    load_detector,
    save_detector,
)
from detector.checkpoint import CheckpointMismatchError, remap_keys
from detector.preprocess import PreparedImage, prepare
from detector.rpn import cell_anchors

KEYS_TSV = Path(__file__).parents[2] / "detector" / "data" / "frcnn-vg-finetuned.keys.tsv"


def real_key_list() -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in KEYS_TSV.read_text().splitlines():
        key, shape, dtype = line.split("\t")
        dims = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
        rows.append((key, dims, dtype))
    return rows


def random_real_layout(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with exactly the keys, shapes and dtypes of frcnn-vg-finetuned."""
    generator = torch.Generator().manual_seed(seed)
    config = get_preset("vg-r101-c4-attr")
    state = {}
    for key, shape, dtype in real_key_list():
        if dtype == "torch.int64":
            state[key] = torch.tensor(7, dtype=torch.int64).reshape(shape)
        elif key.endswith("cell_anchors.0"):
            state[key] = cell_anchors(config.anchor_sizes, config.anchor_ratios)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.01
    return state


@pytest.fixture(scope="module")
def real_state() -> dict[str, torch.Tensor]:
    return random_real_layout()


def test_key_list_is_the_real_one() -> None:
    rows = real_key_list()
    assert len(rows) == 640
    model_keys = set(build_detector(get_preset("vg-r101-c4-attr"), seed=None).state_dict())
    checkpoint_keys = {key for key, _, _ in rows if not key.endswith("num_batches_tracked")}
    assert model_keys == checkpoint_keys


def assert_loaded(detector, state: dict[str, torch.Tensor]) -> None:
    own = detector.state_dict()
    for key, value in remap_keys(state).items():
        torch.testing.assert_close(own[key], torch.as_tensor(value).float(), rtol=0, atol=0)


def test_hf_bin_round_trip(tmp_path: Path, real_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "pytorch_model.bin"
    torch.save(real_state, path)
    detector = load_detector(path, optimize=False)
    assert detector.config.name == "vg-r101-c4-attr"
    assert_loaded(detector, real_state)
    assert len(detector.object_names) == 1600 and detector.object_names[0] == "yolk"


def test_hf_bin_without_optional_keys(tmp_path: Path, real_state: dict[str, torch.Tensor]) -> None:
    state = {
        k: v
        for k, v in real_state.items()
        if not k.endswith(("num_batches_tracked", "cell_anchors.0"))
    }
    path = tmp_path / "model.pth"
    torch.save({"model": state}, path)
    assert_loaded(load_detector(path, optimize=False), state)


def test_detectron2_pickle_with_gamma_beta(
    tmp_path: Path, real_state: dict[str, torch.Tensor]
) -> None:
    arrays = {}
    for key, value in real_state.items():
        if key.endswith("num_batches_tracked"):
            continue
        key = key.replace("norm.weight", "norm.gamma").replace("norm.bias", "norm.beta")
        arrays[key] = value.numpy()
    path = tmp_path / "faster_rcnn_from_caffe_attr.pkl"
    with path.open("wb") as handle:
        pickle.dump({"model": arrays, "__author__": "test"}, handle)
    detector = load_detector(path, optimize=False)
    assert_loaded(detector, real_state)


def test_missing_and_unexpected_keys_are_listed(
    tmp_path: Path, real_state: dict[str, torch.Tensor]
) -> None:
    state = dict(real_state)
    del state["roi_heads.box_predictor.attr_score.bias"]
    state["roi_heads.box_predictor.extra.weight"] = torch.zeros(3)
    path = tmp_path / "broken.bin"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError) as error:
        load_detector(path)
    message = str(error.value)
    assert "roi_heads.box_predictor.attr_score.bias" in message
    assert "roi_heads.box_predictor.extra.weight" in message
    assert str(path) in message


def test_wrong_shape_names_the_key(tmp_path: Path, real_state: dict[str, torch.Tensor]) -> None:
    state = dict(real_state)
    state["roi_heads.box_predictor.cls_score.bias"] = torch.zeros(81)
    path = tmp_path / "coco.bin"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError, match=r"cls_score\.bias.*\(81,\)"):
        load_detector(path)


def test_safetensors_round_trip_keeps_config(tmp_path: Path) -> None:
    config = get_preset("tiny").replace(name="tiny-custom", num_classes=5, max_boxes=7)
    detector = build_detector(config, seed=3)
    path = save_detector(detector, tmp_path / "det.safetensors")
    loaded = load_detector(path, optimize=False)
    assert loaded.config == config
    for key, value in detector.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


def test_remap_keys_is_pure_and_strict() -> None:
    state = {
        "module.backbone.stem.conv1.norm.gamma": torch.ones(2),
        "backbone.stem.conv1.norm.num_batches_tracked": torch.tensor(1),
    }
    assert set(remap_keys(state)) == {"backbone.stem.conv1.norm.weight"}
    assert set(state) == {
        "module.backbone.stem.conv1.norm.gamma",
        "backbone.stem.conv1.norm.num_batches_tracked",
    }
    with pytest.raises(CheckpointMismatchError, match="two checkpoint keys"):
        remap_keys({"a.gamma": torch.ones(1), "a.weight": torch.ones(1)})


def test_numpy_scalars_in_pickle_load(tmp_path: Path) -> None:
    detector = build_detector(get_preset("tiny"), seed=1)
    arrays = {k: v.numpy().astype(np.float32) for k, v in detector.state_dict().items()}
    path = tmp_path / "tiny.pkl"
    with path.open("wb") as handle:
        pickle.dump({"model": arrays}, handle, protocol=2)
    loaded = load_detector(path, preset="tiny", optimize=False)
    torch.testing.assert_close(
        loaded.state_dict()["backbone.stem.conv1.weight"],
        detector.state_dict()["backbone.stem.conv1.weight"],
    )


@pytest.fixture
def hash_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file hashed through ``weights.sha256_file`` (either name of it), in order."""
    real = weights.resolve.sha256_file
    calls: list[Path] = []

    def counting(path: str | os.PathLike[str]) -> str:
        calls.append(Path(path).resolve())
        return real(path)

    monkeypatch.setattr(weights.resolve, "sha256_file", counting)
    monkeypatch.setattr(weights, "sha256_file", counting)
    return calls


def test_checkpoint_info_of_a_file(tmp_path: Path, hash_calls: list[Path]) -> None:
    path = save_detector(build_detector(get_preset("tiny"), seed=3), tmp_path / "det.safetensors")
    detector = load_detector(path)
    assert detector.checkpoint == CheckpointInfo(
        name="det.safetensors",
        path=str(path),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        preset="tiny",
    )
    assert hash_calls == [path.resolve()]  # hashed once per load


def test_checkpoint_info_of_a_registry_name(hash_calls: list[Path]) -> None:
    detector = load_detector("shapes-detector", preset=None)
    info = detector.checkpoint
    assert (info.name, info.preset) == ("shapes-detector", "shapes")
    assert info.path is not None and Path(info.path).name == "model.safetensors"
    assert info.sha256 == hashlib.sha256(Path(info.path).read_bytes()).hexdigest()
    # Verification hashed it; the record reuses that digest instead of reading it again.
    assert hash_calls.count(Path(info.path).resolve()) == 1


def test_checkpoint_info_records_the_preset_used(tmp_path: Path) -> None:
    path = save_detector(build_detector(get_preset("tiny"), seed=1), tmp_path / "t.safetensors")
    detector = load_detector(path, overrides={"selection": "max-class"})
    assert detector.checkpoint.preset == "tiny"
    assert detector.config.selection == "max-class"


def test_load_applies_options(tmp_path: Path) -> None:
    path = save_detector(build_detector(get_preset("tiny"), seed=1), tmp_path / "t.safetensors")
    request = InferenceOptions(res5_chunk=4, precision="bf16", allow_emulated_bf16=True)
    detector = load_detector(path, options=request)
    assert detector.bn_folded
    assert detector.requested_options == request
    assert detector.options.res5_chunk == 4
    plain = load_detector(path, device="cpu", options=request, optimize=False)
    assert not plain.bn_folded and plain.options.res5_chunk == 4
    with pytest.raises(ValueError, match="device"):
        load_detector(path, device="gpu")


def test_detector_config_reads_no_weights(tmp_path: Path, hash_calls: list[Path]) -> None:
    custom = get_preset("tiny").replace(name="tiny-custom", max_boxes=7)
    path = save_detector(build_detector(custom, seed=1), tmp_path / "c.safetensors")
    assert detector_config(path) == custom
    assert detector_config(path, overrides={"selection": "max-class"}) == custom.replace(
        selection="max-class"
    )
    assert detector_config(path, preset="tiny") == get_preset("tiny")
    assert detector_config("shapes-detector") == get_preset("shapes")
    # A registry model need not be on this machine: its record names the preset.
    assert detector_config("vg-r101-c4-attr") == get_preset("vg-r101-c4-attr")
    assert hash_calls == []
    with pytest.raises(FileNotFoundError):
        detector_config(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="min_boxes"):
        detector_config(path, overrides={"min_boxes": 50})


def test_load_with_a_finished_config(tmp_path: Path) -> None:
    path = save_detector(build_detector(get_preset("tiny"), seed=1), tmp_path / "t.safetensors")
    config = detector_config(path, overrides={"max_boxes": 6})
    detector = load_detector(path, config=config)
    assert detector.config == config and detector.checkpoint.preset == "tiny"
    with pytest.raises(ValueError, match="config"):
        load_detector(path, config=config, preset="tiny")


# -- stored anchors: the checkpoint's win; only a wrong count or shape is refused ---------------
def _tiny_state_with_zero_deltas(anchors: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """A tiny detector's weights whose RPN predicts zero deltas, so every proposal is a
    decoded anchor; ``anchors`` replaces the stored cell anchors."""
    state = {
        k: v.clone() for k, v in build_detector(get_preset("tiny"), seed=0).state_dict().items()
    }
    state["proposal_generator.rpn_head.anchor_deltas.weight"].zero_()
    state["proposal_generator.rpn_head.anchor_deltas.bias"].zero_()
    if anchors is not None:
        state["proposal_generator.anchor_generator.cell_anchors.0"] = anchors
    return state


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    from skimage import data

    return data.coffee()  # 400 x 600 RGB


def _proposals(detector, photo) -> tuple[torch.Tensor, PreparedImage]:
    image = prepare(photo, config=detector.config, image_id="x")
    with torch.inference_mode():
        raw = detector.forward_raw(image.tensor[None], image_scales=[image.scale])
    return raw.rpn.proposals[0], image


def _on_grid(boxes: list[tuple[float, ...]], cell: torch.Tensor, size: tuple[int, int]) -> bool:
    """Whether every box is, within 1e-3 px, an anchor of ``cell`` on the 16-px grid."""
    height, width = (-(-side // 16) + 1 for side in size)
    ys, xs = torch.meshgrid(torch.arange(height) * 16.0, torch.arange(width) * 16.0, indexing="ij")
    shifts = torch.stack((xs, ys, xs, ys), dim=-1).reshape(-1, 1, 4)
    grid = (shifts + cell.reshape(1, -1, 4)).reshape(-1, 4).double()
    gaps = (torch.tensor(boxes, dtype=torch.float64)[:, None, :] - grid[None]).abs().amax(-1)
    return bool((gaps.amin(dim=1) < 1e-3).all())


def test_stored_anchors_are_used_and_logged(tmp_path: Path, coffee, caplog) -> None:
    tiny = get_preset("tiny")
    preset_cell = cell_anchors(tiny.anchor_sizes, tiny.anchor_ratios)
    stored = preset_cell * 1.5 + 0.5  # other anchors, same count
    path = tmp_path / "model.pth"
    torch.save({"model": _tiny_state_with_zero_deltas(stored)}, path)
    with caplog.at_level(logging.INFO, logger="detector"):
        detector = load_detector(
            path, preset="tiny", overrides={"proposals": "detectron2"}, optimize=False
        )
    messages = [r.getMessage() for r in caplog.records if "cell anchors" in r.getMessage()]
    assert len(messages) == 1 and "differ from preset 'tiny'" in messages[0]
    assert str(stored[0].tolist()) in messages[0] and str(preset_cell[0].tolist()) in messages[0]
    torch.testing.assert_close(
        detector.proposal_generator.anchor_generator.base_anchors, stored, rtol=0, atol=0
    )
    proposals, image = _proposals(detector, coffee)
    # Zero deltas: each proposal is a stored anchor, clipped to the image (detectron2 rules).
    h, w = image.resized_size
    inside = [
        tuple(box)
        for box in proposals.tolist()
        if box[0] > 0 and box[1] > 0 and box[2] < w and box[3] < h
    ]
    assert inside and _on_grid(inside, stored, (h, w))
    assert not any(_on_grid([box], preset_cell, (h, w)) for box in inside)


def test_caffe_mode_overrides_stored_anchors(tmp_path: Path, coffee, caplog) -> None:
    from detector.proposals import caffe_cell_anchors

    tiny = get_preset("tiny")
    stored = cell_anchors(tiny.anchor_sizes, tiny.anchor_ratios) * 1.5
    path = tmp_path / "model.pth"
    torch.save({"model": _tiny_state_with_zero_deltas(stored)}, path)
    with caplog.at_level(logging.INFO, logger="detector"):
        detector = load_detector(path, preset="tiny", optimize=False)  # bottom-up: caffe
    assert detector.config.proposal_mode == "caffe"
    messages = [r.getMessage() for r in caplog.records if "cell anchors" in r.getMessage()]
    assert len(messages) == 1 and "caffe proposals override them" in messages[0]
    proposals, image = _proposals(detector, coffee)
    # Caffe's decoding of a zero delta moves x2, y2 by +1; clipping is to W - 1, H - 1.
    caffe = caffe_cell_anchors(base_size=16, sizes=tiny.anchor_sizes, ratios=tiny.anchor_ratios)
    h, w = image.resized_size
    inside = [
        tuple(box)
        for box in proposals.tolist()
        if box[0] > 0 and box[1] > 0 and box[2] < w - 1 and box[3] < h - 1
    ]
    assert inside and _on_grid(inside, caffe + torch.tensor([0.0, 0.0, 1.0, 1.0]), (h, w))
    assert float(proposals[:, 2].max()) <= w - 1 and float(proposals[:, 3].max()) <= h - 1


def test_nine_anchors_are_refused_naming_both_counts(tmp_path: Path) -> None:
    state = _tiny_state_with_zero_deltas(torch.zeros(9, 4))
    # A real 9-anchor checkpoint (3 sizes x 3 ratios) has a 9-anchor RPN head too.
    for key, rows in (("objectness_logits", 9), ("anchor_deltas", 36)):
        for part in ("weight", "bias"):
            name = f"proposal_generator.rpn_head.{key}.{part}"
            state[name] = state[name][:rows].clone()
    path = tmp_path / "nine.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointMismatchError) as error:
        load_detector(path, preset="tiny")
    message = str(error.value)
    assert "stores 9 cell anchors" in message and "makes 12 (4 sizes x 3 ratios)" in message
    assert "'tiny'" in message and str(path) in message


def test_anchors_of_the_wrong_shape_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "odd.pth"
    torch.save({"model": _tiny_state_with_zero_deltas(torch.zeros(12, 5))}, path)
    with pytest.raises(CheckpointMismatchError, match=r"of shape \[12, 5\]; expected \[12, 4\]"):
        load_detector(path, preset="tiny")
