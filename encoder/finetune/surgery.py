"""Answer-table surgery: give a QA model a head over a new answer table, keeping the
pretrained output row of every answer the two tables share (LXMERT's ``label2ans`` loading,
src/tasks/vqa_model.py / src/pretrain/qa_answer_table.py: copy rows by answer string)."""

from __future__ import annotations

import torch
from transformers import LxmertForQuestionAnswering

from encoder.answers import AnswerTable


def _output_layer(model: LxmertForQuestionAnswering) -> torch.nn.Linear:
    layer = model.answer_head.logit_fc[-1]
    if not isinstance(layer, torch.nn.Linear):
        raise TypeError(f"expected the QA head to end in a Linear layer, got {type(layer)}")
    return layer


def transfer_answer_head(
    model: LxmertForQuestionAnswering, *, old: AnswerTable, new: AnswerTable
) -> int:
    """Replace the last Linear of ``model``'s QA head (``[len(old), 2H]`` weight) with one of
    ``len(new)`` outputs, in place; returns how many answers kept their pretrained row.

    Row ``j`` of the new layer (weight ``[2H]`` and bias) is row ``old.label(new.answers[j])``
    of the old layer when that answer is in ``old``; other rows are initialised as
    transformers initialises a fresh head (normal, std ``initializer_range``; bias 0). The
    hidden layers of the head (Linear, GeLU, LayerNorm) keep their weights. The model's
    ``config.num_qa_labels`` becomes ``len(new)``, so ``save_pretrained`` records it.

    Raises:
        ValueError: ``old`` does not match the model's current head size.
    """
    layer = _output_layer(model)
    if layer.out_features != len(old):
        raise ValueError(
            f"the QA head has {layer.out_features} outputs but the old answer table "
            f"{old.name!r} has {len(old)}"
        )
    fresh = torch.nn.Linear(layer.in_features, len(new)).to(
        device=layer.weight.device, dtype=layer.weight.dtype
    )
    with torch.no_grad():
        fresh.weight.normal_(mean=0.0, std=model.config.initializer_range)
        fresh.bias.zero_()
        kept = 0
        for row, answer in enumerate(new.answers):
            source = old.label(answer)
            if source is not None:
                fresh.weight[row] = layer.weight[source]
                fresh.bias[row] = layer.bias[source]
                kept += 1
    model.answer_head.logit_fc[-1] = fresh
    model.config.num_qa_labels = len(new)
    model.num_qa_labels = len(new)
    return kept
