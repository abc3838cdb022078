"""NLVR2-style pairs over shapes scenes: every label checked against the scenes' ground truth by
a reader of the sentences written here, classes balanced per kind, splits kept apart, and the
example pairs of ``examples/pairs.json`` true to ``examples/scenes.json``."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from shapesworld.pairs import PAIR_KINDS, main, pair_entries, write_split
from shapesworld.scenes import Scene, SceneObject, make_scene, split_seeds
from shapesworld.vocab import SHAPE_PLURALS, SHAPES, SPLIT_SEED_BASE, SPLIT_SIZE

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _objects_named(objects: list[SceneObject], words: list[str]) -> list[SceneObject]:
    shape, color = words[-1], (words[0] if len(words) == 2 else None)
    return [o for o in objects if o.shape == shape and color in (None, o.color)]


def reference_truth(sentence: str, left: list[SceneObject], right: list[SceneObject]) -> bool:
    """The truth of a statement, read from its words (not from the generator's records)."""
    count = re.fullmatch(
        r"the left image has (more|fewer|the same number of) (\w+) (?:than|as) the right image",
        sentence,
    )
    if count:
        shape = SHAPES[SHAPE_PLURALS.index(count.group(2))]
        a, b = (sum(o.shape == shape for o in side) for side in (left, right))
        return {"more": a > b, "fewer": a < b, "the same number of": a == b}[count.group(1)]
    exist = re.fullmatch(r"(both images|at least one image) (?:have|has) a (\w+)", sentence)
    if exist:
        found = [any(o.shape == exist.group(2) for o in side) for side in (left, right)]
        return all(found) if exist.group(1) == "both images" else any(found)
    conj = re.fullmatch(r"the (left|right) image has an? (\w+) (\w+)", sentence)
    if conj:
        side = left if conj.group(1) == "left" else right
        return any(o.color == conj.group(2) and o.shape == conj.group(3) for o in side)
    spatial = re.fullmatch(
        r"in the (left|right) image the (.+) is (left of|right of|above|below) the (.+)", sentence
    )
    assert spatial, sentence
    side = left if spatial.group(1) == "left" else right
    [a] = _objects_named(side, spatial.group(2).split())
    [b] = _objects_named(side, spatial.group(4).split())
    (ax, ay), (bx, by) = a.center, b.center
    return {"left of": ax < bx, "right of": ax > bx, "above": ay < by, "below": ay > by}[
        spatial.group(3)
    ]


@pytest.fixture(scope="module")
def scenes() -> dict[str, Scene]:
    return {f"seed-{seed}": make_scene(seed) for seed in split_seeds("heldout", 40)}


@pytest.fixture(scope="module")
def entries(scenes: dict[str, Scene]) -> list[dict[str, object]]:
    return pair_entries("test", list(scenes.values()), 48)


def test_every_label_is_the_truth_of_its_sentence(
    entries: list[dict[str, object]], scenes: dict[str, Scene]
) -> None:
    assert len(entries) == 96
    for entry in entries:
        left, right = (list(scenes[str(entry[k])].objects) for k in ("img0", "img1"))
        truth = reference_truth(str(entry["sent"]), left, right)
        assert entry["label"] == int(truth), entry
        assert entry["img0"] != entry["img1"]


def test_each_statement_is_true_of_one_pair_and_false_of_another(
    entries: list[dict[str, object]],
) -> None:
    groups: dict[str, list[dict[str, object]]] = {}
    for entry in entries:
        group, _, member = str(entry["identifier"]).rpartition("-")
        assert member in ("0", "1")
        groups.setdefault(group, []).append(entry)
    assert len(groups) == 48
    for members in groups.values():
        assert sorted(int(str(m["label"])) for m in members) == [0, 1]
        assert len({m["sent"] for m in members}) == 1 and len({m["type"] for m in members}) == 1
    balance = Counter((e["type"], e["label"]) for e in entries)
    assert balance == {(kind, label): 12 for kind in PAIR_KINDS for label in (0, 1)}


def test_splits_keep_to_their_scenes_and_are_reproducible(tmp_path: Path) -> None:
    write_split(tmp_path, "test", 12, groups_per_scene=2, images=False)
    written = json.loads((tmp_path / "test.json").read_text())
    seeds = {int(str(e[k]).removeprefix("seed-")) for e in written for k in ("img0", "img1")}
    base = SPLIT_SEED_BASE["heldout"]
    assert seeds <= set(range(base, base + 12)) and base + SPLIT_SIZE > max(seeds)
    assert not (tmp_path / "images").exists()
    again = pair_entries("test", [make_scene(s) for s in split_seeds("heldout", 12)], 24)
    assert written == again
    train = pair_entries("train", [make_scene(s) for s in split_seeds("train", 12)], 8)
    train_seeds = {int(str(e[k]).removeprefix("seed-")) for e in train for k in ("img0", "img1")}
    assert train_seeds <= set(range(SPLIT_SEED_BASE["train"], SPLIT_SEED_BASE["train"] + 12))


def test_example_pairs_are_true_to_the_example_scenes() -> None:
    recorded = json.loads((EXAMPLES / "scenes.json").read_text())
    objects = {
        s["file"]: [
            SceneObject(o["shape"], o["color"], o["size"], tuple(o["box"])) for o in s["objects"]
        ]
        for s in recorded["scenes"]
    }
    pairs = json.loads((EXAMPLES / "pairs.json").read_text())["pairs"]
    assert 2 <= len(pairs) <= 3
    kinds = set()
    for pair in pairs:
        left, right = objects[pair["left"]], objects[pair["right"]]
        for statement in pair["statements"]:
            assert statement["label"] == reference_truth(statement["sent"], left, right)
            kinds.add(statement["type"])
    assert kinds == set(PAIR_KINDS)


def test_too_few_scenes_is_a_clear_error_not_a_hang() -> None:
    scenes = [make_scene(s) for s in split_seeds("heldout", 3)]
    with pytest.raises(ValueError, match=r"split 'test': no \w+ statement .* use more scenes"):
        pair_entries("test", scenes, 8)


def test_the_command_writes_images_statements_and_their_features(tmp_path: Path) -> None:
    from pipeline.features.store import FeatureStore

    argv = ["--out", str(tmp_path), "--train", "0", "--valid", "0", "--test", "12"]
    assert main(argv) == 0
    statements = json.loads((tmp_path / "test.json").read_text())
    images = {str(e[k]) for e in statements for k in ("img0", "img1")}
    assert {p.stem for p in (tmp_path / "images" / "test").iterdir()} >= images
    store = FeatureStore.open(tmp_path / "features" / "test.tsv")
    for image in images:
        assert image in store and store.get(image).num_boxes > 0
