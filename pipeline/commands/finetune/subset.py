"""``train --tiny`` and ``--limit-questions N``: a small part of the data, for quick checks.

``--tiny`` is LXMERT's: ``vqa_data.py`` (likewise ``gqa_data.py``, ``nlvr2_data.py``) loads only
the first ``TINY_IMG_NUM = 512`` images of each feature file and keeps the questions whose
image was loaded; the others are dropped without a word. Here the first 512 records of each
``--features`` file, in file order, and the questions (NLVR2: statements, both images) on them.
``--limit-questions N`` then keeps the first N questions of ``--train`` and of ``--valid``, in
file order. Both are recorded in the resume checkpoint, so a ``--resume`` must repeat them.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from weights.command import positive_int

if TYPE_CHECKING:
    from detector.structures import RegionFeatures
    from pipeline.features.store import FeatureStore

#: Images per feature file under ``--tiny`` (LXMERT's ``TINY_IMG_NUM``).
TINY_IMAGES = 512

Entry = TypeVar("Entry")


@dataclass(frozen=True)
class Subset:
    """Which part of the data a run uses.

    Attributes:
        tiny: only the first :data:`TINY_IMAGES` images of each feature file.
        limit_questions: the first N questions of each question set; None: all.
    """

    tiny: bool = False
    limit_questions: int | None = None

    def words(self) -> list[str]:
        """The flags that give this subset (none for all the data)."""
        words = ["--tiny"] if self.tiny else []
        if self.limit_questions is not None:
            words += ["--limit-questions", str(self.limit_questions)]
        return words

    def recorded(self) -> list[dict[str, object]]:
        """What the resume checkpoint records (``[]`` for all the data, as a checkpoint
        written before these flags existed holds nothing)."""
        return [{"name": word} for word in self.words()]


def add_subset_flags(parser: argparse.ArgumentParser) -> None:
    """``--tiny`` and ``--limit-questions`` of ``train``."""
    parser.add_argument(
        "--tiny",
        action="store_true",
        help=f"only the first {TINY_IMAGES} images of each --features file and the questions "
        "on them, as LXMERT's --tiny (default: all)",
    )
    parser.add_argument(
        "--limit-questions",
        type=positive_int,
        metavar="N",
        help="the first N questions (NLVR2: statements) of --train and of --valid, after "
        "--tiny (default: all)",
    )


class ImageSubset:
    """The images of a feature store that ``--tiny`` keeps (a ``RegionSource``)."""

    def __init__(self, store: FeatureStore, kept: frozenset[str]) -> None:
        self._store = store
        self._kept = kept

    def __contains__(self, image_id: object) -> bool:
        return isinstance(image_id, str) and image_id in self._kept

    def get(self, image_id: str) -> RegionFeatures:
        """The record of ``image_id``; ``KeyError`` when ``--tiny`` left it out."""
        if image_id not in self._kept:
            raise KeyError(f"image id {image_id!r} is not among the --tiny images")
        return self._store.get(image_id)

    def __len__(self) -> int:
        return len(self._kept)


def tiny_images(store: FeatureStore, paths: Sequence[Path]) -> ImageSubset:
    """The first :data:`TINY_IMAGES` images of each of ``paths`` (the files ``store`` joins,
    each opened alone for its order)."""
    from pipeline.features.store import FeatureStore

    kept: set[str] = set()
    for path in paths:
        with FeatureStore.open(path) as part:
            kept.update(part.ids()[:TINY_IMAGES])
    return ImageSubset(store, frozenset(kept))


def first(entries: Sequence[Entry], limit: int | None) -> tuple[Entry, ...]:
    """The first ``limit`` of ``entries`` (all of them for None)."""
    return tuple(entries if limit is None else entries[:limit])
