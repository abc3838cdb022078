"""weights.defaults: the default model names and the one device rule."""

from __future__ import annotations

import warnings

import pytest
import torch

from weights import REGISTRY
from weights.defaults import (
    CPU_FALLBACK_MESSAGE,
    DEFAULT_DETECTOR,
    DEFAULT_DEVICE,
    DEFAULT_ENCODER,
    MIN_CUDA_CAPABILITY,
    SHAPES_DETECTOR,
    SHAPES_ENCODER,
    SHAPES_NLVR2,
    DeviceError,
    resolve_device,
)


def fake_cuda(
    monkeypatch: pytest.MonkeyPatch,
    *,
    count: int,
    capability: tuple[int, int] = (9, 0),
    name: str = "NVIDIA H100",
) -> None:
    """``count`` visible CUDA devices, each a ``name`` of compute ``capability``."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


def test_defaults_are_the_real_models_and_name_registry_records() -> None:
    assert (DEFAULT_DETECTOR, DEFAULT_ENCODER) == ("vg-r101-c4-attr", "lxmert-vqa")
    assert DEFAULT_DEVICE == "auto"
    for name, kind in [
        (DEFAULT_DETECTOR, "detector"),
        (DEFAULT_ENCODER, "encoder"),
        (SHAPES_DETECTOR, "detector"),
        (SHAPES_ENCODER, "encoder"),
        (SHAPES_NLVR2, "encoder"),
    ]:
        assert REGISTRY[name].kind == kind
    assert REGISTRY[SHAPES_DETECTOR].shipped_dir and REGISTRY[SHAPES_ENCODER].shipped_dir
    assert REGISTRY[SHAPES_NLVR2].shipped_dir


@pytest.mark.parametrize("spec", ["auto", None, " AUTO "])
def test_auto_without_cuda_runs_on_the_cpu_saying_so_only_when_asked(monkeypatch, spec) -> None:
    fake_cuda(monkeypatch, count=0)
    said: list[str] = []
    assert resolve_device(spec, on_fallback=said.append) == torch.device("cpu")
    assert said == []
    assert resolve_device(spec, on_fallback=said.append, on_cpu=said.append).type == "cpu"
    assert said == [CPU_FALLBACK_MESSAGE]


def test_auto_without_cuda_is_no_warning(monkeypatch) -> None:
    fake_cuda(monkeypatch, count=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_device("auto") == torch.device("cpu")


def test_auto_warns_by_default_about_a_gpu_it_cannot_use(monkeypatch) -> None:
    fake_cuda(monkeypatch, count=1, capability=(7, 0), name="Tesla V100-SXM2-16GB")
    with pytest.warns(RuntimeWarning, match="running on the CPU"):
        resolve_device("auto")


def test_auto_takes_cuda_when_there_is_one(monkeypatch) -> None:
    fake_cuda(monkeypatch, count=1)
    said: list[str] = []
    assert resolve_device("auto", on_fallback=said.append) == torch.device("cuda")
    assert said == []


@pytest.mark.parametrize("spec", ["cpu", torch.device("cpu"), "cpu:0"])
def test_cpu_is_always_usable(monkeypatch, spec) -> None:
    fake_cuda(monkeypatch, count=0)
    assert resolve_device(spec, on_fallback=None).type == "cpu"


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", torch.device("cuda", 0)])
def test_explicit_cuda_without_cuda_is_a_usage_error(monkeypatch, spec) -> None:
    fake_cuda(monkeypatch, count=0)
    with pytest.raises(DeviceError, match="no CUDA device is usable here"):
        resolve_device(spec)


def test_cuda_index_past_the_last_device_is_a_usage_error(monkeypatch) -> None:
    fake_cuda(monkeypatch, count=2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match=r"2 CUDA device\(s\), numbered 0..1"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("spec", ["gpu", "banana", "cuda:x", ""])
def test_unknown_names_are_usage_errors(spec) -> None:
    with pytest.raises(DeviceError, match="cpu, cuda, cuda:N or auto"):
        resolve_device(spec)


def test_device_types_this_project_does_not_run_on_are_refused() -> None:
    with pytest.raises(DeviceError, match="not supported"):
        resolve_device("meta")


V100 = "the CUDA device Tesla V100-SXM2-16GB has compute capability 7.0, and this torch's CUDA "
V100 += "build needs 7.5 or newer"


def test_auto_falls_back_from_a_card_this_torch_has_no_kernels_for(monkeypatch) -> None:
    fake_cuda(monkeypatch, count=1, capability=(7, 0), name="Tesla V100-SXM2-16GB")
    said: list[str] = []
    assert resolve_device("auto", on_fallback=said.append) == torch.device("cpu")
    assert said == [V100 + "; running on the CPU"]


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", torch.device("cuda", 1)])
def test_explicit_cuda_on_a_card_too_old_is_a_usage_error_naming_it(monkeypatch, spec) -> None:
    fake_cuda(monkeypatch, count=2, capability=(7, 0), name="Tesla V100-SXM2-16GB")
    with pytest.raises(DeviceError) as caught:
        resolve_device(spec)
    assert str(caught.value) == f"device {str(spec)!r}: {V100}; use cpu, or auto to fall back"


@pytest.mark.parametrize("capability", [MIN_CUDA_CAPABILITY, (7, 5), (8, 6), (12, 0)])
def test_cards_from_turing_on_are_used(monkeypatch, capability) -> None:
    fake_cuda(monkeypatch, count=1, capability=capability, name="NVIDIA T4")
    said: list[str] = []
    assert resolve_device("auto", on_fallback=said.append) == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    assert said == []


@pytest.mark.parametrize("capability", [(6, 1), (7, 0), (7, 2)])
def test_cards_before_turing_are_too_old(monkeypatch, capability) -> None:
    fake_cuda(monkeypatch, count=1, capability=capability, name="old card")
    with pytest.raises(DeviceError, match=f"compute capability {capability[0]}.{capability[1]}"):
        resolve_device("cuda")
