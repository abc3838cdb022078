"""The original LXMERT checkpoints' keys -> transformers' LXMERT and back
(encoder.original.keys, encoder.original.load.model_from_original)."""

from __future__ import annotations

import logging

import pytest
import torch
from original_fixtures import full_size_state, key_file, scaled_state, with_data_parallel

from encoder.original import (
    ANSWER_HEAD_KEYS,
    PRETRAINING_HEAD_KEYS,
    OriginalCheckpointError,
    add_data_parallel,
    from_original,
    model_from_original,
    original_layout,
    to_original,
)

#: Each layout of the key file, the head it loads into by default, its answers.
LAYOUTS = [
    ("pretraining", "qa", 9500),
    ("vqa", "qa", 3129),
    ("gqa", "qa", 1842),
    ("nlvr2", "nlvr2", None),
]


@pytest.mark.parametrize("data_parallel", [False, True], ids=["single", "module."])
@pytest.mark.parametrize(("layout", "head", "answers"), LAYOUTS)
def test_key_file_layouts_load_strictly_at_full_size(
    layout: str, head: str, answers: int | None, data_parallel: bool
) -> None:
    state = full_size_state(layout)
    if data_parallel:
        state = with_data_parallel(state)
    loaded = model_from_original(state)  # strict: every model tensor from the file
    assert (loaded.head, loaded.data_parallel) == (head, data_parallel)
    config = loaded.model.config
    assert (config.l_layers, config.x_layers, config.r_layers) == (9, 5, 5)
    assert (config.vocab_size, config.hidden_size, config.num_attention_heads) == (30522, 768, 12)
    if answers is not None:
        assert config.num_qa_labels == answers
    # model_LXRT.pth into a QA model: exactly its 18 pretraining-head tensors are left out.
    assert set(loaded.ignored) == (set(PRETRAINING_HEAD_KEYS) if layout == "pretraining" else set())
    prefix = "module." if data_parallel and layout == "pretraining" else ""
    encoder = "bert." if layout == "pretraining" else "lxrt_encoder.model.bert."
    if data_parallel and layout != "pretraining":
        encoder = "lxrt_encoder.model.module.bert."
    name = prefix + encoder + "encoder.x_layers.4.visn_output.dense.weight"
    ours = loaded.model.get_submodule("lxmert.encoder.x_layers.4.visn_output.dense").weight
    assert torch.equal(ours, state[name])
    assert sum(p.numel() for p in loaded.model.parameters()) > 200_000_000


@pytest.mark.parametrize("data_parallel", [False, True], ids=["single", "module."])
def test_pretraining_file_fills_pretraining_model_with_nothing_ignored(data_parallel: bool) -> None:
    state = full_size_state("pretraining")
    loaded = model_from_original(
        with_data_parallel(state) if data_parallel else state, head="pretraining"
    )
    assert loaded.ignored == ()
    model = loaded.model
    assert model.config.num_object_labels == 1600 and model.config.num_attr_labels == 400
    assert torch.equal(model.answer_head.logit_fc[3].weight, state["answer_head.logit_fc.3.weight"])
    assert model.cls.predictions.decoder.weight is model.lxmert.embeddings.word_embeddings.weight


def test_the_heads_are_ignored_by_name_for_an_encoder_only_target() -> None:
    mapped = from_original(scaled_state("pretraining"), head="base")
    assert set(mapped.ignored) == set(PRETRAINING_HEAD_KEYS) | set(ANSWER_HEAD_KEYS)
    assert "embeddings.word_embeddings.weight" in mapped.state  # LxmertModel: no 'lxmert.'
    assert len(PRETRAINING_HEAD_KEYS) == 18
    assert sum(k.startswith("cls.") for k in PRETRAINING_HEAD_KEYS) == 8


def test_data_parallel_names_match_the_key_file_description() -> None:
    for layout in ("pretraining", "vqa", "nlvr2"):
        state = scaled_state(layout)
        assert list(add_data_parallel(state)) == list(with_data_parallel(state))


def test_layouts_are_told_apart() -> None:
    assert original_layout(scaled_state("pretraining")) == "pretraining"
    assert original_layout(scaled_state("gqa")) == "qa"
    assert original_layout(scaled_state("nlvr2")) == "nlvr2"
    with pytest.raises(OriginalCheckpointError, match="not an original LXMERT checkpoint"):
        original_layout({"lxmert.embeddings.word_embeddings.weight": torch.zeros(2, 2)})


def test_an_unknown_key_is_an_error_naming_it() -> None:
    state = scaled_state("vqa", answers=7)
    state["logit_fc.4.weight"] = torch.zeros(3)
    state["lxrt_encoder.model.bert.classifier.weight"] = torch.zeros(3)
    with pytest.raises(OriginalCheckpointError, match="2 key") as caught:
        from_original(state, head="qa")
    assert "logit_fc.4.weight" in str(caught.value) and "bert.classifier.weight" in str(
        caught.value
    )
    # Below a known encoder part the name maps by prefix; the model then has no such tensor.
    state = scaled_state("vqa", answers=7)
    state["lxrt_encoder.model.bert.encoder.visn_fc.extra.weight"] = torch.zeros(3)
    with pytest.raises(
        OriginalCheckpointError, match=r"not in the model: .*visn_fc\.extra\.weight"
    ):
        model_from_original(state, num_attention_heads=2)


