"""Questions with answers about a scene's ground truth (made from scenes, never the reverse).

Kinds (``vocab.QUESTION_KINDS``), at most ``QUESTIONS_PER_KIND`` of each per scene:

- ``color``: "what color is the circle?", asked only when that shape is unique in the scene.
- ``shape``: "what shape is the red object?", asked only when that colour is unique.
- ``count``: "how many squares are there?", answer "0".."6"; absent shapes are asked too.
- ``exist``: "is there a blue triangle?", yes/no alternating within a scene (so balanced); "no"
  cases are often hard negatives (a present shape in another colour, or the reverse).
- ``spatial``: "is the circle left of the red square?", "is the red star above the green
  circle?", yes/no alternating. Referents are unique ("the circle" when the shape is unique, "the
  red square" when that pair is); box centres differ by at least ``SPATIAL_MARGIN_PERCENT`` of the
  image side along the axis asked about, so the answer is never borderline. "above" means a
  smaller y (image rows grow downwards).

Generation is seeded by the scene seed on its own random stream, so it never changes pixels.

:func:`training_questions` adds training-only spatial questions meant to make spatial ones
learnable (``python -m shapesworld.dataset --spatial-aids``; an experiment, not yet shown to
work). A spatial answer is the relation word XOR the order of the two referents' positions;
with words and orders balanced, no single part of the question or the image says anything
about the answer, so a small model sits at chance (parity) and never starts (measured: 0.50 on
train and held-out after 8000 steps, and in 1000-1500-step spatial-only runs, even with only
"left of"/"above"). Two training-only kinds are meant to break that symmetry:

- ``position``: "is the circle on the left?" / "... at the top?" (one referent, its centre in
  the outer 40% of the side asked about; only these two words, since "on the right" beside
  them would make the answer a XOR again), which teaches the model to read a referent's box
  position;
- ``relation``: more two-referent questions as worded in ``spatial``, "left of"/"above" in
  ``CANONICAL_SHARE`` of them, so the order of the referents carries signal alone first.

Held-out and validation questions stay :func:`scene_questions`, balanced.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shapesworld.scenes import Scene, SceneObject
from shapesworld.vocab import COLORS, SHAPE_PLURALS, SHAPES

__all__ = [
    "CANONICAL_SHARE",
    "QUESTIONS_PER_KIND",
    "RELATION_PAIRS",
    "SPATIAL_MARGIN_PERCENT",
    "TRAINING_KINDS",
    "Question",
    "make_questions",
    "scene_questions",
    "training_questions",
]

QUESTIONS_PER_KIND = 2
SPATIAL_MARGIN_PERCENT = 10
#: Kinds of the training-only questions of :func:`training_questions`.
TRAINING_KINDS = ("position", "relation")
#: Two-referent ``relation`` questions per training scene, at most (distinct ordered pairs).
RELATION_PAIRS = 4
#: Share of ``relation`` questions worded "left of"/"above" (the rest "right of"/"below").
CANONICAL_SHARE = 0.75
#: A ``position`` question's referent has its centre in the outer share of the side asked about.
POSITION_OUTER = 0.4


@dataclass(frozen=True)
class Question:
    """A question, its answer (one of ``vocab.ANSWERS``) and its kind (``vocab.QUESTION_KINDS``)."""

    text: str
    answer: str
    kind: str


def scene_questions(scene: Scene) -> tuple[Question, ...]:
    """The questions of ``scene``, grouped by kind: :func:`make_questions` of its objects, size
    and seed (the same questions every time)."""
    return make_questions(scene.objects, width=scene.width, height=scene.height, seed=scene.seed)


def make_questions(
    objects: Sequence[SceneObject], *, width: int, height: int, seed: int
) -> tuple[Question, ...]:
    """Questions about ``objects`` (boxes in pixels of a W x H image), grouped by kind.

    Deterministic in ``seed``; draws from stream 1 of the seed (stream 0 draws the pixels).
    """
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), 1])))
    return (
        *_color_questions(rng, objects),
        *_shape_questions(rng, objects),
        *_count_questions(rng, objects),
        *_exist_questions(rng, objects),
        *_spatial_questions(rng, objects, width=width, height=height),
    )


def training_questions(scene: Scene) -> tuple[Question, ...]:
    """:func:`scene_questions` plus the training-only ``position`` and ``relation`` questions
    (module docstring) not asked already; deterministic in the scene seed (stream 2, so the
    first part is unchanged)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([scene.seed, 2])))
    objects = scene.objects
    asked = scene_questions(scene)
    extra = (
        *_position_questions(rng, objects, width=scene.width, height=scene.height),
        *_relation_questions(rng, objects, width=scene.width, height=scene.height),
    )
    texts = {q.text for q in asked}  # a relation question may repeat a spatial one: ask it once
    return (*asked, *(q for q in extra if q.text not in texts))


