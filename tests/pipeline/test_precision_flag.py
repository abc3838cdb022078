"""``--precision`` on the command line: refusals before any model loads, the manifest's record
that --resume and merge compare, and the deprecated ``--autocast``. The CPU's bf16 check is
faked both ways (``detector.precision.cpu_bf16_instructions``), so these run on any machine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import detector.precision
import pipeline.extract.steps
from pipeline.commands import answer as answer_cli
from pipeline.commands.extract import main
from pipeline.errors import EXIT_OK, EXIT_USAGE
from pipeline.features.manifest import manifest_path, read_manifest
from pipeline.features.output import read_features


def extract(*args: object) -> int:
    return main([str(arg) for arg in args])


def fake_cpu(monkeypatch: pytest.MonkeyPatch, *instructions: str) -> None:
    """This CPU has exactly ``instructions`` among the bf16 ones."""
    monkeypatch.setattr(detector.precision, "cpu_bf16_instructions", lambda: instructions)


@pytest.fixture
def no_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded before the precision was checked")

    monkeypatch.setattr(pipeline.extract.steps, "load_model", refuse)
    monkeypatch.setattr("pipeline.api.answer", refuse)


@pytest.fixture
def flags(tiny_checkpoint: Path) -> list[object]:
    return ["--detector", tiny_checkpoint, "--device", "cpu", "--workers", 0, "-q"]


@pytest.mark.parametrize(
    ("precision", "instructions", "message"),
    [
        ("bf16", (), "--precision bf16: precision bf16: this CPU has no bf16 instructions"),
        ("fp16", ("amx_bf16",), "--precision fp16: precision fp16 runs on CUDA only"),
    ],
)
def test_a_precision_this_cpu_cannot_run_is_exit_2_before_any_model_loads(
    monkeypatch, capsys, tmp_path, photos, flags, no_model_loads, precision, instructions, message
) -> None:
    fake_cpu(monkeypatch, *instructions)
    out = tmp_path / "feats.tsv"
    assert extract(photos, "--out", out, *flags, "--precision", precision) == EXIT_USAGE
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    # An image and models that are here (checked first, before torch): the precision is wrong.
    image = str(Path(__file__).resolve().parents[2] / "examples" / "scene_000.png")
    shapes = ["--detector", "shapes-detector", "--encoder", "shapes-lxmert"]
    assert answer_cli.main([image, "what?", *shapes, "--precision", precision]) == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_bf16_where_the_cpu_has_it_is_recorded_and_resume_refuses_another_precision(
    monkeypatch, capsys, tmp_path, photos, flags
) -> None:
    fake_cpu(monkeypatch, "avx512_bf16")
    fp32, bf16 = tmp_path / "fp32.tsv", tmp_path / "bf16.tsv"
    assert extract(photos, "--out", fp32, *flags, "--limit", 2) == EXIT_OK
    assert extract(photos, "--out", bf16, *flags, "--limit", 2, "--precision", "bf16") == EXIT_OK
    assert read_manifest(manifest_path(fp32))["settings"]["precision"] == "fp32"
    assert read_manifest(manifest_path(bf16))["settings"]["precision"] == "bf16"
    for low, exact in zip(read_features(bf16), read_features(fp32), strict=True):
        assert low.image_id == exact.image_id
        assert low.features.dtype == exact.features.dtype == np.float32
    capsys.readouterr()

    before = fp32.read_bytes()
    resume = [photos, "--out", fp32, *flags, "--resume"]
    assert extract(*resume, "--precision", "bf16") == EXIT_USAGE
    err = capsys.readouterr().err
    assert 'precision (numeric precision of the detector): "bf16" vs "fp32"' in err
    assert fp32.read_bytes() == before
    # The same precision resumes: precision was the only difference.
    assert extract(*resume, "--precision", "fp32") == EXIT_OK
    assert len(list(read_features(fp32))) == 4


def test_merge_refuses_shards_of_different_precisions(
    monkeypatch, capsys, tmp_path, photos, flags
) -> None:
    fake_cpu(monkeypatch, "amx_bf16")
    out = tmp_path / "feats.tsv"
    assert extract(photos, "--out", out, *flags, "--shard", "1/2") == EXIT_OK
    assert extract(photos, "--out", out, *flags, "--shard", "2/2", "--precision", "bf16") == 0
    shards = [tmp_path / "feats.shard-1-of-2.tsv", tmp_path / "feats.shard-2-of-2.tsv"]
    capsys.readouterr()
    assert main(["merge", *map(str, shards), "--out", str(tmp_path / "all.tsv")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "precision (numeric precision of the detector): " in err and '"bf16"' in err
    assert not (tmp_path / "all.tsv").exists()


def test_autocast_is_a_deprecated_alias_of_precision(capsys, tmp_path, photos, flags) -> None:
    alias, plain = tmp_path / "alias.tsv", tmp_path / "plain.tsv"
    assert extract(photos, "--out", alias, *flags, "--limit", 1, "--autocast", "none") == 0
    assert "--autocast is deprecated; use --precision fp32" in capsys.readouterr().err
    assert extract(photos, "--out", plain, *flags, "--limit", 1, "--precision", "fp32") == 0
    assert "deprecated" not in capsys.readouterr().err
    assert alias.read_bytes() == plain.read_bytes()
    assert read_manifest(manifest_path(alias))["settings"]["precision"] == "fp32"


def test_autocast_contradicting_precision_is_exit_2(
    capsys, tmp_path, photos, flags, no_model_loads
) -> None:
    out = tmp_path / "feats.tsv"
    code = extract(photos, "--out", out, *flags, "--autocast", "bf16", "--precision", "fp32")
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--autocast is deprecated" in err
    assert "--autocast bf16 (= --precision bf16) contradicts --precision fp32" in err
    assert not out.exists()
