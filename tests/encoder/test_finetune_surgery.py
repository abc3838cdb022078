"""Answer-table surgery: shared answers keep their pretrained output rows."""

from __future__ import annotations

import torch
from encoder_fixtures import tiny_config
from transformers import LxmertForQuestionAnswering

from encoder.answers import AnswerTable
from encoder.finetune import transfer_answer_head


def test_shared_answers_keep_their_rows_by_string() -> None:
    torch.manual_seed(0)
    model = LxmertForQuestionAnswering(tiny_config(num_qa_labels=5))
    old = AnswerTable(name="old", answers=("yes", "no", "red", "blue", "2"))
    new = AnswerTable(name="new", answers=("blue", "cat", "yes", "2"))
    last = model.answer_head.logit_fc[-1]
    old_weight, old_bias = last.weight.detach().clone(), last.bias.detach().clone()
    hidden = model.answer_head.logit_fc[0].weight.detach().clone()

    kept = transfer_answer_head(model, old=old, new=new)

    assert kept == 3
    fresh = model.answer_head.logit_fc[-1]
    assert tuple(fresh.weight.shape) == (4, old_weight.shape[1])
    # By hand: new row 0 "blue" = old row 3, row 2 "yes" = old row 0, row 3 "2" = old row 4.
    for new_row, old_row in ((0, 3), (2, 0), (3, 4)):
        assert torch.equal(fresh.weight[new_row], old_weight[old_row])
        assert fresh.bias[new_row] == old_bias[old_row]
    # "cat" is new: a fresh row (not a copy of any old one), bias 0.
    assert not any(torch.equal(fresh.weight[1], row) for row in old_weight)
    assert fresh.bias[1] == 0.0
    assert torch.equal(model.answer_head.logit_fc[0].weight, hidden)
    assert model.config.num_qa_labels == 4


def test_the_new_head_scores_shared_answers_as_before() -> None:
    torch.manual_seed(1)
    model = LxmertForQuestionAnswering(tiny_config(num_qa_labels=3)).eval()
    old = AnswerTable(name="old", answers=("a", "b", "c"))
    inputs = {
        "input_ids": torch.tensor([[2, 5, 6, 3]]),
        "visual_feats": torch.randn(1, 4, 16),
        "visual_pos": torch.rand(1, 4, 4),
    }
    with torch.no_grad():
        before = model(**inputs).question_answering_score
    transfer_answer_head(model, old=old, new=AnswerTable(name="new", answers=("c", "z", "a")))
    with torch.no_grad():
        after = model(**inputs).question_answering_score
    assert after.shape == (1, 3)
    torch.testing.assert_close(after[0, [0, 2]], before[0, [2, 0]])
