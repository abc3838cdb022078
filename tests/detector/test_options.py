"""Inference options: validation, per-device resolution, and the detector as their one holder."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from skimage import data

from detector import (
    CheckpointInfo,
    InferenceOptions,
    ResolvedOptions,
    build_detector,
    get_preset,
)
from detector.preprocess import prepare

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def coffee():
    return prepare(data.coffee(), config=TINY, image_id="coffee")


def test_cpu_defaults() -> None:
    assert InferenceOptions().resolve() == ResolvedOptions(
        device=torch.device("cpu"),
        precision="fp32",
        channels_last=False,
        res5_chunk=8,
        batch_invariant=True,
        compile=False,
        deterministic=True,
    )


def test_cuda_defaults_resolve_without_a_gpu() -> None:
    resolved = InferenceOptions(device="cuda:0", precision="bf16").resolve()
    assert resolved.device == torch.device("cuda:0")
    assert resolved.channels_last is True
    assert resolved.res5_chunk == 100
    assert resolved.batch_invariant is False and resolved.deterministic is False
    assert resolved.precision == "bf16" and resolved.precision_dtype == torch.bfloat16
    assert InferenceOptions(device="cuda", precision="fp16").resolve().precision_dtype == (
        torch.float16
    )


def test_explicit_values_win_over_defaults() -> None:
    resolved = InferenceOptions(
        device="cuda", channels_last=False, res5_chunk=3, batch_invariant=True, compile=True
    ).resolve()
    assert (resolved.channels_last, resolved.res5_chunk) == (False, 3)
    assert resolved.batch_invariant is True and resolved.compile is True
    assert InferenceOptions(channels_last=True, batch_invariant=False).resolve().channels_last


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"res5_chunk": 0}, "res5_chunk"),
        ({"res5_chunk": -4}, "res5_chunk"),
        ({"res5_chunk": 2.5}, "res5_chunk"),
        ({"res5_chunk": True}, "res5_chunk"),
        ({"precision": "none"}, "precision"),
        ({"precision": "bfloat16"}, "precision"),
        ({"device": "gpu"}, "device"),
    ],
)
def test_invalid_options_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InferenceOptions(**fields)  # type: ignore[arg-type]


def test_a_fresh_detector_states_its_provenance_and_options() -> None:
    detector = build_detector(TINY, seed=0)
    assert detector.checkpoint == CheckpointInfo(
        name="random-init", path=None, sha256=None, preset="tiny"
    )
    assert detector.options == InferenceOptions().resolve()
    assert not detector.bn_folded
    with pytest.raises(AttributeError):
        detector.checkpoint.name = "other"  # type: ignore[misc]


def test_optimize_stores_request_and_resolution() -> None:
    detector = build_detector(TINY, seed=0)
    request = InferenceOptions(res5_chunk=5, precision="bf16", allow_emulated_bf16=True)
    assert detector.optimize_for_inference(request) is detector
    assert detector.bn_folded and not detector.training
    assert detector.requested_options == request
    assert detector.options == request.resolve()
    # Folding happens once: a second call only changes the options.
    weight = detector.backbone.stem.conv1.weight.clone()
    detector.optimize_for_inference(InferenceOptions(res5_chunk=7))
    assert torch.equal(detector.backbone.stem.conv1.weight, weight)
    assert detector.options.res5_chunk == 7


def test_res5_runs_in_chunks_of_the_option(coffee) -> None:
    detector = build_detector(TINY, seed=0).optimize_for_inference(InferenceOptions(res5_chunk=3))
    sizes: list[int] = []
    detector.roi_heads.res5.register_forward_pre_hook(
        lambda module, inputs: sizes.append(int(inputs[0].shape[0]))
    )
    detector.detect([coffee])
    assert sizes and max(sizes) == 3 and sum(sizes) > 3


def test_batch_invariance_follows_the_option(coffee) -> None:
    detector = build_detector(TINY, seed=0).optimize_for_inference()
    batch_sizes: list[int] = []
    detector.backbone.register_forward_pre_hook(
        lambda module, inputs: batch_sizes.append(int(inputs[0].shape[0]))
    )
    detector.detect([coffee, coffee], batch_size=2)
    assert batch_sizes == [1, 1]  # CPU default: each image alone
    detector.apply_options(InferenceOptions(batch_invariant=False))
    batch_sizes.clear()
    detector.detect([coffee, coffee], batch_size=2)
    assert batch_sizes == [2]


def test_move_to_reapplies_the_request_with_the_new_devices_defaults() -> None:
    detector = build_detector(TINY, seed=0).optimize_for_inference(InferenceOptions(res5_chunk=5))
    request = detector.requested_options
    # "meta" is a non-CPU device every machine has: its defaults differ from the CPU's.
    moved = copy.deepcopy(detector).move_to("meta")
    assert moved.device == torch.device("meta")
    assert moved.requested_options == InferenceOptions(device="meta", res5_chunk=5)
    assert moved.options.res5_chunk == 5  # asked for: kept
    assert moved.options.batch_invariant is False  # default: CPU only
    assert detector.move_to("cpu").requested_options == request
    assert detector.options == request.resolve()


def test_apply_options_without_folding_keeps_weights() -> None:
    detector = build_detector(TINY, seed=0)
    state = {k: v.clone() for k, v in detector.state_dict().items()}
    detector.apply_options(InferenceOptions(channels_last=True, res5_chunk=2))
    assert not detector.bn_folded
    assert detector.options.channels_last and detector.options.res5_chunk == 2
    for key, value in detector.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert detector.backbone.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_compile_is_in_place_and_cannot_be_undone() -> None:
    detector = build_detector(TINY, seed=0)
    keys = list(detector.state_dict())
    detector.apply_options(InferenceOptions(compile=True))
    assert detector.options.compile
    assert list(detector.state_dict()) == keys  # checkpoints stay loadable/savable
    with pytest.raises(ValueError, match="compil"):
        detector.apply_options(InferenceOptions(compile=False))
    assert detector.move_to("cpu").options.compile


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_move_to_cuda_and_back(coffee) -> None:
    detector = build_detector(TINY, seed=0).optimize_for_inference()
    (expected,) = detector.detect([coffee])
    detector.move_to("cuda")
    assert detector.device.type == "cuda"
    assert detector.options.channels_last and detector.options.res5_chunk == 100
    assert detector.backbone.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        trunk_cpu = build_detector(TINY, seed=0).backbone(coffee.tensor[None])
        trunk_cuda = detector.forward_raw(coffee.tensor[None].cuda()).features.cpu()
    # cuDNN may use TF32: close, not equal.
    assert (trunk_cuda - trunk_cpu).abs().max() / trunk_cpu.abs().max() < 1e-2
    assert detector.detect([coffee])[0].num_boxes >= TINY.min_boxes
    detector.move_to("cpu")
    assert detector.options == InferenceOptions().resolve()
    (back,) = detector.detect([coffee])
    np.testing.assert_array_equal(back.features, expected.features)


def test_deterministic_makes_cuda_batch_invariant_and_is_the_cpu_default() -> None:
    exact = InferenceOptions(device="cuda", deterministic=True).resolve()
    assert exact.deterministic is True and exact.batch_invariant is True
    # Other per-device defaults are unchanged by the exact mode.
    assert (exact.channels_last, exact.res5_chunk) == (True, 100)
    with pytest.raises(ValueError, match="batch_invariant"):
        InferenceOptions(device="cuda", deterministic=True, batch_invariant=False).resolve()
    # On CPU the default path is already exact; switching batch invariance off is not.
    assert InferenceOptions().resolve().deterministic is True
    assert InferenceOptions(batch_invariant=False).resolve().deterministic is False


def test_exact_numerics_switches_cuda_tf32_and_cudnn_choices_off_and_restores_them() -> None:
    from detector.precision import exact_numerics

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32)
    with cudnn.flags(enabled=True, benchmark=True, deterministic=False, allow_tf32=True):
        matmul.allow_tf32 = True
        try:
            with exact_numerics(torch.device("cuda"), deterministic=True):
                inside = (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32)
                assert inside == (True, False, False) and matmul.allow_tf32 is False
            assert (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32) == (False, True, True)
            assert matmul.allow_tf32 is True
            # Not asked, or not on CUDA: nothing changes.
            for device, asked in ((torch.device("cuda"), False), (torch.device("cpu"), True)):
                with exact_numerics(device, deterministic=asked):
                    assert (cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32) == (
                        True,
                        True,
                        True,
                    )
        finally:
            matmul.allow_tf32 = before[3]
    assert (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32) == before[:3]


def test_bf16_on_cpu_runs_channels_last_and_fp32_stays_nchw() -> None:
    # oneDNN's bf16 convs are NHWC kernels; NCHW pays a reorder at every conv.
    bf16 = InferenceOptions(precision="bf16", allow_emulated_bf16=True).resolve()
    assert bf16.channels_last is True
    assert InferenceOptions().resolve().channels_last is False
    explicit = InferenceOptions(precision="bf16", allow_emulated_bf16=True, channels_last=False)
    assert explicit.resolve().channels_last is False
