"""The curriculum's stage questions agree with the scenes' boxes, and the files are LXMERT JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from shapesworld.curriculum import main, stage1_questions, stage2_questions
from shapesworld.scenes import Scene, make_scene, split_seeds

SCENES = [make_scene(seed) for seed in range(40)]


def _object(scene: Scene, name: str) -> tuple[float, float]:
    """Centre (x, y) of the one object a referent ("the circle", "the red circle") names."""
    words = name.split()[1:]
    found = [
        o
        for o in scene.objects
        if o.shape == words[-1] and (len(words) == 1 or o.color == words[0])
    ]
    assert len(found) == 1, name
    x1, y1, x2, y2 = found[0].box
    return (x1 + x2) / 2, (y1 + y2) / 2


def test_stage1_answers_follow_box_centres() -> None:
    count = 0
    for scene in SCENES:
        for q in stage1_questions(scene, np.random.default_rng(scene.seed)):
            m = re.fullmatch(r"is (the .+) (on the left|at the top)\?", q.text)
            assert m is not None and q.kind == "position"
            axis = 0 if m.group(2) == "on the left" else 1
            where = _object(scene, m.group(1))[axis] / (scene.width, scene.height)[axis]
            assert where < 0.4 or where > 0.6  # never near the middle
            assert q.answer == ("yes" if where < 0.4 else "no")
            count += 1
    assert count > 50


def test_stage2_answers_are_the_order_and_balanced() -> None:
    answers = {"yes": 0, "no": 0}
    for scene in SCENES:
        for q in stage2_questions(scene, np.random.default_rng(scene.seed)):
            m = re.fullmatch(r"is (the .+) (left of|above) (the .+)\?", q.text)
            if m is None:
                assert q.kind == "position"
                continue
            axis = 0 if m.group(2) == "left of" else 1
            a, b = _object(scene, m.group(1))[axis], _object(scene, m.group(3))[axis]
            assert abs(a - b) >= (scene.width, scene.height)[axis] * 0.1
            assert q.answer == ("yes" if a < b else "no") and q.kind == "relation"
            answers[q.answer] += 1
    assert answers["yes"] == answers["no"] > 50  # each pair asked both ways


def test_files_are_lxmert_json_with_dataset_image_ids(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path), "--train", "3", "--valid", "2"]) == 0
    entries = json.loads((tmp_path / "stage2-valid.json").read_text())
    valid_ids = {f"seed-{s}" for s in split_seeds("val", 2)}
    assert entries and {e["img_id"] for e in entries} <= valid_ids
    assert all(e["question_type"] == "relation" for e in entries)  # no stage-1 review in valid
    assert len({e["question_id"] for e in entries}) == len(entries)
    # Stage 3: the dataset's training questions, then stage-2 questions of the same scenes.
    stage3 = json.loads((tmp_path / "stage3-train.json").read_text())
    stage2 = json.loads((tmp_path / "stage2-train.json").read_text())
    kinds = [e["question_type"] for e in stage3]
    first_review = kinds.index("relation")
    assert set(kinds[:first_review]) == {"color", "shape", "count", "exist", "spatial"}
    assert all(e in stage2 for e in stage3[first_review:]) and len(stage3) > first_review
