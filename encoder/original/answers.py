"""LXMERT's rule for starting a task's answer head from a pretrained one
(src/pretrain/qa_answer_table.py, ``load_lxmert_qa``), as used by its ``--loadLXMERTQA``.

Each answer of the task's table is normalised (:func:`convert_answer`) and looked up, as it
then is, among the pretrained table's answers; a match copies that output row (weight and
bias), and an answer without one gets a row of zeros (weight and bias), so that it starts
with logit 0 whatever the input. Our own surgery for our own checkpoints
(``encoder.finetune.surgery``) matches exact strings and starts unmatched rows at random.
"""

from __future__ import annotations

from types import MappingProxyType

import torch
from transformers import LxmertForQuestionAnswering

from encoder.answers import AnswerTable

#: Whole answers that LXMERT rewrites after lower-casing and removing articles (its
#: ``AnswerTable.ANS_CONVERT``). The four man/woman entries still apply after the articles:
#: "the a man" loses only "the " (articles are looked at once each, "a " first).
ANSWER_REWRITES = MappingProxyType(
    {
        "a man": "man",
        "the man": "man",
        "a woman": "woman",
        "the woman": "woman",
        "one": "1",
        "two": "2",
        "three": "3",
        "four": "4",
        "five": "5",
        "six": "6",
        "seven": "7",
        "eight": "8",
        "nine": "9",
        "ten": "10",
        "grey": "gray",
    }
)
#: Leading articles, removed in this order (so "a the cat" loses both).
_ARTICLES = ("a ", "an ", "the ")


def convert_answer(answer: str) -> str:
    """LXMERT's ``convert_ans``: lower case; one trailing ``.`` removed; a leading "a ", then
    "an ", then "the " removed (each followed by a strip); number words one..ten to digits
    and "grey" to "gray" when they are the whole answer."""
    text = answer.lower()
    if text.endswith("."):
        text = text[:-1].strip()
    for article in _ARTICLES:
        if text.startswith(article):
            text = text[len(article) :].strip()
    return ANSWER_REWRITES.get(text, text)


def lxmert_qa_rows(pretrained: AnswerTable, task: AnswerTable) -> tuple[int | None, ...]:
    """For each label of ``task``, the row of ``pretrained`` it starts from: the label of its
    :func:`convert_answer` form among ``pretrained``'s answers as written, or None."""
    return tuple(pretrained.label(convert_answer(answer)) for answer in task.answers)


def transfer_answer_head_lxmert_qa(
    model: LxmertForQuestionAnswering, *, old: AnswerTable, new: AnswerTable
) -> int:
    """Give ``model``'s QA head ``len(new)`` outputs by LXMERT's rule (see the module), in
    place; returns how many answers kept a pretrained row. The head's hidden layers keep
    their weights; ``config.num_qa_labels`` becomes ``len(new)``.

    Raises:
        ValueError: ``old`` does not match the model's current head size.
    """
    layer = model.answer_head.logit_fc[-1]
    if not isinstance(layer, torch.nn.Linear) or layer.out_features != len(old):
        raise ValueError(
            f"the QA head must end in a Linear of {len(old)} outputs (answer table "
            f"{old.name!r}), got {layer}"
        )
    rows = lxmert_qa_rows(old, new)
    fresh = torch.nn.Linear(layer.in_features, len(new)).to(
        device=layer.weight.device, dtype=layer.weight.dtype
    )
    with torch.no_grad():
        fresh.weight.zero_()
        fresh.bias.zero_()
        for row, source in enumerate(rows):
            if source is not None:
                fresh.weight[row] = layer.weight[source]
                fresh.bias[row] = layer.bias[source]
    model.answer_head.logit_fc[-1] = fresh
    model.config.num_qa_labels = len(new)
    model.num_qa_labels = len(new)
    return sum(source is not None for source in rows)
