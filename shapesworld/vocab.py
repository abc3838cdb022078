"""Fixed vocabularies of the shapes world: object classes, attributes, sizes, answers.

Everything here is a constant. The detector trained on this world has one object class per entry
of ``SHAPES`` (class id = index) and one attribute per entry of ``COLORS`` (attribute id = index):
each box carries exactly one attribute label, its colour. Size ("small"/"large") is scene data
only: it is not a detector label, but questions never need it either.

Every word that a question can contain, and every answer, is a whole token of the
bert-base-uncased WordPiece vocabulary (checked by the tests).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

#: Object classes, in class-id order. All drawn upright so that square and diamond differ.
SHAPES: Final[tuple[str, ...]] = ("circle", "square", "triangle", "star", "diamond", "cross")

#: Plural forms used by counting questions, aligned with ``SHAPES``.
SHAPE_PLURALS: Final[tuple[str, ...]] = (
    "circles",
    "squares",
    "triangles",
    "stars",
    "diamonds",
    "crosses",
)

#: Attributes (colours), in attribute-id order.
COLORS: Final[tuple[str, ...]] = ("red", "orange", "yellow", "green", "blue", "purple", "white")

#: Nominal RGB of each colour, aligned with ``COLORS``. Each object jitters its colour by at most
#: ``COLOR_JITTER`` per channel. Backgrounds are gray in [BACKGROUND_MIN, BACKGROUND_MAX] with a
#: small tint, so every colour stays far from every background (white is >= 60 levels brighter).
COLOR_RGB: Final[tuple[tuple[int, int, int], ...]] = (
    (220, 30, 30),
    (250, 140, 20),
    (240, 225, 30),
    (30, 170, 50),
    (40, 90, 240),
    (140, 50, 200),
    (245, 245, 245),
)

#: Largest per-channel deviation of an object's colour from its nominal RGB, in levels.
COLOR_JITTER: Final[int] = 12

#: Gray level range of backgrounds (before texture, tint and noise), in levels 0..255.
BACKGROUND_MIN: Final[int] = 40
BACKGROUND_MAX: Final[int] = 165

#: Object sizes (scene data, not a detector label).
SIZES: Final[tuple[str, ...]] = ("small", "large")

#: Side of an object's square box as a percentage of the image's short side, per size:
#: [low, high] inclusive. The gap between the two ranges keeps "small" and "large" apart.
SIZE_PERCENT: Final[MappingProxyType[str, tuple[int, int]]] = MappingProxyType(
    {"small": (15, 21), "large": (27, 37)}
)

#: Largest count a counting question can have (scenes hold at most this many objects).
MAX_OBJECTS: Final[int] = 6
MIN_OBJECTS: Final[int] = 2

#: Question kinds, in the order questions of a scene are listed.
QUESTION_KINDS: Final[tuple[str, ...]] = ("color", "shape", "count", "exist", "spatial")

#: Spatial relations as worded in questions.
RELATIONS: Final[tuple[str, ...]] = ("left of", "right of", "above", "below")

#: The fixed answer vocabulary, in answer-id order.
ANSWERS: Final[tuple[str, ...]] = (
    "yes",
    "no",
    *(str(n) for n in range(MAX_OBJECTS + 1)),
    *SHAPES,
    *COLORS,
)

#: Every word a question may contain (besides the final "?"), for vocabulary checks.
QUESTION_WORDS: Final[frozenset[str]] = frozenset(
    {
        "what",
        "color",
        "shape",
        "is",
        "the",
        "object",
        "how",
        "many",
        "are",
        "there",
        "a",
        "an",
        "left",
        "right",
        "of",
        "above",
        "below",
        *SHAPES,
        *SHAPE_PLURALS,
        *COLORS,
    }
)

#: Words of the training-only position questions (``questions.training_questions``:
#: "is the circle on the left?"), beside ``QUESTION_WORDS``.
POSITION_WORDS: Final[frozenset[str]] = frozenset({"on", "at", "top"})

#: Seed ranges of the splits: split s uses seeds SPLIT_SEED_BASE[s] + i for i in [0, SPLIT_SIZE).
#: "heldout" is never used for training or model selection; the quality tests draw from it.
SPLIT_SEED_BASE: Final[MappingProxyType[str, int]] = MappingProxyType(
    {"train": 0, "val": 10_000_000, "test": 20_000_000, "heldout": 30_000_000}
)
SPLIT_SIZE: Final[int] = 10_000_000
