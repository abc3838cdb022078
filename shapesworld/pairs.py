"""NLVR2-style statements about pairs of shapes-world scenes, for ``lxmert-finetune --task nlvr2``.

    python -m shapesworld.pairs --out data/shapes-nlvr2 [--train 2000] [--valid 200] [--test 200]

writes, for each split (the scene seed ranges of ``shapesworld.dataset``: ``train``, ``valid``
from ``val``, ``test`` from ``heldout``; pairs never mix splits, so held-out scenes stay apart)::

    <out>/images/<split>/seed-<seed>.png   the scenes (lossless PNG)
    <out>/<split>.json                     statements as LXMERT's NLVR2 JSON
    <out>/features/<split>.tsv             regions by ``extract_features`` (shipped detector)

Entries: ``{"identifier": "<split>-<g>-<j>", "img0": "seed-<left>", "img1": "seed-<right>",
"sent": ..., "label": 0|1, "type": count|exist|conjunction|spatial}``. Each statement (group
``<split>-<g>``) is written twice, as in NLVR2: for a pair it is true of and for a pair it is
false of (in random order), so every kind is balanced exactly and NLVR2's consistency (every
pair of a group judged right) means something. Kinds:

- ``count``: "the left image has more circles than the right image" (fewer, the same number).
- ``exist``: "both images have a star", "at least one image has a star".
- ``conjunction``: colour and shape bound: "the right image has a red square"; its false pair
  is a hard one when one is found (that image has something red, or a square).
- ``spatial``, within one image: "in the left image the circle is left of the red square";
  the false pair has both objects, uniquely named, with the relation reversed. Box centres
  differ by at least ``questions.SPATIAL_MARGIN_PERCENT`` of the image side, as for questions.

Drawn from scene ground truth only, on a seeded stream of its own per split.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from shapesworld.dataset import SPLITS, add_split_flags, extract_split, split_counts
from shapesworld.questions import SPATIAL_MARGIN_PERCENT
from shapesworld.scenes import Scene, make_scene, split_seeds
from shapesworld.vocab import SHAPE_PLURALS, SHAPES, SPLIT_SEED_BASE
from weights.files import atomic_write_text

#: Statement kinds; groups cycle through them in this order.
PAIR_KINDS: tuple[str, ...] = ("count", "exist", "conjunction", "spatial")
#: Random pairs tried for one a statement is false of (else the group is drawn again).
FALSE_PAIR_TRIES = 400
#: Draws of one group before giving up: few scenes may hold no pair that makes a statement
#: of some kind false (a spatial relation reversed, say).
GROUP_DRAWS = 50

Side = Literal["left", "right"]
#: (colour, shape) of a referent; colour None names "the <shape>" (the only one of its shape).
Referent = tuple[str | None, str]
#: Spatial relations: (word, axis 0 = x / 1 = y, True when the first object has the smaller
#: coordinate). "above" means a smaller y (image rows grow downwards).
RELATIONS: dict[str, tuple[int, bool]] = {
    "left of": (0, True),
    "right of": (0, False),
    "above": (1, True),
    "below": (1, False),
}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _count(scene: Scene, shape: str) -> int:
    return sum(o.shape == shape for o in scene.objects)


def _has(scene: Scene, color: str | None, shape: str | None) -> bool:
    return any(
        (color is None or o.color == color) and (shape is None or o.shape == shape)
        for o in scene.objects
    )


@dataclass(frozen=True)
class PairStatement:
    """A statement about a (left, right) scene pair.

    Attributes:
        kind: one of :data:`PAIR_KINDS`.
        text: the sentence.
        side: the image a ``conjunction`` or ``spatial`` statement is about, else None.
        shape, color: the shape (and colour) it names; color None where none is named.
        relation: ``count``: more / fewer / same; ``exist``: both / either; ``spatial``: a
            key of :data:`RELATIONS`; ``conjunction``: None.
        other: ``spatial`` only: the second referent.
    """

    kind: str
    text: str
    side: Side | None
    shape: str
    color: str | None
    relation: str | None
    other: Referent | None = None

    def truth(self, left: Scene, right: Scene) -> bool | None:
        """Whether the statement holds of the pair; None when it cannot be judged (a spatial
        statement whose objects are missing, not unique, or too close along the axis)."""
        if self.kind == "count":
            a, b = _count(left, self.shape), _count(right, self.shape)
            return {"more": a > b, "fewer": a < b, "same": a == b}[str(self.relation)]
        if self.kind == "exist":
            found = (_has(left, None, self.shape), _has(right, None, self.shape))
            return all(found) if self.relation == "both" else any(found)
        scene = left if self.side == "left" else right
        if self.kind == "conjunction":
            return _has(scene, self.color, self.shape)
        if self.other is None or self.relation is None:
            raise ValueError(f"spatial statement {self.text!r} lacks its relation or object")
        return spatial_truth(scene, (self.color, self.shape), self.relation, self.other)


def _unique_center(scene: Scene, referent: Referent) -> tuple[float, float] | None:
    """Centre of the one object ``referent`` names, or None when it names none or several."""
    color, shape = referent
    matches = [o for o in scene.objects if o.shape == shape and color in (None, o.color)]
    return matches[0].center if len(matches) == 1 else None


def spatial_truth(scene: Scene, a: Referent, relation: str, b: Referent) -> bool | None:
    """Whether ``a`` is ``relation`` ``b`` in ``scene`` (box centres, raw pixels); None when
    either is not uniquely named or their centres are closer than the margin on that axis."""
    first, second = _unique_center(scene, a), _unique_center(scene, b)
    if first is None or second is None or a == b:
        return None
    axis, smaller = RELATIONS[relation]
    side = (scene.width, scene.height)[axis]
    if abs(first[axis] - second[axis]) < side * SPATIAL_MARGIN_PERCENT / 100:
        return None
    return (first[axis] < second[axis]) == smaller


def _name(referent: Referent) -> str:
    color, shape = referent
    return f"the {shape}" if color is None else f"the {color} {shape}"


def _referents(rng: np.random.Generator, scene: Scene) -> list[Referent]:
    """Uniquely named objects of ``scene``: "the circle" or "the red circle", one form each."""
    out: list[Referent] = []
    for o in scene.objects:
        forms: list[Referent] = []
        if _count(scene, o.shape) == 1:
            forms.append((None, o.shape))
        if sum(p.shape == o.shape and p.color == o.color for p in scene.objects) == 1:
            forms.append((o.color, o.shape))
        if forms:
            out.append(forms[int(rng.integers(len(forms)))])
    return out


def _true_statement(
    rng: np.random.Generator, kind: str, left: Scene, right: Scene
) -> PairStatement | None:
    """A statement of ``kind`` that holds of (left, right), or None when none is found."""
    side: Side = ("left", "right")[int(rng.integers(2))]
    scene = left if side == "left" else right
    if kind == "count":
        shapes = [s for s in SHAPES if _count(left, s) + _count(right, s) > 0]
        shape = shapes[int(rng.integers(len(shapes)))]
        a, b = _count(left, shape), _count(right, shape)
        relation = "more" if a > b else "fewer" if a < b else "same"
        plural = SHAPE_PLURALS[SHAPES.index(shape)]
        text = (
            f"the left image has the same number of {plural} as the right image"
            if relation == "same"
            else f"the left image has {relation} {plural} than the right image"
        )
        return PairStatement(kind, text, None, shape, None, relation)
    if kind == "exist":
        both = [s for s in SHAPES if _has(left, None, s) and _has(right, None, s)]
        either = [s for s in SHAPES if _has(left, None, s) or _has(right, None, s)]
        use_both = bool(both) and int(rng.integers(2)) == 0
        pool = both if use_both else either
        shape = pool[int(rng.integers(len(pool)))]
        text = f"both images have a {shape}" if use_both else f"at least one image has a {shape}"
        return PairStatement(kind, text, None, shape, None, "both" if use_both else "either")
    if kind == "conjunction":
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
        text = f"the {side} image has {_article(obj.color)} {obj.color} {obj.shape}"
        return PairStatement(kind, text, side, obj.shape, obj.color, None)
    names = _referents(rng, scene)
    options = [
        (first, word, second)
        for first in names
        for second in names
        for word in RELATIONS
        if spatial_truth(scene, first, word, second) is True
    ]
    if not options:
        return None
    first, word, second = options[int(rng.integers(len(options)))]
    text = f"in the {side} image {_name(first)} is {word} {_name(second)}"
    return PairStatement(kind, text, side, first[1], first[0], word, second)


def _hard(statement: PairStatement, left: Scene, right: Scene) -> bool:
    """A false conjunction pair is hard when its image has the colour or the shape."""
    if statement.kind != "conjunction":
        return True
    scene = left if statement.side == "left" else right
    return _has(scene, statement.color, None) or _has(scene, None, statement.shape)


def _random_pair(rng: np.random.Generator, count: int) -> tuple[int, int]:
    first, second = rng.choice(count, size=2, replace=False)
    return int(first), int(second)


def _false_pair(
    rng: np.random.Generator, statement: PairStatement, scenes: Sequence[Scene]
) -> tuple[int, int] | None:
    """A random pair the statement is false of, hard when one is found (:func:`_hard`)."""
    fallback = None
    for _ in range(FALSE_PAIR_TRIES):
        i, j = _random_pair(rng, len(scenes))
        if statement.truth(scenes[i], scenes[j]) is False:
            if _hard(statement, scenes[i], scenes[j]):
                return i, j
            fallback = fallback or (i, j)
    return fallback


def pair_entries(name: str, scenes: Sequence[Scene], groups: int) -> list[dict[str, object]]:
    """``groups`` statements of dataset split ``name`` over ``scenes``, each with a true and
    a false pair, as NLVR2 JSON entries (kinds cycle through :data:`PAIR_KINDS`).

    Raises:
        ValueError: fewer than 2 scenes, or so few that some kind finds no false pair.
    """
    if len(scenes) < 2:
        raise ValueError(f"split {name!r}: pairs need at least 2 scenes, got {len(scenes)}")
    base = SPLIT_SEED_BASE[SPLITS[name]]
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([base, 2])))
    entries: list[dict[str, object]] = []
    group, draws = 0, 0
    while group < groups:
        kind = PAIR_KINDS[group % len(PAIR_KINDS)]
        draws += 1
        if draws > GROUP_DRAWS:
            raise ValueError(
                f"split {name!r}: no {kind} statement with a true and a false pair found in "
                f"{GROUP_DRAWS} draws over {len(scenes)} scenes; use more scenes"
            )
        true_pair = _random_pair(rng, len(scenes))
        statement = _true_statement(rng, kind, *(scenes[i] for i in true_pair))
        false_pair = None if statement is None else _false_pair(rng, statement, scenes)
        if statement is None or false_pair is None:
            continue
        draws = 0
        members = [(true_pair, 1), (false_pair, 0)]
        if int(rng.integers(2)):
            members.reverse()
        for j, ((left, right), label) in enumerate(members):
            entries.append(
                {
                    "identifier": f"{name}-{group}-{j}",
                    "img0": f"seed-{scenes[left].seed}",
                    "img1": f"seed-{scenes[right].seed}",
                    "sent": statement.text,
                    "label": label,
                    "type": kind,
                }
            )
        group += 1
    return entries


def write_split(out: Path, name: str, count: int, *, groups_per_scene: int, images: bool) -> Path:
    """Statements (and, with ``images``, the PNGs) of ``count`` scenes of split ``name``;
    returns the image folder. Each file is replaced atomically."""
    folder = out / "images" / name
    scenes = [make_scene(seed) for seed in split_seeds(SPLITS[name], count)]
    if images:
        folder.mkdir(parents=True, exist_ok=True)
        for scene in scenes:
            scene.write_png(folder / f"seed-{scene.seed}.png")
    entries = pair_entries(name, scenes, groups_per_scene * count)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{name}.json", json.dumps(entries, indent=0) + "\n")
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m shapesworld.pairs", description=__doc__.split("\n")[0]
    )
    add_split_flags(parser)
    parser.add_argument(
        "--groups-per-scene", type=int, default=2, help="statements per scene, each on 2 pairs"
    )
    parser.add_argument("--detector", default="shapes-detector", help="registry name or file")
    parser.add_argument(
        "--statements-only",
        action="store_true",
        help="write only <split>.json (the scenes' features of python -m shapesworld.dataset "
        "with the same counts serve: same scenes, same image ids)",
    )
    args = parser.parse_args(argv)
    counts = split_counts(args)
    if any(count < 0 for count in counts.values()) or args.groups_per_scene < 1:
        parser.error("scene counts must be >= 0 and --groups-per-scene >= 1")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a directory")
    for name, count in counts.items():
        if count <= 0:
            continue
        try:
            images = write_split(
                args.out,
                name,
                count,
                groups_per_scene=args.groups_per_scene,
                images=not args.statements_only,
            )
        except ValueError as err:
            parser.error(str(err))
        print(f"{name}: {args.out / (name + '.json')}")
        if not args.statements_only:
            tsv = args.out / "features" / f"{name}.tsv"
            code = extract_split(images, tsv, detector=args.detector)
            if code != 0:
                print(f"extract_features exited {code} on {images}")
                return code
            print(f"{name}: {tsv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