def test_a_wrong_shape_and_a_missing_key_are_errors_naming_them() -> None:
    state = scaled_state("vqa", answers=7)
    state["lxrt_encoder.model.bert.encoder.r_layers.2.output.dense.bias"] = torch.zeros(17)
    with pytest.raises(
        OriginalCheckpointError, match=r"r_layers\.2\.output\.dense\.bias has shape \[17\]"
    ):
        model_from_original(state, num_attention_heads=2)
    state = scaled_state("vqa", answers=7)
    del state["lxrt_encoder.model.bert.encoder.layer.3.attention.self.key.bias"]
    with pytest.raises(
        OriginalCheckpointError, match=r"missing .*encoder\.layer\.3\.attention\.self\.key\.bias"
    ):
        model_from_original(state, num_attention_heads=2)


def test_an_nlvr2_head_is_not_a_qa_head() -> None:
    with pytest.raises(OriginalCheckpointError, match="NLVR2 head"):
        from_original(scaled_state("nlvr2"), head="qa")


def test_key_both_with_and_without_module_is_refused() -> None:
    state = scaled_state("pretraining")
    state["module.bert.pooler.dense.bias"] = state["bert.pooler.dense.bias"]
    with pytest.raises(OriginalCheckpointError, match="also in the checkpoint"):
        from_original(state, head="qa")


def test_word_embeddings_win_over_a_different_decoder(caplog: pytest.LogCaptureFixture) -> None:
    state = scaled_state("pretraining")
    words = state["bert.embeddings.word_embeddings.weight"]
    state["cls.predictions.decoder.weight"] = torch.randn(words.shape)
    with caplog.at_level(logging.WARNING, logger="encoder.original.keys"):
        model = model_from_original(state, head="pretraining", num_attention_heads=2).model
    assert "word embeddings win" in caplog.text
    assert torch.equal(model.cls.predictions.decoder.weight, words)
    assert torch.equal(model.lxmert.embeddings.word_embeddings.weight, words)
    assert model.cls.predictions.decoder.weight is model.lxmert.embeddings.word_embeddings.weight


def test_equal_decoder_and_embeddings_load_quietly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="encoder.original.keys"):
        model_from_original(scaled_state("pretraining"), head="pretraining", num_attention_heads=2)
    assert caplog.text == ""


def _inputs(hidden_feat: int, vocab: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    return {
        "input_ids": torch.randint(1, vocab, (2, 6), generator=generator),
        "attention_mask": mask,
        "token_type_ids": torch.zeros(2, 6, dtype=torch.long),
        "visual_feats": torch.randn(2, 5, hidden_feat, generator=generator),
        "visual_pos": torch.rand(2, 5, 4, generator=generator),
    }


@pytest.mark.parametrize("data_parallel", [False, True], ids=["single", "module."])
@pytest.mark.parametrize(
    ("layout", "head"), [("pretraining", "pretraining"), ("pretraining", "qa"), ("vqa", "qa")]
)
def test_round_trip_ours_to_original_to_ours_gives_identical_logits(
    layout: str, head: str, data_parallel: bool
) -> None:
    first = model_from_original(scaled_state(layout, answers=7), head=head, num_attention_heads=2)
    exported = to_original(first.model.state_dict(), head=head, data_parallel=data_parallel)
    expected_layout = "pretraining" if head == "pretraining" else "vqa"
    names = (
        with_data_parallel(key_file(expected_layout))
        if data_parallel
        else key_file(expected_layout)
    )
    assert set(exported) == set(names)  # the key file's names exactly
    second = model_from_original(exported, head=head, num_attention_heads=2)
    inputs = _inputs(12, 40)
    with torch.no_grad():
        a, b = first.model(**inputs), second.model(**inputs)
    assert torch.equal(a.question_answering_score, b.question_answering_score)
    if head == "pretraining":
        assert torch.equal(a.prediction_logits, b.prediction_logits)


def test_round_trip_of_an_nlvr2_model() -> None:
    first = model_from_original(scaled_state("nlvr2"), num_attention_heads=2).model
    exported = to_original(first.state_dict(), head="nlvr2")
    assert set(exported) == set(key_file("nlvr2"))
    second = model_from_original(exported, num_attention_heads=2).model
    inputs = _inputs(12, 40)
    pair = {
        "input_ids": inputs["input_ids"],
        "attention_mask": inputs["attention_mask"],
        "visual_feats": torch.stack([inputs["visual_feats"]] * 2, dim=1),
        "visual_pos": torch.stack([inputs["visual_pos"]] * 2, dim=1),
    }
    with torch.no_grad():
        assert torch.equal(first(**pair).logits, second(**pair).logits)


def test_a_new_nlvr2_head_on_a_pretrained_encoder_starts_fresh() -> None:
    state = scaled_state("pretraining")
    loaded = model_from_original(state, head="nlvr2", num_attention_heads=2)
    assert set(loaded.ignored) == set(PRETRAINING_HEAD_KEYS) | set(ANSWER_HEAD_KEYS)
    model = loaded.model
    assert torch.equal(model.lxmert.pooler.dense.weight, state["bert.pooler.dense.weight"])
    assert model.logit_fc[0].weight.shape == (32, 32) and model.logit_fc[0].weight.std() > 0


def test_a_bare_encoder_has_no_original_layout() -> None:
    with pytest.raises(OriginalCheckpointError, match="no original layout"):
        to_original({}, head="base")
