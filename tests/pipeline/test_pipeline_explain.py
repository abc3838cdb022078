"""Pipeline.explain and ``answer --explain`` on the shipped shapes-world models: relevance per
region (box in raw pixels, detector label) and per word, each summing to 1; the answer is the
one ``answer`` gives; the command prints it as JSON or as lines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from detector.boxes import pairwise_iou
from pipeline import Pipeline
from pipeline.api import default_pipeline
from pipeline.commands.answer import main as answer_main
from shapesworld.scenes import Scene, make_split
from shapesworld.vocab import COLORS, SHAPES

MODELS = ["--detector", "shapes-detector", "--encoder", "shapes-lxmert", "--device", "cpu"]
# Held-out scene 2: one red circle, a purple circle, a purple star, two triangles, a cross.
QUESTION = "what shape is the red object?"


@pytest.fixture(scope="module")
def scene() -> Scene:
    return make_split("heldout", 3)[2]


@pytest.fixture(scope="module")
def shapes() -> Iterator[Pipeline]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    default_pipeline.cache_clear()
    try:
        # The cached pipeline the command uses too, so the models load once for the module.
        yield default_pipeline("shapes-detector", "shapes-lxmert", "cpu")
    finally:
        default_pipeline.cache_clear()
        torch.set_num_threads(threads)


def test_explain_gives_regions_and_words_that_sum_to_one(shapes: Pipeline, scene: Scene) -> None:
    explained = shapes.explain(scene.image_rgb, QUESTION)
    assert explained.answer == shapes.answer([scene.image_rgb], [QUESTION])[0]
    regions = explained.image.regions
    assert len(regions) == shapes.regions([scene.image_rgb])[0].num_boxes
    assert sum(r.score for r in regions) == pytest.approx(1.0)
    assert min(r.score for r in regions) >= 0.0
    for region in regions:
        x1, y1, x2, y2 = region.box
        assert 0 <= x1 < x2 <= scene.width and 0 <= y1 < y2 <= scene.height
        color, shape = region.label.split()  # the detector's "attribute object"
        assert (color in COLORS, shape in SHAPES) == (True, True)
    assert [w.word for w in explained.words] == ["what", "shape", "is", "the", "red", "object", "?"]
    assert sum(w.score for w in explained.words) == pytest.approx(1.0)
    baseline = shapes.explain(scene.image_rgb, QUESTION, method="attention")
    assert baseline.answer == explained.answer and baseline.method == "attention"
    assert sum(r.score for r in baseline.image.regions) == pytest.approx(1.0)


def test_explain_another_answer_and_refuse_a_blank_question(shapes: Pipeline, scene: Scene) -> None:
    other = shapes.explain(scene.image_rgb, QUESTION, answer="star")
    assert other.answer == "star" and other.probability < 0.5
    with pytest.raises(ValueError, match="question is empty"):
        shapes.explain(scene.image_rgb, "  ")
    with pytest.raises(ValueError, match="'elephant' is not in the answer set"):
        shapes.explain(scene.image_rgb, QUESTION, answer="elephant")


def test_answer_explain_json(shapes: Pipeline, scene: Scene, tmp_path: Path, capsys) -> None:
    image = scene.write_png(tmp_path / "scene.png")
    questions = [QUESTION, "how many stars are there?"]
    assert answer_main([str(image), *questions, "--explain", "--json", "-k", "2", *MODELS]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["question"] for line in lines] == questions
    for line in lines:
        explanation = line["explanation"]
        assert explanation["answer"] == line["answers"][0]["answer"]
        assert explanation["method"] == "chefer"
        assert sum(r["score"] for r in explanation["regions"]) == pytest.approx(1.0)
        assert all(len(r["box"]) == 4 and r["label"] for r in explanation["regions"])
        words = [w["word"] for w in explanation["words"]]
        assert "[CLS]" not in words and "[SEP]" not in words and words[-1] == "?"
    direct = shapes.explain(scene.image_rgb, QUESTION)
    scores = [r["score"] for r in lines[0]["explanation"]["regions"]]
    assert scores == pytest.approx([r.score for r in direct.image.regions], abs=1e-6)


def test_answer_explain_lines(shapes: Pipeline, scene: Scene, tmp_path: Path, capsys) -> None:
    image = scene.write_png(tmp_path / "scene.png")
    assert answer_main([str(image), QUESTION, "--explain", *MODELS]) == 0
    out = capsys.readouterr().out.splitlines()
    answer = shapes.answer([scene.image_rgb], [QUESTION])[0]
    assert out[0] == f"{QUESTION}\t{answer}"
    assert out[1] == f"  why {answer!r} (chefer): regions"
    listed = [line for line in out if line.startswith("    ")]
    assert 1 <= len(listed) <= 5
    scores = [float(line.split()[0]) for line in listed]
    assert scores == sorted(scores, reverse=True)
    assert out[-1].startswith("  words: what ")


def test_explain_judgement_gives_each_picture_its_regions(shapes: Pipeline, scene: Scene) -> None:
    pipeline = Pipeline(detector="shapes-detector", encoder="shapes-nlvr2", device="cpu")
    left, right = scene.image_rgb, make_split("heldout", 4)[3].image_rgb
    statement = "the left image has more circles than the right image"
    [verdict] = pipeline.judge([left], [right], [statement])
    explained = pipeline.explain_judgement(left, right, statement)
    assert explained.verdict is verdict
    counts = [r.num_boxes for r in pipeline.regions([left, right])]
    assert [len(explained.left.regions), len(explained.right.regions)] == counts
    for image in (explained.left, explained.right):
        assert sum(r.score for r in image.regions) == pytest.approx(1.0)
    assert explained.left.share + explained.right.share == pytest.approx(1.0)
    assert json.loads(json.dumps(explained.to_json()))["verdict"] is verdict
    with pytest.raises(ValueError, match="not an NLVR2 model"):
        shapes.explain_judgement(left, right, statement)


def test_the_top_region_is_the_named_object(shapes: Pipeline, scene: Scene) -> None:
    # One of the measured questions (benchmarks/bench_explain.py evidence): held-out scene 2,
    # "what shape is the red object?" names its one red object, a circle.
    [named] = [o for o in scene.objects if o.color == "red"]
    explained = shapes.explain(scene.image_rgb, QUESTION)
    assert explained.answer == named.shape
    top = explained.image.top(1)[0]
    truth = torch.tensor([named.box])
    iou = float(pairwise_iou(torch.tensor([top.box]), truth)[0, 0])
    assert iou >= 0.5 and top.label == "red circle"
    assert top.score > 2 * explained.image.top(2)[1].score
