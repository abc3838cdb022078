"""``lxmert-finetune``'s flags: the region count is ``--boxes`` (as in extract_features), with
``--num-boxes`` a hidden alias for one release, and ``--precision`` says it is the training
mode of the encoder, whose names are the library's."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest

from encoder.finetune import TRAIN_PRECISIONS
from pipeline.commands.finetune.command import (
    build_evaluate_parser,
    build_train_parser,
    validate_train,
)
from pipeline.commands.finetune.common import TRAIN_PRECISION_CHOICES

# --from names a shipped model: validate_train resolves it (a usage error when it does not).
TRAIN = ["--task", "vqa", "--train", "t.json", "--features", "f.tsv", "--out", "o"]
TRAIN += ["--from", "shapes-lxmert-pretrained"]
EVALUATE = ["--model", "m", "--questions", "q.json", "--features", "f.tsv"]


@pytest.mark.parametrize(
    ("build", "required"), [(build_train_parser, TRAIN), (build_evaluate_parser, EVALUATE)]
)
def test_boxes_and_its_hidden_alias_set_the_region_count(
    build: Callable[[], argparse.ArgumentParser], required: list[str]
) -> None:
    parser = build()
    assert parser.parse_args(required).num_boxes == 36
    assert parser.parse_args([*required, "--boxes", "12"]).num_boxes == 12
    assert parser.parse_args([*required, "--num-boxes", "7"]).num_boxes == 7
    shown = parser.format_help()
    assert "--boxes N" in shown and "--num-boxes" not in shown


def test_the_equivalent_command_says_boxes(tmp_path: Path) -> None:
    for name in ("t.json", "f.tsv"):
        (tmp_path / name).write_text("[]", encoding="utf-8")
    argv = [str(tmp_path / a) if a in ("t.json", "f.tsv", "o") else a for a in TRAIN]
    settings = validate_train(build_train_parser().parse_args([*argv, "--num-boxes", "9"]))
    assert settings.recipe.num_boxes == 9
    assert " --boxes 9 " in settings.command() and "--num-boxes" not in settings.command()


def test_precision_is_the_training_mode_of_the_library() -> None:
    assert TRAIN_PRECISION_CHOICES == TRAIN_PRECISIONS
    shown = " ".join(build_train_parser().format_help().split())
    assert "mixed-precision training" in shown and "runs no detector" in shown
