"""What :mod:`pipeline.api` takes, checked before any model runs: image lists, questions and
statements, and the ids its records get.

Record ids (:func:`default_image_ids`) are those ``extract_features`` gives the same inputs
(:mod:`pipeline.extract.inputs`): a path is named as a file given by itself on the command line, by
its file name without the extension (``photos/cat.jpg`` -> ``cat``). Encoded bytes, numpy arrays
and PIL images have no name: they keep their 0-based position in the list (``"0"``, ``"1"``,
...). Two different files of one name (``a/x.png``, ``b/x.png``) are refused by
``extract_features`` as two files with one id; :func:`check_distinct_ids` refuses them the
same way where the ids are the caller's result (``Pipeline.regions``).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from pipeline.extract.inputs import DuplicateIdError

_SINGLE_IMAGE_TYPES = (str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, Image.Image)

T = TypeVar("T")


def check_image_list(images: object, what: str) -> None:
    """Refuse one image where ``what`` (the method's name) takes a list of them."""
    if isinstance(images, _SINGLE_IMAGE_TYPES):
        raise TypeError(
            f"{what} takes a list of images, got one {type(images).__name__}; wrap it: [image]"
        )


def image_label(number: int, image: object, image_id: str | None) -> str:
    """How errors name an image: a path by itself; anything else by its 1-based position and
    kind, e.g. ``"image 2 (bytes)"`` (with the caller's id when one was given)."""
    if isinstance(image, (str, os.PathLike)):
        return os.fsdecode(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        kind = "bytes"
    elif isinstance(image, np.ndarray):
        kind = "numpy array"
    elif isinstance(image, Image.Image):
        filename = getattr(image, "filename", "")
        kind = f"PIL image of {filename}" if filename else "PIL image"
    else:
        kind = type(image).__name__
    named = "" if image_id is None else f", id {image_id!r}"
    return f"image {number} ({kind}{named})"


def default_image_ids(images: Sequence[object]) -> list[str]:
    """The id of each image's record when the caller gives none, as ``extract_features``
    names the same inputs: a path's file name without its extension (``a/cat.jpg`` ->
    ``cat``: a file given by itself has its own folder as input root); anything else (bytes,
    arrays, PIL images) its 0-based position in ``images``."""
    return [
        Path(os.fsdecode(image)).stem if isinstance(image, (str, os.PathLike)) else str(position)
        for position, image in enumerate(images)
    ]


def _identity(position: int, image: object) -> object:
    """What makes two list entries one image for the id check: a path by its real file
    (``(st_dev, st_ino)``, as the input listing knows files; its absolute path when it cannot
    be read, which decoding reports later), anything else by its position."""
    if isinstance(image, (str, os.PathLike)):
        try:
            info = os.stat(image)
        except OSError:
            return ("path", os.path.abspath(os.fsdecode(image)))
        return ("file", info.st_dev, info.st_ino)
    return ("position", position)


def check_distinct_ids(images: Sequence[object], ids: Sequence[str]) -> None:
    """Refuse ids (from :func:`default_image_ids`) that name two different images, as
    ``extract_features`` refuses two different files with one id. The same file given twice
    is one image and keeps its one name.

    Raises:
        pipeline.extract.inputs.DuplicateIdError: a ``ValueError`` naming each shared id and the
            images that share it, and the remedy (``image_ids=``).
    """
    holders: dict[str, dict[object, str]] = defaultdict(dict)
    for number, (image, image_id) in enumerate(zip(images, ids, strict=True), start=1):
        holders[image_id].setdefault(_identity(number - 1, image), image_label(number, image, None))
    clashes = {image_id: list(named.values()) for image_id, named in holders.items()}
    shown = [
        f"  {key!r}: {', '.join(labels)}" for key, labels in clashes.items() if len(labels) > 1
    ]
    if shown:
        raise DuplicateIdError(
            f"{len(shown)} image id(s) would name more than one image:\n"
            + "\n".join(shown)
            + "\nan image's id is its file name without the extension (as extract_features "
            "names a file, and refuses two files of one name); pass image_ids=[...] to name "
            "each image yourself"
        )


def check_question(question: object, name: str) -> str:
    """``question`` if it is a non-blank string; ``name`` says which one in the error."""
    if question is None:
        raise ValueError(f"{name} is None; pass the question as a string")
    if isinstance(question, (bytes, bytearray, memoryview)):
        raise ValueError(f"{name} is bytes; pass a string, e.g. question.decode('utf-8')")
    if not isinstance(question, str):
        raise TypeError(f"{name} must be a string, got {type(question).__name__}")
    if not question.strip():
        # Never sent to the model: LXMERT answers an empty question too ("no", typically).
        raise ValueError(f"{name} is empty" + (" (only whitespace)" if question else ""))
    return question


def questions_of(entry: object, *, image: int | None) -> list[str]:
    """The checked questions of one entry: one question or a list of them. ``image`` (1-based)
    names the entry's image in errors; ``None`` when there is only one image."""
    return texts_of(entry, noun="question", where="" if image is None else f" for image {image}")


def texts_of(entry: object, *, noun: str, where: str) -> list[str]:
    """One text or a list of them, each checked (:func:`check_question`); errors name the
    ``noun`` (question, statement), its number in a list, and ``where`` it belongs."""
    if entry is None or isinstance(entry, (str, bytes, bytearray, memoryview)):
        return [check_question(entry, f"{noun}{where}")]
    if not isinstance(entry, Sequence):
        raise TypeError(
            f"{noun}{where} must be a string or a list of strings, got {type(entry).__name__}"
        )
    return [
        check_question(text, f"{noun} {number}{where}")
        for number, text in enumerate(entry, start=1)
    ]


def checked_questions(questions: Sequence[object]) -> list[list[str]]:
    """:func:`questions_of` for every image's entry."""
    if len(questions) == 1:
        return [questions_of(questions[0], image=None)]
    return [questions_of(entry, image=i) for i, entry in enumerate(questions, start=1)]


def statements_of(entry: object, *, pair: int | None) -> list[str]:
    """The checked statements of one pair's entry: one statement or a list of them. ``pair``
    (1-based) names the pair in errors; ``None`` when there is only one pair."""
    return texts_of(entry, noun="statement", where="" if pair is None else f" for pair {pair}")


def check_question_count(images: Sequence[object], questions: Sequence[object]) -> None:
    """One question entry (a question or a list of them) per image."""
    if len(images) != len(questions):
        raise ValueError(
            f"got {len(images)} images but {len(questions)} question entries; pass one "
            "question (or one list of questions) per image"
        )


def check_pair_count(
    lefts: Sequence[object], rights: Sequence[object], statements: Sequence[object]
) -> None:
    """One right image and one statement entry per left image."""
    if not len(lefts) == len(rights) == len(statements):
        raise ValueError(
            f"got {len(lefts)} left images, {len(rights)} right images and "
            f"{len(statements)} statement entries; pass one statement (or one list) per pair"
        )


def check_verdict_top_k(top_k: int) -> None:
    """NLVR2's ``top_k``: 1 (a bool) or 2 (both verdicts with their probabilities)."""
    if top_k not in (1, 2):
        raise ValueError(f"top_k must be 1 (a bool) or 2 (both verdicts), got {top_k}")


def distinct_images(images: Sequence[T]) -> tuple[list[T], list[int]]:
    """``images`` without repeats (:func:`image_key`), first-seen order, and for each entry
    of ``images`` its index in that list."""
    first: dict[object, int] = {}
    distinct: list[T] = []
    slots: list[int] = []
    for image in images:
        key = image_key(image)
        if key not in first:
            first[key] = len(distinct)
            distinct.append(image)
        slots.append(first[key])
    return distinct, slots


def image_key(image: object) -> object:
    """What makes two image arguments the same image for ``Pipeline.judge``: a path by
    its absolute form, encoded bytes by their content, anything else (arrays, PIL images)
    by identity."""
    if isinstance(image, (str, os.PathLike)):
        return ("path", os.path.abspath(os.fsdecode(image)))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return ("bytes", bytes(image))
    return ("object", id(image))


def regroup(flat: Sequence[T], entries: Sequence[str | Sequence[str]]) -> list[T | list[T]]:
    """``flat`` (one result per text, in order) nested as ``entries`` were: a string's one
    result, or a list of results for a list of texts."""
    results: list[T | list[T]] = []
    position = 0
    for entry in entries:
        if isinstance(entry, str):
            results.append(flat[position])
            position += 1
        else:
            results.append(list(flat[position : position + len(entry)]))
            position += len(entry)
    return results