def _position_questions(
    rng: np.random.Generator, objects: Sequence[SceneObject], *, width: int, height: int
) -> list[Question]:
    """One "is <referent> on the left?" or "... at the top?" (axis drawn) per referable
    object whose centre is in the outer ``POSITION_OUTER`` of that side: "yes" on the
    left / top, "no" on the right / bottom (equally likely, as layouts are symmetric)."""
    out = []
    for index, name in _referents(rng, objects).items():
        axis = int(rng.integers(2))
        where = objects[index].center[axis] / (width, height)[axis]
        if POSITION_OUTER <= where <= 1.0 - POSITION_OUTER:
            continue
        answer = "yes" if where < POSITION_OUTER else "no"
        out.append(
            Question(f"is {name} {('on the left', 'at the top')[axis]}?", answer, "position")
        )
    return out


def _relation_questions(
    rng: np.random.Generator, objects: Sequence[SceneObject], *, width: int, height: int
) -> list[Question]:
    """Up to ``RELATION_PAIRS`` questions worded as ``spatial`` ones over distinct ordered
    pairs that are clearly apart, "left of"/"above" in ``CANONICAL_SHARE`` of them."""
    names = _referents(rng, objects)
    centers = [o.center for o in objects]
    pairs = _clear_pairs(names, centers, width=width, height=height)
    out = []
    for k in rng.permutation(len(pairs))[:RELATION_PAIRS]:
        axis, a, b = pairs[int(k)]
        canonical = bool(rng.random() < CANONICAL_SHARE)
        relation = ("left of", "above")[axis] if canonical else ("right of", "below")[axis]
        answer = "yes" if (centers[a][axis] < centers[b][axis]) == canonical else "no"
        out.append(Question(f"is {names[a]} {relation} {names[b]}?", answer, "relation"))
    return out


def _clear_pairs(
    names: dict[int, str],
    centers: Sequence[tuple[float, float]],
    *,
    width: int,
    height: int,
) -> list[tuple[int, int, int]]:
    """(axis, a, b) for ordered pairs of referents whose centres differ by at least
    ``SPATIAL_MARGIN_PERCENT`` of the image side along axis 0 (x) or 1 (y)."""
    out = []
    for axis, side in ((0, width), (1, height)):
        margin = side * SPATIAL_MARGIN_PERCENT / 100
        for a in names:
            for b in names:
                if a != b and abs(centers[a][axis] - centers[b][axis]) >= margin:
                    out.append((axis, a, b))
    return out


def _pick(rng: np.random.Generator, items: Sequence[object], k: int) -> list[int]:
    """Indices of up to ``k`` distinct items, in random order."""
    order = rng.permutation(len(items))
    return [int(i) for i in order[:k]]


def _color_questions(rng: np.random.Generator, objects: Sequence[SceneObject]) -> list[Question]:
    shapes = Counter(o.shape for o in objects)
    unique = [o for o in objects if shapes[o.shape] == 1]
    return [
        Question(f"what color is the {unique[i].shape}?", unique[i].color, "color")
        for i in _pick(rng, unique, QUESTIONS_PER_KIND)
    ]


