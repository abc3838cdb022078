"""``--deterministic``: the exact mode that shards, merge and --resume rest on on a GPU.

No GPU runs here: a CUDA run's record (deterministic false) is made by rewriting a CPU run's
manifest the way a plain CUDA run writes it; the CUDA numerics switches themselves are tested in
tests/detector/test_options.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.commands.extract import main
from pipeline.errors import EXIT_OK, EXIT_USAGE
from pipeline.features.manifest import (
    manifest_path,
    read_manifest,
    recorded_settings,
    write_manifest,
)

MEANING = "deterministic (exact mode: batch-invariant, deterministic numerics (always on CPU))"


def extract(*args: object) -> int:
    return main([str(arg) for arg in args])


@pytest.fixture
def flags(tiny_checkpoint: Path) -> list[object]:
    return ["--detector", tiny_checkpoint, "--device", "cpu", "--workers", 0, "-q"]


def as_a_plain_cuda_run_records_it(output: Path) -> None:
    manifest = read_manifest(manifest_path(output))
    manifest["settings"]["deterministic"] = False
    manifest["device"] = "cuda:0"
    write_manifest(manifest_path(output), manifest)


def test_on_cpu_the_exact_mode_is_the_default_run(tmp_path, photos, flags) -> None:
    plain, exact = tmp_path / "plain.tsv", tmp_path / "exact.tsv"
    assert extract(photos, "--out", plain, *flags, "--limit", 2) == EXIT_OK
    assert extract(photos, "--out", exact, *flags, "--limit", 2, "--deterministic") == EXIT_OK
    assert plain.read_bytes() == exact.read_bytes()
    for output in (plain, exact):
        assert read_manifest(manifest_path(output))["settings"]["deterministic"] is True
    # CPU and CUDA-exact records may be resumed into each other: both are exact.
    resume = [photos, "--out", plain, *flags, "--resume", "--deterministic"]
    assert extract(*resume) == EXIT_OK


def test_resume_and_merge_refuse_to_mix_exact_and_inexact_records(
    capsys, tmp_path, photos, flags
) -> None:
    cuda = tmp_path / "cuda.tsv"
    assert extract(photos, "--out", cuda, *flags, "--limit", 2) == EXIT_OK
    as_a_plain_cuda_run_records_it(cuda)
    before = cuda.read_bytes()
    capsys.readouterr()
    assert extract(photos, "--out", cuda, *flags, "--resume", "--deterministic") == EXIT_USAGE
    assert f"{MEANING}: true vs false" in capsys.readouterr().err
    assert cuda.read_bytes() == before

    out = tmp_path / "feats.tsv"
    assert extract(photos, "--out", out, *flags, "--shard", "1/2") == EXIT_OK
    assert extract(photos, "--out", out, *flags, "--shard", "2/2") == EXIT_OK
    first, second = (tmp_path / f"feats.shard-{k}-of-2.tsv" for k in (1, 2))
    as_a_plain_cuda_run_records_it(second)
    capsys.readouterr()
    assert main(["merge", str(first), str(second), "--out", str(tmp_path / "all.tsv")]) == 2
    assert MEANING in capsys.readouterr().err
    assert not (tmp_path / "all.tsv").exists()


@pytest.mark.parametrize(("device", "exact"), [("cpu", True), ("cuda", False), ("cuda:1", False)])
def test_manifests_from_before_the_flag_count_as_what_they_ran(device: str, exact: bool) -> None:
    settings = {"precision": "fp32", "preset": "tiny"}
    manifest = {"device": device, "settings": settings, "command": ["extract_features"]}
    recorded = recorded_settings(manifest)
    assert recorded is not None and recorded["deterministic"] is exact
    assert "deterministic" not in settings, "the manifest read is not changed"
