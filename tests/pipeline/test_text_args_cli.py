"""Questions and statements that are not UTF-8 (issue 26, item 11): ``answer`` and ``judge``
refuse them with exit 2, naming the text by position, before any model loads."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import pytest

from pipeline.commands.answer import main as answer_main
from pipeline.commands.judge import main as judge_main
from pipeline.commands.text_args import first_non_utf8
from shapesworld.scenes import make_split
from weights.defaults import SHAPES_DETECTOR, SHAPES_ENCODER, SHAPES_NLVR2

#: What Python makes of the argv bytes ``what \xff color`` (POSIX decodes with
#: surrogateescape).
NOT_UTF8 = os.fsdecode(b"what \xff color")


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text-args") / "scene.png"
    cv2.imwrite(str(path), make_split("heldout", 1)[0].image_bgr())
    return path


def test_the_argv_of_the_report_holds_a_lone_surrogate() -> None:
    assert NOT_UTF8 == "what \udcff color"
    assert first_non_utf8(["ok", NOT_UTF8]) == 2 and first_non_utf8(["ok", "grün"]) is None


def test_answer_refuses_a_question_that_is_not_utf8(
    scene_png: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(scene_png), "what color?", NOT_UTF8]
    models = ["--detector", SHAPES_DETECTOR, "--encoder", SHAPES_ENCODER, "--device", "cpu"]
    assert answer_main([*argv, *models]) == 2
    err = capsys.readouterr().err
    assert "answer: error: question 2 of 2 is not valid UTF-8 (what \\xff color)" in err
    assert "TypeError" not in err


def test_judge_refuses_a_statement_that_is_not_utf8(
    scene_png: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(scene_png), str(scene_png), NOT_UTF8, "there is a circle"]
    models = ["--detector", SHAPES_DETECTOR, "--encoder", SHAPES_NLVR2, "--device", "cpu"]
    assert judge_main([*argv, *models]) == 2
    err = capsys.readouterr().err
    assert "judge: error: statement 1 of 2 is not valid UTF-8 (what \\xff color)" in err
