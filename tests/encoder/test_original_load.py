"""Original LXMERT checkpoint files wherever a model is named (load_encoder, and so
--encoder, --from, --model and encoder=), their answer tables, and LXMERT's rule for seeding
a task head from model_LXRT.pth's (encoder.original.load, encoder.original.answers)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from encoder_fixtures import FEAT_DIM, make_regions
from original_fixtures import full_size_state, scaled_state, with_data_parallel

from encoder.answers import AnswerTable, load_answer_table
from encoder.build import load_encoder
from encoder.config import EncoderConfig
from encoder.finetune import FinetuneConfig
from encoder.finetune.model import prepare_encoder
from encoder.finetune.surgery import transfer_answer_head
from encoder.model import build_model
from encoder.original import (
    OriginalCheckpointError,
    convert_answer,
    load_original,
    lxmert_qa_rows,
    model_from_original,
    save_original,
    transfer_answer_head_lxmert_qa,
    write_sidecars,
)
from weights.io import UnsafeCheckpointError

#: Real vocabulary (the shipped tokenizer's 30522 words), hidden 64: one head by BERT's rule.
REAL_VOCAB = {"hidden": 64, "vocab": 30522, "feat": FEAT_DIM, "positions": 40}


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save(state, path)
    return path


def test_a_saved_model_reads_back_through_the_restricted_loader(tmp_path: Path) -> None:
    model = model_from_original(scaled_state("gqa", answers=6), num_attention_heads=2).model
    path = save_original(model, tmp_path / "BEST.pth", head="qa")
    assert "lxrt_encoder.model.bert.pooler.dense.weight" in torch.load(path, weights_only=True)
    again = load_original(path, num_attention_heads=2).model.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(again[name], tensor), name


def test_a_file_holding_more_than_tensors_is_refused(tmp_path: Path) -> None:
    state: dict[str, object] = dict(scaled_state("vqa"))
    state["args"] = Path("x")  # an object of any class: weights_only refuses to build it
    with pytest.raises(UnsafeCheckpointError):
        load_original(_save(state, tmp_path / "BEST.pth"))  # type: ignore[arg-type]


def test_a_bad_file_names_itself(tmp_path: Path) -> None:
    state = scaled_state("vqa")
    state["logit_fc.9.weight"] = torch.zeros(2)
    path = _save(state, tmp_path / "BEST.pth")
    with pytest.raises(OriginalCheckpointError, match=r"BEST\.pth: .*logit_fc\.9\.weight"):
        load_original(path)


def test_vqa_file_loads_as_encoder_with_the_table_of_its_size(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = scaled_state("vqa", answers=3129, **REAL_VOCAB)
    path = _save(state, tmp_path / "BEST.pth")
    with caplog.at_level(logging.WARNING, logger="encoder.build"):
        encoder = load_encoder(str(path), device="cpu")
    assert "assuming the shipped 'vqa' answer table (3129 answers)" in caplog.text
    assert (encoder.config.head, encoder.answers and encoder.answers.name) == ("qa", "vqa")
    regions = [make_regions("a", 5, seed=1), make_regions("b", 7, seed=2)]
    questions = ["what color is the cube?", "how many spheres?"]
    best = encoder.answer(regions, questions, k=1)
    with torch.no_grad():
        logits = encoder.model(**encoder.model_inputs(regions, questions)).question_answering_score
    assert [b[0].label for b in best] == logits.argmax(dim=1).tolist()
    assert torch.equal(encoder.model.answer_head.logit_fc[3].bias, state["logit_fc.3.bias"])


def test_answer_file_given_is_used_and_nothing_assumed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _save(scaled_state("gqa", answers=4, **REAL_VOCAB), tmp_path / "BEST.pth")
    ans2label = tmp_path / "trainval_ans2label.json"
    ans2label.write_text(json.dumps({"yes": 1, "no": 0, "red": 3, "left": 2}), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="encoder.build"):
        encoder = load_encoder(
            EncoderConfig(checkpoint=str(path), answer_set=str(ans2label), num_attention_heads=1),
            device="cpu",
        )
    assert encoder.answers is not None and encoder.answers.answers == ("no", "yes", "left", "red")
    assert caplog.text == ""


def test_nlvr2_file_with_module_loads_as_an_nlvr2_encoder(tmp_path: Path) -> None:
    state = with_data_parallel(scaled_state("nlvr2", **REAL_VOCAB))
    encoder = load_encoder(_save(state, tmp_path / "BEST.pth"), device="cpu")
    assert encoder.config.head == "nlvr2" and encoder.answers is None
    left, right = make_regions("l", 4, seed=3), make_regions("r", 6, seed=4)
    (probability,) = encoder.judge([left], [right], ["there is a red cube"])
    assert 0.0 < probability < 1.0


def test_pretraining_file_answers_over_its_9500_answers(tmp_path: Path) -> None:
    state = with_data_parallel(scaled_state("pretraining", **REAL_VOCAB))
    encoder = load_encoder(str(_save(state, tmp_path / "model_LXRT.pth")), device="cpu")
    assert encoder.answers is not None and encoder.answers.name == "lxmert"
    assert len(encoder.answers) == 9500


def test_a_vocabulary_other_than_bert_s_is_refused(tmp_path: Path) -> None:
    path = _save(scaled_state("vqa", answers=3129, hidden=64), tmp_path / "BEST.pth")
    with pytest.raises(ValueError, match="40 rows but LXMERT's vocabulary has 30522"):
        load_encoder(str(path), device="cpu")


@pytest.mark.parametrize(
    ("answer", "converted"),
    [
        ("Two", "2"),
        ("ten.", "10"),
        ("Grey", "gray"),
        ("a man", "man"),
        ("An apple", "apple"),
        ("the Dog.", "dog"),
        ("a the cat", "cat"),  # "a ", then "the ", in LXMERT's order
        ("the a cat", "a cat"),  # "a " is looked at before "the " only
        ("the a man", "man"),  # ...but "a man" is one of ANS_CONVERT's whole answers
        ("The A Woman.", "woman"),
        ("an the man", "man"),
        ("eleven", "eleven"),
        ("twenty two", "twenty two"),
        ("", ""),
    ],
)
def test_convert_answer_is_lxmert_s(answer: str, converted: str) -> None:
    assert convert_answer(answer) == converted


def test_pretrained_rows_by_normalised_answer_and_zero_rows_otherwise() -> None:
    old = AnswerTable(name="pretrained", answers=("2", "gray", "man", "dog", "apple"))
    new = AnswerTable(name="task", answers=("Dog", "zebra", "Two", "a man", "grey.", "An apple"))
    assert lxmert_qa_rows(old, new) == (3, None, 0, 2, 1, 4)
    model = model_from_original(scaled_state("vqa", answers=5), num_attention_heads=2).model
    before = model.answer_head.logit_fc[3]
    weight, bias = before.weight.detach().clone(), before.bias.detach().clone()
    assert transfer_answer_head_lxmert_qa(model, old=old, new=new) == 5
    after = model.answer_head.logit_fc[3]
    assert torch.equal(after.weight[[0, 2, 3, 4, 5]], weight[[3, 0, 2, 1, 4]])
    assert torch.equal(after.bias[[0, 2, 3, 4, 5]], bias[[3, 0, 2, 1, 4]])
    assert not after.weight[1].any() and after.bias[1] == 0  # "zebra": zeros, not random
    assert model.config.num_qa_labels == 6
    # Our exact-string surgery would have kept none of these answers.
    other = model_from_original(scaled_state("vqa", answers=5), num_attention_heads=2).model
    assert transfer_answer_head(other, old=old, new=new) == 0


def test_finetuning_from_model_lxrt_uses_lxmert_s_rule(tmp_path: Path) -> None:
    state = scaled_state("pretraining", **REAL_VOCAB)
    path = _save(state, tmp_path / "model_LXRT.pth")
    pretrained = load_answer_table("lxmert")
    task = AnswerTable(name="task", answers=("Two", "grey", "The dog", "not-an-answer-xyz"))
    encoder, kept = prepare_encoder(str(path), answers=task, config=FinetuneConfig(), device="cpu")
    assert kept == 3
    layer = encoder.model.answer_head.logit_fc[3]
    for row, answer in enumerate(("2", "gray", "dog")):
        source = pretrained.label(answer)
        assert torch.equal(layer.weight[row], state["answer_head.logit_fc.3.weight"][source])
    assert not layer.weight[3].any() and layer.bias[3] == 0
    assert encoder.answers is task


def test_full_size_vqa_file_with_module_answers_through_load_encoder(tmp_path: Path) -> None:
    # The key file's names and shapes (bert-base); broadcast values keep the file small.
    state = with_data_parallel(full_size_state("vqa"))
    encoder = load_encoder(str(_save(state, tmp_path / "BEST.pth")), device="cpu")
    assert encoder.model.config.num_attention_heads == 12
    regions = [make_regions("a", 36, seed=1, feat_dim=2048)]
    ((best,),) = encoder.answer(regions, ["is there a dog?"], k=1)
    assert encoder.answers is not None and best.answer in encoder.answers.answers


def test_a_shapes_world_model_exported_and_loaded_back_answers_the_same(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ours = load_encoder("shapes-lxmert", device="cpu")
    path = save_original(ours.model, tmp_path / "BEST.pth", head="qa", data_parallel=True)
    answers = tmp_path / "trainval_label2ans.json"
    answers.write_text(json.dumps(list(ours.answers.answers)), encoding="utf-8")  # type: ignore[union-attr]
    config = EncoderConfig(checkpoint=str(path), answer_set=str(answers), num_attention_heads=4)
    back = load_encoder(config, device="cpu")
    regions = [make_regions(str(i), 5 + i, seed=i, feat_dim=256) for i in range(3)]
    questions = ["what color is the cube?", "how many spheres are there?", "is it red?"]
    with torch.no_grad():
        a = ours.model(**ours.model_inputs(regions, questions)).question_answering_score
        b = back.model(**back.model_inputs(regions, questions)).question_answering_score
    assert torch.equal(a, b)
    # Without the head count the file still loads, and the log says what was assumed.
    with caplog.at_level(logging.WARNING, logger="encoder.build"):
        load_encoder(EncoderConfig(checkpoint=str(path), answer_set=str(answers)), device="cpu")
    assert "assuming 1 attention head(s)" in caplog.text


def test_a_new_model_exports_to_the_pretraining_layout(tmp_path: Path) -> None:
    model = build_model(
        model_from_original(
            scaled_state("pretraining"), head="pretraining", num_attention_heads=2
        ).model.config,
        head="pretraining",
    )
    path = save_original(model, tmp_path / "model_LXRT.pth", head="pretraining")
    loaded = load_original(path, head="pretraining", num_attention_heads=2)
    assert loaded.layout == "pretraining" and loaded.ignored == ()


def test_the_files_beside_a_pth_give_heads_and_answers(tmp_path: Path) -> None:
    ours = load_encoder("shapes-lxmert", device="cpu")
    path = save_original(ours.model, tmp_path / "BEST.pth", head="qa")
    assert ours.answers is not None
    written = write_sidecars(ours.model, path, answers=ours.answers.answers)
    assert [p.name for p in written] == ["BEST.config.json", "BEST.label2ans.json"]
    back = load_encoder(str(path), device="cpu")
    assert back.model.config.num_attention_heads == 4
    assert back.answers is not None and back.answers.answers == ours.answers.answers
    written[0].write_text(json.dumps({"num_attention_heads": "four"}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"BEST\.config\.json: num_attention_heads"):
        load_encoder(str(path), device="cpu")
