"""extract_features as steps: validate before any model, plan once, sub-commands, devices."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

import pipeline.extract.steps
from pipeline.commands import answer as answer_cli
from pipeline.commands.extract import COMMANDS, build_parser, main
from pipeline.errors import EXIT_OK, EXIT_USAGE, UsageError
from pipeline.extract.plan import make_plan
from pipeline.extract.settings import validate
from pipeline.features.output import read_ids


def parse(*args: object) -> argparse.Namespace:
    return build_parser().parse_args([str(arg) for arg in args])


@pytest.fixture
def no_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any step loads or hashes a checkpoint."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded (or a checkpoint hashed) before validation")

    monkeypatch.setattr(pipeline.extract.steps, "load_model", refuse)
    monkeypatch.setattr("weights.resolve.sha256_file", refuse)
    monkeypatch.setattr("weights.io.load_state_dict", refuse)


def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--nms-thresh", "0.3,0.5"], "--nms-thresh takes a comma list only with max-class"),
        (["--boxes", "4", "--min-boxes", "2"], "--boxes N fixes the box count"),
        (["--min-boxes", "9", "--max-boxes", "3"], "min_boxes <= max_boxes"),
        (["--shard", ""], "--shard must look like K/N"),
        (["--shard", "  "], "--shard must look like K/N"),
        (["--shard", "5/4"], "1 <= K <= N"),
        (["--preset", "no-such-preset"], "unknown detector preset"),
        (["--device", "cuda"], "no CUDA device is usable here"),
        (["--device", "tpu"], "cpu, cuda, cuda:N or auto"),
    ],
)
def test_bad_flags_are_refused_before_any_model_loads(
    photos, tiny_checkpoint, tmp_path, capsys, monkeypatch, no_model_loads, flags, message
) -> None:
    no_cuda(monkeypatch)
    out = tmp_path / "x.tsv"
    code = main([str(photos), "--out", str(out), "--detector", str(tiny_checkpoint), *flags])
    assert code == EXIT_USAGE
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_validate_resolves_the_config_from_the_checkpoint_without_reading_weights(
    photos, tiny_checkpoint, no_model_loads
) -> None:
    flags = ["--detector", tiny_checkpoint, "--boxes", "7", "--device", "cpu"]
    settings = validate(parse(photos, "--out", "x.h5", *flags))
    assert settings.config.name == "tiny"
    assert (settings.config.min_boxes, settings.config.max_boxes) == (7, 7)
    assert settings.device == torch.device("cpu")
    assert settings.mode == "create"


def test_plan_checks_the_output_policy_once_without_touching_files(
    photos, tiny_checkpoint, tmp_path, no_model_loads
) -> None:
    out = tmp_path / "x.tsv"
    out.write_bytes(b"not ours\n")
    args = ["--out", out, "--detector", tiny_checkpoint, "--device", "cpu"]
    with pytest.raises(UsageError, match="already exists; pass --resume"):
        make_plan(validate(parse(photos, *args)))
    assert out.read_bytes() == b"not ours\n"


def test_resume_plan_counts_complete_records_and_changes_nothing(
    photos, tiny_checkpoint, tmp_path
) -> None:
    out = tmp_path / "x.tsv"
    flags = ["--detector", str(tiny_checkpoint), "--device", "cpu", "--workers", "0", "-q"]
    assert main([str(photos), "--out", str(out), "--limit", "2", *flags]) == EXIT_OK
    with out.open("ab") as stream:  # a kill mid-record leaves half a line
        stream.write(b"coffee\t400\t")
    before = out.read_bytes()
    plan = make_plan(validate(parse(photos, "--out", out, "--resume", *flags)))
    assert [item.image_id for item in plan.todo] == ["coffee", "gray/camera"]
    assert plan.already_done == 2
    assert out.read_bytes() == before  # the plan reads; only the run repairs
    assert main([str(photos), "--out", str(out), "--resume", *flags]) == EXIT_OK
    assert read_ids(out) == ["astronaut", "cats/chelsea", "coffee", "gray/camera"]


def test_merge_is_a_sub_command_and_a_folder_named_merge_is_dot_slash_merge(
    photos, tiny_checkpoint, tmp_path, monkeypatch
) -> None:
    assert "merge" in COMMANDS
    assert "merge" in build_parser().format_help()
    folder = tmp_path / "merge"
    folder.mkdir()
    (folder / "coffee.jpg").write_bytes((photos / "coffee.jpg").read_bytes())
    monkeypatch.chdir(tmp_path)
    flags = ["--detector", str(tiny_checkpoint), "--device", "cpu", "--workers", "0", "-q"]
    assert main(["./merge", "--out", "feats.tsv", *flags]) == EXIT_OK
    assert read_ids(Path("feats.tsv")) == ["coffee"]
    assert main(["merge", "feats.tsv", "--out", "merged.h5", "-q"]) == EXIT_OK
    assert read_ids(Path("merged.h5")) == ["coffee"]


def test_answer_with_an_unusable_device_exits_2_before_loading(monkeypatch, capsys) -> None:
    no_cuda(monkeypatch)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("answer() ran")

    monkeypatch.setattr("pipeline.api.answer", refuse)
    # An image and models that are here (they are checked first, before torch): the device
    # is what is wrong.
    image = str(Path(__file__).resolve().parents[2] / "examples" / "scene_000.png")
    shapes = ["--detector", "shapes-detector", "--encoder", "shapes-lxmert"]
    code = answer_cli.main([image, "what?", *shapes, "--device", "cuda"])
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--device cuda" in err and "no CUDA device is usable here" in err


def test_proposals_flag_reaches_the_config_and_resume_compares_it(
    photos, tiny_checkpoint, tmp_path, capsys
) -> None:
    from pipeline.features.manifest import manifest_path, read_manifest

    flags = ["--detector", str(tiny_checkpoint), "--device", "cpu", "--workers", "0", "-q"]
    auto = validate(parse(photos, "--out", tmp_path / "a.tsv", *flags))
    assert auto.config.proposal_mode == "caffe"  # bottom-up selection: the Caffe layer
    maxclass = validate(
        parse(photos, "--out", tmp_path / "b.tsv", "--selection", "max-class", *flags)
    )
    assert maxclass.config.proposal_mode == "detectron2"
    out = tmp_path / "p.tsv"
    assert main([str(photos), "--out", str(out), "--limit", "1", *flags]) == EXIT_OK
    assert read_manifest(manifest_path(out))["settings"]["proposals"] == "caffe"
    code = main([str(photos), "--out", str(out), "--resume", "--proposals", "detectron2", *flags])
    assert code == EXIT_USAGE
    assert '"detectron2" vs "caffe"' in capsys.readouterr().err


def test_ctrl_c_while_the_model_loads_is_exit_130_without_a_traceback(
    photos, tmp_path, capsys, monkeypatch
) -> None:
    def interrupted(settings: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.extract.steps, "load_model", interrupted)
    flags = ["--detector", "shapes-detector", "--device", "cpu", "-q"]
    assert main([str(photos), "--out", str(tmp_path / "k.tsv"), *flags]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err


def test_a_corrupt_safetensors_detector_is_a_usage_error(photos, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 64)
    code = main([str(photos), "--out", str(tmp_path / "x.tsv"), "--detector", str(bad), "-q"])
    assert code == EXIT_USAGE
    assert "not a readable safetensors file" in capsys.readouterr().err
