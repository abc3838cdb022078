"""Curriculum question files that make the shapes LXMERT learn spatial questions.

    python -m shapesworld.curriculum --out DIR [--train 2000] [--valid 200]

A spatial answer ("is the circle left of the red square?") is the relation word XOR the order of
the referents' positions; with both balanced, no single cue predicts it and fine-tuning on the
full question set stays at chance (``questions`` module docstring). Two easier stages, trained
before the full set with chained ``lxmert-finetune train --from DIR`` runs, break that symmetry:

- stage 1, ``<out>/stage1-<split>.json``: one referent, one wording per axis, "is the circle on
  the left?" / "is the red star at the top?" (kind ``position``; centre in the outer
  ``POSITION_OUTER`` of the side, "yes" on the left / top): the model learns to read a
  referent's box;
- stage 2, ``<out>/stage2-<split>.json``: two referents, "left of" / "above" only (kind
  ``relation``; both orders of each pair that is clearly apart, so "yes" and "no" are equal),
  plus ``STAGE1_KEEP`` of the stage-1 questions: the answer is the order alone.

Scenes and image ids are the dataset's (``dataset.SPLITS``: ``seed-<seed>``), so the features of
``python -m shapesworld.dataset`` serve as they are. Stage 3, ``<out>/stage3-train.json``, is the
dataset's training questions plus ``STAGE3_REVIEW`` stage-2 questions. Questions are drawn from
one generator (``SEED``) through the files in a fixed order, which reproduces the files the
shipped ``shapes-lxmert`` was trained on (README, "Shapes world").
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from shapesworld.dataset import SPLITS, question_entries
from shapesworld.questions import (
    POSITION_OUTER,
    SPATIAL_MARGIN_PERCENT,
    Question,
    _referents,
)
from shapesworld.scenes import Scene, make_scene, split_seeds
from weights.files import atomic_write_text

__all__ = [
    "MAX_PAIRS",
    "SEED",
    "SEED3",
    "STAGE1_KEEP",
    "STAGE3_REVIEW",
    "main",
    "stage1_questions",
    "stage2_questions",
    "stage_entries",
]

#: Stage 2: unordered pairs of referents per scene, at most (each asked in both orders).
MAX_PAIRS = 6
#: Stage 2: share of a scene's stage-1 questions asked again, so stage 1 is not forgotten.
STAGE1_KEEP = 0.3
#: Stage 3: stage-2 questions added to the full training questions, so stage 2 is not forgotten.
STAGE3_REVIEW = 6000
#: Seeds of the question stream and of the stage-3 sample.
SEED = 7
SEED3 = 3


def _position(scene: Scene, rng: np.random.Generator) -> list[Question]:
    out = []
    for index, name in _referents(rng, scene.objects).items():
        for axis, word in ((0, "on the left"), (1, "at the top")):
            where = scene.objects[index].center[axis] / (scene.width, scene.height)[axis]
            if POSITION_OUTER <= where <= 1.0 - POSITION_OUTER:
                continue  # near the middle: no clear answer
            answer = "yes" if where < POSITION_OUTER else "no"
            out.append(Question(f"is {name} {word}?", answer, "position"))
    return out


def stage1_questions(scene: Scene, rng: np.random.Generator) -> tuple[Question, ...]:
    """Stage 1 of ``scene``: "is <referent> on the left?" and "... at the top?" for each
    referable object whose centre is in the outer ``POSITION_OUTER`` of that side (referents
    drawn from ``rng``)."""
    return tuple(_position(scene, rng))


def stage2_questions(
    scene: Scene, rng: np.random.Generator, *, keep: float = STAGE1_KEEP
) -> tuple[Question, ...]:
    """Stage 2 of ``scene``: "is <a> left of <b>?" / "is <a> above <b>?" in both orders for up
    to ``MAX_PAIRS`` pairs whose centres differ by ``SPATIAL_MARGIN_PERCENT`` of the side along
    the axis asked about, then a ``keep`` share of the stage-1 questions (none, and no draws for
    them, when 0; draws from ``rng``)."""
    names = _referents(rng, scene.objects)
    centers = [o.center for o in scene.objects]
    pairs = [
        (axis, a, b)
        for axis, side in ((0, scene.width), (1, scene.height))
        for a in names
        for b in names
        if a < b and abs(centers[a][axis] - centers[b][axis]) >= side * SPATIAL_MARGIN_PERCENT / 100
    ]
    out = []
    for k in rng.permutation(len(pairs))[:MAX_PAIRS]:
        axis, a, b = pairs[int(k)]
        relation = ("left of", "above")[axis]
        for x, y in ((a, b), (b, a)):
            answer = "yes" if centers[x][axis] < centers[y][axis] else "no"
            out.append(Question(f"is {names[x]} {relation} {names[y]}?", answer, "relation"))
    kept = [q for q in _position(scene, rng) if rng.random() < keep] if keep else []
    return (*out, *kept)


def stage_entries(
    scenes: Sequence[Scene],
    make: Callable[[Scene, np.random.Generator], tuple[Question, ...]],
    rng: np.random.Generator,
) -> list[dict[str, object]]:
    """LXMERT JSON entries of ``make``'s questions (a stage's), scene after scene."""
    entries: list[dict[str, object]] = []
    for scene in scenes:
        image_id = f"seed-{scene.seed}"
        for k, question in enumerate(make(scene, rng)):
            entries.append(
                {
                    "question_id": f"{image_id}-c{k}",
                    "img_id": image_id,
                    "sent": question.text,
                    "label": {question.answer: 1.0},
                    "question_type": question.kind,
                    "answer_type": "yes/no",
                }
            )
    return entries


def main(argv: Sequence[str] | None = None) -> int:
    """Write ``stage{1,2}-{train,valid}.json`` and ``stage3-train.json`` under ``--out``."""
    parser = argparse.ArgumentParser(prog="python -m shapesworld.curriculum", description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=2000, help="training scenes")
    parser.add_argument("--valid", type=int, default=200, help="validation scenes")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    scenes = {
        split: [make_scene(seed) for seed in split_seeds(SPLITS[split], count)]
        for split, count in (("train", args.train), ("valid", args.valid))
    }
    # One stream through every file, in this order: the shipped model's files came out so.
    rng = np.random.default_rng(SEED)
    files = {}
    # Stage-2 validation asks only two-referent questions (what stage 2 adds).
    makers: dict[str, Callable[[Scene, np.random.Generator], tuple[Question, ...]]] = {
        "stage1-train": stage1_questions,
        "stage1-valid": stage1_questions,
        "stage2-train": stage2_questions,
        "stage2-valid": partial(stage2_questions, keep=0.0),
    }
    for name, make in makers.items():
        split = name.split("-")[1]
        files[name] = stage_entries(scenes[split], make, rng)
    stage2 = files["stage2-train"]
    review = random.Random(SEED3).sample(stage2, min(STAGE3_REVIEW, len(stage2)))
    full = [e for scene in scenes["train"] for e in question_entries(scene)]
    files["stage3-train"] = full + review
    for name, entries in files.items():
        path = atomic_write_text(args.out / f"{name}.json", json.dumps(entries))
        print(f"wrote {path} ({len(entries)} questions)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
