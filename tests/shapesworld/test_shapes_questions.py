"""Questions: answers re-derived independently from the ground truth, vocabularies, balance."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from shapesworld.questions import make_questions, scene_questions, training_questions
from shapesworld.scenes import Scene, make_split
from shapesworld.vocab import (
    ANSWERS,
    COLORS,
    POSITION_WORDS,
    QUESTION_KINDS,
    QUESTION_WORDS,
    SHAPES,
)

BERT_VOCAB = (
    Path(__file__).resolve().parents[2] / "encoder" / "data" / "bert-base-uncased-vocab.txt"
)
PLURAL = {"circles": "circle", "squares": "square", "triangles": "triangle", "stars": "star"}
PLURAL |= {"diamonds": "diamond", "crosses": "cross"}


@pytest.fixture(scope="module")
def scenes():
    return make_split("train", 300) + make_split("test", 200)


@pytest.fixture(scope="module")
def bert_words():
    return set(BERT_VOCAB.read_text(encoding="utf-8").splitlines())


def _resolve(phrase, objects):
    """The one object that a phrase like "circle" or "red circle" names; fails if not unique."""
    words = phrase.split()
    if len(words) == 1:
        found = [o for o in objects if o.shape == words[0]]
    else:
        found = [o for o in objects if (o.color, o.shape) == (words[0], words[1])]
    assert len(found) == 1, (phrase, objects)
    return found[0]


def _expected(question, scene):
    """Answer computed from the objects by a plain reading of the question text."""
    objs, text = scene.objects, question.text
    if m := re.fullmatch(r"what color is the (\w+)\?", text):
        assert question.kind == "color"
        return _resolve(m[1], objs).color
    if m := re.fullmatch(r"what shape is the (\w+) object\?", text):
        assert question.kind == "shape"
        found = [o for o in objs if o.color == m[1]]
        assert len(found) == 1
        return found[0].shape
    if m := re.fullmatch(r"how many (\w+) are there\?", text):
        assert question.kind == "count"
        return str(sum(o.shape == PLURAL[m[1]] for o in objs))
    if m := re.fullmatch(r"is there (a|an) (\w+) (\w+)\?", text):
        assert question.kind == "exist"
        assert m[1] == ("an" if m[2][0] in "aeiou" else "a")
        return "yes" if any((o.color, o.shape) == (m[2], m[3]) for o in objs) else "no"
    if m := re.fullmatch(r"is the (\w+(?: \w+)?) (on the left|at the top)\?", text):
        assert question.kind == "position"
        a = _resolve(m[1], objs)
        horizontal = m[2] == "on the left"
        where = (a.box[0] + a.box[2]) / 2 / scene.width
        if not horizontal:
            where = (a.box[1] + a.box[3]) / 2 / scene.height
        assert where < 0.4 or where > 0.6, "position question about a central object"
        return "yes" if where < 0.4 else "no"
    rel = r"is the (\w+(?: \w+)?) (left of|right of|above|below) the (\w+(?: \w+)?)\?"
    if m := re.fullmatch(rel, text):
        assert question.kind in ("spatial", "relation")
        a, b = _resolve(m[1], objs), _resolve(m[3], objs)
        ax, ay = (a.box[0] + a.box[2]) / 2, (a.box[1] + a.box[3]) / 2
        bx, by = (b.box[0] + b.box[2]) / 2, (b.box[1] + b.box[3]) / 2
        horizontal = m[2] in ("left of", "right of")
        delta = bx - ax if horizontal else by - ay  # > 0: a is left of / above b
        side = scene.width if horizontal else scene.height
        assert abs(delta) >= 0.1 * side, "spatial question without a clear margin"
        holds = delta > 0 if m[2] in ("left of", "above") else delta < 0
        return "yes" if holds else "no"
    raise AssertionError(f"question matches no known form: {text!r}")


def test_answers_match_independent_reading(scenes):
    for scene in scenes:
        for q in scene_questions(scene):
            assert q.answer == _expected(q, scene), (scene.seed, q)


def test_words_in_bert_vocab_and_answers_in_answer_vocab(scenes, bert_words):
    assert "?" in bert_words
    assert QUESTION_WORDS.issubset(bert_words)
    assert set(ANSWERS).issubset(bert_words)
    assert len(set(ANSWERS)) == len(ANSWERS)
    for scene in scenes:
        for q in scene_questions(scene):
            assert q.text == q.text.lower() and q.text.endswith("?")
            words = q.text[:-1].split(" ")
            assert set(words) <= QUESTION_WORDS, q.text
            assert q.answer in ANSWERS
            assert q.kind in QUESTION_KINDS


def test_kinds_answers_and_no_duplicates(scenes):
    kinds = Counter(q.kind for s in scenes for q in scene_questions(s))
    assert set(kinds) == set(QUESTION_KINDS)
    # Every kind is asked in most scenes.
    assert min(kinds.values()) >= 0.75 * len(scenes)
    answers = Counter(q.answer for s in scenes for q in scene_questions(s))
    assert set(SHAPES) | set(COLORS) | {"yes", "no", "0", "1", "2", "3"} <= set(answers)
    for scene in scenes:
        texts = [q.text for q in scene_questions(scene)]
        assert len(texts) == len(set(texts))
        order = [QUESTION_KINDS.index(q.kind) for q in scene_questions(scene)]
        assert order == sorted(order)


@pytest.mark.parametrize("kind", ["exist", "spatial"])
def test_yes_no_balanced(scenes, kind):
    answers = Counter(q.answer for s in scenes for q in scene_questions(s) if q.kind == kind)
    assert set(answers) == {"yes", "no"}
    share = answers["yes"] / (answers["yes"] + answers["no"])
    assert 0.45 <= share <= 0.55, answers


def test_questions_come_from_ground_truth_and_seed_only(scenes):
    for scene in scenes[:50]:
        # The pixels play no part: a blank image with the same objects asks the same.
        blank = Scene(
            seed=scene.seed, image_rgb=np.zeros_like(scene.image_rgb), objects=scene.objects
        )
        expected = make_questions(
            scene.objects, width=scene.width, height=scene.height, seed=scene.seed
        )
        assert scene_questions(blank) == scene_questions(scene) == expected
    # The seed draws which questions are asked: another seed asks others of most scenes.
    changed = sum(
        make_questions(s.objects, width=s.width, height=s.height, seed=s.seed + 1)
        != scene_questions(s)
        for s in scenes[:50]
    )
    assert changed >= 25


def test_training_questions_add_learnable_spatial_ones(scenes):
    relations, positions, extra = Counter(), Counter(), 0
    for scene in scenes:
        base, more = scene_questions(scene), training_questions(scene)
        assert more[: len(base)] == base  # the evaluated questions are unchanged
        texts = [q.text for q in more]
        assert len(texts) == len(set(texts))
        for q in more[len(base) :]:
            assert q.kind in ("position", "relation"), q
            assert q.answer == _expected(q, scene), (scene.seed, q)
            assert set(q.text.rstrip("?").split()) <= QUESTION_WORDS | POSITION_WORDS, q.text
            words = relations if q.kind == "relation" else positions
            canonical = any(w in q.text for w in ("left of", "above", "on the left", "at the top"))
            words[(canonical, q.answer)] += 1
            extra += 1
    assert extra >= 3 * len(scenes)
    # Relations: about 3 in 4 say "left of" / "above"; yes and no equally likely for each wording.
    canonical = relations[(True, "yes")] + relations[(True, "no")]
    assert 0.70 <= canonical / sum(relations.values()) <= 0.80, relations
    for wording in (True, False):
        yes, no = relations[(wording, "yes")], relations[(wording, "no")]
        assert 0.42 <= yes / (yes + no) <= 0.58, relations
    # Positions: only "on the left" / "at the top", half of them true.
    assert set(positions) == {(True, "yes"), (True, "no")}
    assert 0.45 <= positions[(True, "yes")] / sum(positions.values()) <= 0.55, positions


def test_position_words_are_bert_tokens(bert_words):
    assert POSITION_WORDS.isdisjoint(QUESTION_WORDS)
    assert POSITION_WORDS.issubset(bert_words)


def test_dataset_adds_training_questions_to_train_only_and_only_when_asked(tmp_path):
    import json

    from shapesworld.dataset import write_split

    def kinds(name: str, aids: bool) -> set[str]:
        write_split(tmp_path / str(aids), name, 3, spatial_aids=aids)
        entries = json.loads((tmp_path / str(aids) / f"{name}.json").read_text())
        return {e["question_type"] for e in entries}

    assert kinds("train", False) <= set(QUESTION_KINDS)
    assert kinds("valid", True) <= set(QUESTION_KINDS)
    assert kinds("train", True) - set(QUESTION_KINDS) == {"position", "relation"}