def _shape_questions(rng: np.random.Generator, objects: Sequence[SceneObject]) -> list[Question]:
    colors = Counter(o.color for o in objects)
    unique = [o for o in objects if colors[o.color] == 1]
    return [
        Question(f"what shape is the {unique[i].color} object?", unique[i].shape, "shape")
        for i in _pick(rng, unique, QUESTIONS_PER_KIND)
    ]


def _count_questions(rng: np.random.Generator, objects: Sequence[SceneObject]) -> list[Question]:
    counts = Counter(o.shape for o in objects)
    present = [s for s in SHAPES if counts[s] > 0]
    absent = [s for s in SHAPES if counts[s] == 0]
    out = []
    for _ in range(QUESTIONS_PER_KIND):
        # About one question in four asks for an absent shape (answer "0").
        pool = absent if absent and (not present or int(rng.integers(4)) == 0) else present
        shape = pool.pop(int(rng.integers(len(pool))))
        plural = SHAPE_PLURALS[SHAPES.index(shape)]
        out.append(Question(f"how many {plural} are there?", str(counts[shape]), "count"))
    return out


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _exist_questions(rng: np.random.Generator, objects: Sequence[SceneObject]) -> list[Question]:
    present = sorted({(o.color, o.shape) for o in objects})
    absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
    # Hard negatives share the colour or the shape of something in the scene.
    hard = [p for p in absent if any(p[0] == c or p[1] == s for c, s in present)]
    first = int(rng.integers(2))
    out = []
    for want_yes in (first, 1 - first):
        negatives = hard if hard and int(rng.integers(2)) else absent
        pool = present if want_yes else negatives
        color, shape = pool[int(rng.integers(len(pool)))]
        text = f"is there {_article(color)} {color} {shape}?"
        out.append(Question(text, "yes" if want_yes else "no", "exist"))
    return out


def _referents(rng: np.random.Generator, objects: Sequence[SceneObject]) -> dict[int, str]:
    """Index -> a unique description ("the circle" / "the red circle") for each referable object."""
    shapes = Counter(o.shape for o in objects)
    pairs = Counter((o.color, o.shape) for o in objects)
    out = {}
    for i, o in enumerate(objects):
        forms = []
        if shapes[o.shape] == 1:
            forms.append(f"the {o.shape}")
        if pairs[(o.color, o.shape)] == 1:
            forms.append(f"the {o.color} {o.shape}")
        if forms:
            out[i] = forms[int(rng.integers(len(forms)))]
    return out


def _spatial_questions(
    rng: np.random.Generator, objects: Sequence[SceneObject], *, width: int, height: int
) -> list[Question]:
    names = _referents(rng, objects)
    centers = [o.center for o in objects]
    # Ordered pairs (a, b) clearly apart along x (axis 0) or y (axis 1).
    clear: list[list[tuple[int, int]]] = [[], []]
    for axis, side in ((0, width), (1, height)):
        margin = side * SPATIAL_MARGIN_PERCENT / 100
        for a in names:
            for b in names:
                if a != b and abs(centers[a][axis] - centers[b][axis]) >= margin:
                    clear[axis].append((a, b))
    first = int(rng.integers(2))
    out: list[Question] = []
    for want_yes in (first, 1 - first):
        axis = int(rng.integers(2))
        if not clear[axis]:
            axis = 1 - axis
        if not clear[axis]:
            break
        a, b = clear[axis].pop(int(rng.integers(len(clear[axis]))))
        before = centers[a][axis] < centers[b][axis]  # a is left of / above b
        # "left of"/"above" is true exactly when a comes first, so pick the word that makes the
        # answer the one wanted.
        first_word = before == bool(want_yes)
        relation = ("left of", "above")[axis] if first_word else ("right of", "below")[axis]
        text = f"is {names[a]} {relation} {names[b]}?"
        out.append(Question(text, "yes" if want_yes else "no", "spatial"))
    return out
