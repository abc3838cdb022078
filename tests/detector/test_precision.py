"""--precision: which parts run in bf16 (dtype hooks on CPU autocast), fp32 exactly as plain fp32,
the CPU's bf16 check and where each precision is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from skimage import data
from torch import nn
from torchvision.ops import roi_pool

import detector.model as model_module
import detector.precision as precision_module
import detector.roi_heads as roi_heads_module
from detector import InferenceOptions, build_detector, get_preset
from detector.precision import PRECISION_NAMES, check_precision, cpu_bf16_instructions
from detector.preprocess import PreparedImage, prepare
from pipeline.flags import PRECISION_CHOICES

TINY = get_preset("tiny")
#: bf16 on any CPU: these tests check which dtype each part runs in, not speed.
BF16 = InferenceOptions(precision="bf16", allow_emulated_bf16=True)


@pytest.fixture(scope="module")
def coffee() -> PreparedImage:
    return prepare(data.coffee(), config=TINY, image_id="coffee")


def test_the_command_line_spells_the_detectors_names() -> None:
    assert PRECISION_CHOICES == PRECISION_NAMES == ("fp32", "bf16", "fp16")


def test_bf16_runs_the_convolutions_in_bf16_and_the_rest_in_fp32(
    monkeypatch: pytest.MonkeyPatch, coffee: PreparedImage
) -> None:
    detector = build_detector(TINY, seed=0).optimize_for_inference(BF16)
    convs: dict[str, torch.dtype] = {}
    for name, module in detector.named_modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(
                lambda m, i, out, name=name: convs.__setitem__(name, out.dtype)
            )
    linears: dict[str, tuple[torch.dtype, torch.dtype]] = {}
    for name, module in detector.roi_heads.box_predictor.named_modules():
        if isinstance(module, nn.Linear):
            module.register_forward_hook(
                lambda m, i, out, name=name: linears.__setitem__(name, (i[0].dtype, out.dtype))
            )
    res5_outputs: list[torch.Tensor] = []
    detector.roi_heads.res5.register_forward_hook(lambda m, i, out: res5_outputs.append(out))
    pooled: list[torch.dtype] = []

    def spy_pool(features: torch.Tensor, rois: torch.Tensor, *args: object) -> torch.Tensor:
        pooled.extend([features.dtype, rois.dtype])
        return roi_pool(features, rois, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(roi_heads_module, "roi_pool", spy_pool)
    selected: list[torch.dtype] = []
    real_select = model_module.select_regions

    def spy_select(config, **tensors):  # type: ignore[no-untyped-def]
        selected.extend(t.dtype for t in tensors.values() if isinstance(t, torch.Tensor))
        return real_select(config, **tensors)

    monkeypatch.setattr(model_module, "select_regions", spy_select)
    with torch.inference_mode():
        raw = detector.forward_raw(coffee.tensor[None])
        (regions,) = detector.detect([coffee])

    # Every convolution of trunk, RPN head and res5 ran in bf16 ...
    trunk_rpn_res5 = ("backbone.", "proposal_generator.rpn_head.", "roi_heads.res5.")
    assert convs and all(name.startswith(trunk_rpn_res5) for name in convs)
    assert set(convs.values()) == {torch.bfloat16}, convs
    assert raw.features.dtype == torch.bfloat16
    # ... RoI pooling, the predictor's Linear layers and selection in fp32.
    assert pooled and set(pooled) == {torch.float32}
    assert set(linears) == {"cls_score", "bbox_pred", "fc_attr", "attr_score"}
    assert set(linears.values()) == {(torch.float32, torch.float32)}, linears
    assert selected and set(selected) == {torch.float32}
    # The mean pool is the fp32 mean of res5's bf16 output, not a bf16 mean.
    count = len(raw.rpn.proposals[0])
    outputs = res5_outputs[: -(-count // detector.options.res5_chunk)]
    assert {o.dtype for o in outputs} == {torch.bfloat16}
    expected = torch.cat([o.float().mean(dim=(2, 3)) for o in outputs])
    assert torch.equal(raw.roi.features, expected)
    assert not torch.equal(expected, expected.bfloat16().float())
    for name in ("class_logits", "deltas", "attr_logits"):
        assert getattr(raw.roi, name).dtype == torch.float32, name
    assert regions.features.dtype.name == "float32"


def test_bf16_decodes_proposals_in_fp32(coffee: PreparedImage) -> None:
    """Proposals from the bf16 head equal those decoded from the same head outputs with no
    autocast at all."""
    detector = build_detector(TINY, seed=0).optimize_for_inference(BF16)
    rpn = detector.proposal_generator
    with torch.inference_mode():
        with detector.low_precision():
            features = detector.backbone(coffee.tensor[None])
            head = rpn.rpn_head(features)
            under_autocast = rpn(features, coffee.resized_size)
        assert head[0].dtype == torch.bfloat16
        handle = rpn.rpn_head.register_forward_hook(lambda m, i, out: head)
        plain = rpn(features.float(), coffee.resized_size)
        handle.remove()
    assert under_autocast.proposals[0].dtype == torch.float32
    assert len(under_autocast.proposals[0]) > 0
    for ours, reference in zip(under_autocast.proposals, plain.proposals, strict=True):
        assert torch.equal(ours, reference)


def test_fp32_is_the_plain_fp32_network(coffee: PreparedImage) -> None:
    """The default path computes exactly what a plain fp32 forward written here computes."""
    detector = build_detector(TINY, seed=0).optimize_for_inference()
    assert detector.options.precision == "fp32" and detector.options.precision_dtype is None
    heads = detector.roi_heads
    predictor = heads.box_predictor
    with torch.inference_mode():
        x = coffee.tensor[None]
        raw = detector.forward_raw(x)
        features = detector.backbone(x)
        proposals = detector.proposal_generator(features, coffee.resized_size).proposals[0]
        rois = torch.cat([torch.zeros(len(proposals), 1), proposals], dim=1)
        pooled = roi_pool(features, rois, heads.pooler_resolution, heads.spatial_scale)
        chunks = pooled.split(detector.options.res5_chunk)
        region = torch.cat([heads.res5(chunk).mean(dim=(2, 3)) for chunk in chunks])
        logits = F.linear(region, predictor.cls_score.weight, predictor.cls_score.bias)
        deltas = F.linear(region, predictor.bbox_pred.weight, predictor.bbox_pred.bias)
        embedded = predictor.cls_embedding.weight[logits.argmax(dim=1)]
        hidden = F.relu(predictor.fc_attr(torch.cat([region, embedded], dim=1)))
        attrs = predictor.attr_score(hidden)
    assert torch.equal(raw.features, features)
    assert torch.equal(raw.rpn.proposals[0], proposals)
    for name, expected in (
        ("features", region),
        ("class_logits", logits),
        ("deltas", deltas),
        ("attr_logits", attrs),
    ):
        assert getattr(raw.roi, name).dtype == torch.float32
        assert torch.equal(getattr(raw.roi, name), expected), name


def test_bf16_features_stay_close_to_fp32_on_the_same_boxes(coffee: PreparedImage) -> None:
    fp32 = build_detector(TINY, seed=0).optimize_for_inference()
    bf16 = build_detector(TINY, seed=0).optimize_for_inference(BF16)
    with torch.inference_mode():
        reference = fp32.forward_raw(coffee.tensor[None])
        boxes = reference.rpn.proposals
        low = bf16.forward_raw(coffee.tensor[None], proposals=boxes)
    cosine = F.cosine_similarity(low.roi.features, reference.roi.features, dim=1)
    assert cosine.min() > 0.99
    assert not torch.equal(low.roi.features, reference.roi.features)  # bf16 did run


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n",
            ("avx512_bf16", "amx_bf16"),
        ),
        (
            "processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\n\n"
            "processor\t: 1\nflags: fpu avx2 amx_bf16\n",
            ("amx_bf16",),
        ),
        ("flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw\n", ()),
        ("Features\t: fp asimd sve bf16 i8mm\n", ("bf16",)),
        ("model name\t: some CPU with avx512_bf16 in its name\n", ()),
    ],
)
def test_cpu_bf16_instructions_from_cpuinfo(
    tmp_path: Path, text: str, expected: tuple[str, ...]
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    assert cpu_bf16_instructions(cpuinfo) == expected


def test_without_cpuinfo_torchs_probes_decide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert cpu_bf16_instructions(tmp_path / "absent") == ("amx_bf16",)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert cpu_bf16_instructions(tmp_path / "absent") == ()


def test_bf16_on_a_cpu_without_bf16_is_refused_unless_forced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision_module, "cpu_bf16_instructions", lambda: ())
    with pytest.raises(ValueError, match=r"no bf16 instructions.*avx512_bf16.*use fp32"):
        check_precision("bf16", cpu)
    with pytest.raises(ValueError, match="bf16"):
        InferenceOptions(precision="bf16").resolve()
    with pytest.raises(ValueError, match="bf16"):
        build_detector(TINY, seed=0).optimize_for_inference(InferenceOptions(precision="bf16"))
    assert BF16.resolve().precision == "bf16"  # forced: for measuring drift
    check_precision("fp32", cpu)
    monkeypatch.setattr(precision_module, "cpu_bf16_instructions", lambda: ("amx_bf16",))
    assert InferenceOptions(precision="bf16").resolve().precision_dtype == torch.bfloat16


def test_fp16_runs_on_cuda_only_and_bf16_on_cpu_or_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(ValueError, match="fp16 runs on CUDA only"):
        InferenceOptions(precision="fp16").resolve()
    with pytest.raises(ValueError, match="fp16"):
        InferenceOptions(precision="fp16", allow_emulated_bf16=True).resolve()
    with pytest.raises(ValueError, match="cpu or cuda"):
        InferenceOptions(device="meta", precision="bf16").resolve()
    # Resolving needs no GPU: the CUDA rules are checked by name.
    for name in PRECISION_NAMES:
        assert InferenceOptions(device="cuda", precision=name).resolve().precision == name
    # A T4 (7.5) has no native bf16: refused like a CPU without bf16 instructions.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    with pytest.raises(ValueError, match="no native bf16"):
        InferenceOptions(device="cuda", precision="bf16").resolve()
    assert InferenceOptions(device="cuda", precision="fp16").resolve().precision == "fp16"
    detector = build_detector(TINY, seed=0).optimize_for_inference(BF16)
    with pytest.raises(ValueError, match="cpu or cuda"):
        detector.move_to("meta")
