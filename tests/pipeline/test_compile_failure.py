"""The local engine's handling of what only a GPU run meets, exercised on the CPU: a failed
``torch.compile`` stops the run at once (exit 4), and an image that does not fit in device
memory fails alone while the others keep their records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

from detector import build_detector, get_preset
from detector.model import Detector, RawOutput
from detector.preprocess import PreparedImage, prepare
from detector.structures import RegionFeatures
from pipeline.commands.extract import main
from pipeline.errors import EXIT_ALL_FAILED, EXIT_ERROR
from pipeline.extract.engines.local import detect_or_fail, is_compile_failure
from pipeline.features.manifest import manifest_path, read_manifest

TINY = get_preset("tiny")
NO_COMPILER = "Failed to find C compiler. Please specify via CC environment variable"


def compiler_failure() -> Exception:
    """What TorchDynamo raises when Inductor cannot compile (here: no C compiler)."""
    from torch._dynamo.exc import BackendCompilerFailed

    return BackendCompilerFailed(lambda gm, inputs: gm, RuntimeError(NO_COMPILER), None)


def failing_forward(monkeypatch: pytest.MonkeyPatch, error: Exception) -> list[int]:
    """Every detector forward raises ``error``; returns the log of batch sizes."""
    calls: list[int] = []

    def forward_raw(
        self: Detector, images: torch.Tensor, *, image_scales: list[float]
    ) -> RawOutput:
        calls.append(len(images))
        raise error

    monkeypatch.setattr(Detector, "forward_raw", forward_raw)
    return calls


def extract(photos: Path, out: Path, checkpoint: Path, *flags: str) -> int:
    common = ["--detector", str(checkpoint), "--device", "cpu", "--workers", "0", "-q"]
    return main([str(photos), "--out", str(out), *common, "--batch-size", "1", *flags])


def test_a_compile_failure_stops_the_run_at_once(
    monkeypatch, capsys, tmp_path, photos, tiny_checkpoint
) -> None:
    calls = failing_forward(monkeypatch, compiler_failure())
    out = tmp_path / "feats.tsv"
    assert extract(photos, out, tiny_checkpoint, "--compile") == EXIT_ERROR
    assert calls == [1]  # the first image only, not once per image
    err = capsys.readouterr().err
    assert "--compile: torch.compile failed (BackendCompilerFailed: " in err
    assert NO_COMPILER in err
    assert "run without --compile" in err
    manifest = read_manifest(manifest_path(out))
    assert manifest["status"] == "error"
    assert "CompileFailedError" in manifest["error"]


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        ((), "compiler"),  # compile off: whatever it is, it is one image's failure
        (("--compile",), "other"),  # compile on, but not the compiler's error
    ],
)
def test_other_detector_errors_fail_image_by_image(
    monkeypatch, tmp_path, photos, tiny_checkpoint, flags, error
) -> None:
    raised = compiler_failure() if error == "compiler" else ValueError("bad values")
    calls = failing_forward(monkeypatch, raised)
    out = tmp_path / "feats.tsv"
    assert extract(photos, out, tiny_checkpoint, *flags) == EXIT_ALL_FAILED
    assert calls == [1, 1, 1, 1]  # every photo was tried
    failures = read_manifest(manifest_path(out))["failures"]
    assert len(failures) == 4
    assert all(f["reason"].startswith("detector failed: ") for f in failures)


def test_compile_failures_are_recognised_through_their_causes() -> None:
    from torch._inductor.exc import InductorError

    assert is_compile_failure(compiler_failure())
    assert is_compile_failure(InductorError(RuntimeError(NO_COMPILER), None))
    try:
        try:
            raise compiler_failure()
        except Exception as inner:
            raise RuntimeError("while running the batch") from inner
    except RuntimeError as outer:
        assert is_compile_failure(outer)
    assert not is_compile_failure(RuntimeError(NO_COMPILER))
    assert not is_compile_failure(torch.cuda.OutOfMemoryError("CUDA out of memory"))


def test_the_engine_reports_only_the_image_that_cannot_fit(monkeypatch) -> None:
    detector = build_detector(TINY, seed=0)
    coffee = data.coffee()
    images = [
        prepare(np.roll(coffee, 50 * i, axis=1), config=TINY, image_id=name)
        for i, name in enumerate("abc")
    ]
    expected = detector.detect(images, batch_size=1)
    real = Detector._detect_same_size
    calls: list[list[str]] = []

    def stub(
        self: Detector, batch: list[PreparedImage], boxes: list[torch.Tensor] | None
    ) -> list[RegionFeatures]:
        calls.append([image.image_id for image in batch])
        if "b" in calls[-1]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")
        return real(self, batch, boxes)

    monkeypatch.setattr(Detector, "_detect_same_size", stub)
    paths = {name: f"/photos/{name}.jpg" for name in "abc"}
    detected = detect_or_fail(detector, images, paths, 3)
    # No image-by-image rerun after the split: a and c ran once each.
    assert calls == [["a", "b", "c"], ["a"], ["b", "c"], ["b"], ["c"]]
    assert [region.image_id for region in detected.regions] == ["a", "c"]
    for got, want in zip(detected.regions, [expected[0], expected[2]], strict=True):
        np.testing.assert_array_equal(got.features, want.features)
    (failure,) = detected.failures
    assert (failure.image_id, failure.path) == ("b", "/photos/b.jpg")
    assert failure.reason == "out of device memory even alone: CUDA out of memory. Tried to " + (
        "allocate 9 GiB"
    )
    assert detected.limits.fits == {images[0].resized_size: 1}
    calls.clear()
    again = detect_or_fail(detector, images, paths, 3, None, detected.limits)
    assert calls == [["a"], ["b"], ["c"]]  # the next batch starts at the size that fit
    assert again.limits == detected.limits
