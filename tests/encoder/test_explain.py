"""encoder.explain: the hooks take all 34 maps with their history, relevance is a
distribution over the regions and words, follows the regions when they are permuted, is zero
where boxes are masked, never changes the answer, and follows Chefer et al.'s rules written
out by hand."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from encoder_fixtures import NUM_ANSWERS, make_regions, tiny_config
from transformers import LxmertForQuestionAnswering, LxmertTokenizer

from detector.structures import RegionFeatures
from encoder.answers import AnswerTable
from encoder.build import Encoder
from encoder.config import EncoderConfig
from encoder.explain import (
    METHODS,
    AttentionMap,
    capture_attention,
    chefer_relevance,
    explain_answer,
    explain_inputs,
    explain_judgement,
    head_average,
)
from encoder.inputs import build_visual_inputs
from encoder.nlvr2 import LxmertForNLVR2

ANSWERS = AnswerTable(name="tiny", answers=tuple(f"answer{i}" for i in range(NUM_ANSWERS)))
QUESTION = "what color is the circles ?"


def _qa_encoder(small_tokenizer: LxmertTokenizer, **overrides: int) -> Encoder:
    # A wide init so attention is far from uniform and the tests can tell regions apart.
    config = tiny_config(initializer_range=0.5, **overrides)
    return Encoder(
        config=EncoderConfig(checkpoint="tiny", max_question_length=12),
        model=LxmertForQuestionAnswering(config).eval(),
        tokenizer=small_tokenizer,
        answers=ANSWERS,
    )


def _permuted(region: RegionFeatures, order: np.ndarray) -> RegionFeatures:
    return dataclasses.replace(
        region,
        boxes=region.boxes[order],
        features=region.features[order],
        objects_id=region.objects_id[order],
        objects_conf=region.objects_conf[order],
        attrs_id=region.attrs_id[order],
        attrs_conf=region.attrs_conf[order],
    )


def test_hooks_capture_all_34_maps_with_gradients_and_the_19_transformers_returns(
    small_tokenizer: LxmertTokenizer,
) -> None:
    encoder = _qa_encoder(small_tokenizer, l_layers=9, r_layers=5, x_layers=5)
    inputs = encoder.model_inputs([make_regions("a", 7, seed=1)], [QUESTION])
    with capture_attention(encoder.model) as maps:
        output = encoder.model(**inputs, output_attentions=True)
    assert len(maps) == 34
    streams = [(m.stream, m.kind) for m in maps]
    assert streams[:9] == [("language", "lang_self")] * 9
    assert streams[9:14] == [("vision", "vision_self")] * 5
    per_cross = ["lang_to_vision", "vision_to_lang", "lang_self", "vision_self"]
    assert [k for _, k in streams[14:]] == per_cross * 5
    assert [m.layer for m in maps[14:]] == [i for i in range(5) for _ in range(4)]
    tokens, regions = inputs["input_ids"].shape[1], 7
    for m in maps:
        queries = tokens if m.kind in ("lang_self", "lang_to_vision") else regions
        keys = tokens if m.kind in ("lang_self", "vision_to_lang") else regions
        assert m.probs.shape == (1, 2, queries, keys)
        assert m.probs.grad_fn is not None  # not detached: gradients flow through it
    # The 19 maps transformers returns are among them, the very same numbers.
    returned = [
        *output.language_attentions,
        *output.vision_attentions,
        *output.cross_encoder_attentions,
    ]
    assert len(returned) == 19
    for theirs, ours in zip(
        returned, [*maps[:14], *(m for m in maps[14:] if m.kind == "lang_to_vision")], strict=True
    ):
        assert torch.equal(theirs, ours.probs)
    # The hooks are gone afterwards.
    with capture_attention(encoder.model) as later, torch.no_grad():
        pass
    with torch.no_grad():
        encoder.model(**inputs)
    assert later == []


@pytest.mark.parametrize("method", METHODS)
def test_relevance_is_a_distribution_over_regions_and_words(
    small_tokenizer: LxmertTokenizer, method: str
) -> None:
    encoder = _qa_encoder(small_tokenizer, l_layers=2, r_layers=2, x_layers=2)
    region = make_regions("a", 9, seed=3)
    explained = explain_answer(encoder, region, QUESTION, method=method)  # type: ignore[arg-type]
    scores = [r.score for r in explained.image.regions]
    assert len(scores) == 9 and min(scores) >= 0.0
    assert sum(scores) == pytest.approx(1.0, abs=1e-9)
    assert max(scores) - min(scores) > 1e-3  # not merely uniform
    assert [r.index for r in explained.image.regions] == list(range(9))
    assert explained.image.regions[4].box == tuple(float(v) for v in region.boxes[4])
    # WordPieces merged ("circle ##s"), [CLS] and [SEP] left out.
    assert [w.word for w in explained.words] == ["what", "color", "is", "the", "circles", "?"]
    assert min(w.score for w in explained.words) >= 0.0
    assert sum(w.score for w in explained.words) == pytest.approx(1.0, abs=1e-9)
    top = explained.image.top(2)
    assert top[0].score >= top[1].score


def test_permuting_the_regions_permutes_their_relevance(small_tokenizer: LxmertTokenizer) -> None:
    encoder = _qa_encoder(small_tokenizer, l_layers=2, r_layers=2, x_layers=2)
    region = make_regions("a", 8, seed=4)
    order = np.random.default_rng(0).permutation(8)
    before = explain_answer(encoder, region, QUESTION)
    after = explain_answer(encoder, _permuted(region, order), QUESTION)
    assert after.answer == before.answer
    original = np.array([r.score for r in before.image.regions])
    moved = np.array([r.score for r in after.image.regions])
    np.testing.assert_allclose(moved, original[order], rtol=1e-4, atol=1e-7)
    assert [w.score for w in after.words] == pytest.approx(
        [w.score for w in before.words], rel=1e-4
    )


def test_masked_regions_get_exactly_zero(small_tokenizer: LxmertTokenizer) -> None:
    encoder = _qa_encoder(small_tokenizer, l_layers=2, r_layers=2, x_layers=2)
    inputs = encoder.model_inputs([make_regions("a", 6, seed=5)], [QUESTION])
    mask = torch.tensor([[1, 0, 1, 1, 0, 1]])
    inputs["visual_attention_mask"] = mask
    for method in METHODS:
        raw = explain_inputs(
            encoder.model,
            inputs,
            target=lambda logits: logits[0, 1],
            rows=[0],
            method=method,  # type: ignore[arg-type]
        )
        regions = raw.rows[0].regions
        assert torch.all(regions[mask[0] == 0] == 0.0)
        assert torch.all(regions[mask[0] == 1] > 0.0)


def test_explaining_does_not_change_the_answer(small_tokenizer: LxmertTokenizer) -> None:
    encoder = _qa_encoder(small_tokenizer)
    regions = [make_regions("a", 5, seed=6)]
    inputs = encoder.model_inputs(regions, [QUESTION])
    with torch.inference_mode():
        plain = encoder.model(**inputs).question_answering_score.clone()
    [before] = encoder.answer(regions, [QUESTION], k=NUM_ANSWERS)
    raw = explain_inputs(encoder.model, inputs, target=lambda logits: logits[0, 0], rows=[0])
    torch.testing.assert_close(raw.logits, plain, rtol=0, atol=1e-6)
    [after] = encoder.answer(regions, [QUESTION], k=NUM_ANSWERS)
    assert after == before
    assert all(p.grad is None for p in encoder.model.parameters())
    explained = explain_answer(encoder, regions[0], QUESTION)
    assert (explained.answer, explained.probability) == pytest.approx(
        (before[0].answer, before[0].probability)
    )


def test_a_chosen_answer_is_explained_and_an_unknown_one_refused(
    small_tokenizer: LxmertTokenizer,
) -> None:
    encoder = _qa_encoder(small_tokenizer)
    region = make_regions("a", 5, seed=7)
    [ranked] = encoder.answer([region], [QUESTION], k=NUM_ANSWERS)
    last = ranked[-1]
    explained = explain_answer(encoder, region, QUESTION, answer=last.answer)
    assert (explained.answer, explained.label) == (last.answer, last.label)
    assert explained.probability == pytest.approx(last.probability)
    with pytest.raises(ValueError, match=r"'purple' is not in the answer set 'tiny'"):
        explain_answer(encoder, region, QUESTION, answer="purple")
    with pytest.raises(ValueError, match="method must be one of chefer, attention"):
        explain_answer(encoder, region, QUESTION, method="rollout")  # type: ignore[arg-type]


def _by_hand(maps: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
    """Chefer et al.'s eqs. 5-11 for one language layer, one vision layer and one cross layer,
    written out with loops over numpy (an independent reading of the paper)."""
    a = [
        np.maximum(g.numpy() * m.numpy(), 0).mean(axis=0) for m, g in zip(maps, grads, strict=True)
    ]
    lang, vision, t2i, i2t, lself, _ = a  # the last vision map: no path to [CLS]
    tokens, regions = lang.shape[0], vision.shape[0]
    r_tt, r_ii = np.eye(tokens), np.eye(regions)
    r_ti, r_it = np.zeros((tokens, regions)), np.zeros((regions, tokens))
    r_tt, r_ti = r_tt + lang @ r_tt, r_ti + lang @ r_ti
    r_ii, r_it = r_ii + vision @ r_ii, r_it + vision @ r_it

    def bar(r: np.ndarray) -> np.ndarray:
        hat = r - np.eye(len(r))
        out = np.zeros_like(hat)
        for row in range(len(r)):
            if hat[row].sum() > 0:
                out[row] = hat[row] / hat[row].sum()
        return out + np.eye(len(r))

    new_ti = r_ti + bar(r_tt).T @ t2i @ bar(r_ii)
    new_tt = r_tt + t2i @ r_it
    new_it = r_it + bar(r_ii).T @ i2t @ bar(r_tt)
    new_ii = r_ii + i2t @ r_ti
    r_tt, r_ti, r_it, r_ii = new_tt, new_ti, new_it, new_ii
    r_ti = r_ti + lself @ r_ti
    return torch.from_numpy(r_ti[0])


def test_chefer_rules_match_a_hand_written_reading_of_the_paper() -> None:
    rng = torch.Generator().manual_seed(0)
    tokens, regions, heads = 4, 3, 2

    def softmaxed(q: int, k: int) -> torch.Tensor:
        return torch.rand(1, heads, q, k, generator=rng).softmax(dim=-1)

    shapes = [(tokens, tokens), (regions, regions), (tokens, regions), (regions, tokens)]
    shapes += [(tokens, tokens), (regions, regions)]
    probs = [softmaxed(q, k) for q, k in shapes]
    grads = [torch.randn(p.shape, generator=rng) for p in probs]
    layout = [("language", 0, "lang_self"), ("vision", 0, "vision_self")]
    layout += [("cross", 0, k) for k in ("lang_to_vision", "vision_to_lang")]
    layout += [("cross", 0, "lang_self"), ("cross", 0, "vision_self")]
    maps = [
        AttentionMap(stream=s, layer=i, kind=k, probs=p)  # type: ignore[arg-type]
        for (s, i, k), p in zip(layout, probs, strict=True)
    ]
    ours = chefer_relevance(maps, grads, row=0).regions
    expected = _by_hand([p[0] for p in probs], [g[0] for g in grads])
    torch.testing.assert_close(ours.double(), expected, rtol=1e-5, atol=1e-7)
    assert torch.equal(head_average(probs[0][0], None), torch.zeros(tokens, tokens))


def test_nlvr2_relevance_per_region_of_each_picture(small_tokenizer: LxmertTokenizer) -> None:
    model = LxmertForNLVR2(tiny_config(initializer_range=0.5)).eval()
    encoder = Encoder(
        config=EncoderConfig(checkpoint="tiny", head="nlvr2", max_question_length=12),
        model=model,
        tokenizer=small_tokenizer,
        answers=None,
    )
    left, right = make_regions("l", 4, seed=8), make_regions("r", 7, seed=9)
    statement = "two red circles"
    [probability] = encoder.judge([left], [right], [statement])
    explained = explain_judgement(encoder, left, right, statement)
    assert explained.verdict == (probability > 0.5)
    assert explained.probability == pytest.approx(max(probability, 1 - probability))
    assert len(explained.left.regions) == 4 and len(explained.right.regions) == 7
    for image in (explained.left, explained.right):
        assert sum(r.score for r in image.regions) == pytest.approx(1.0)
        assert min(r.score for r in image.regions) >= 0.0
    assert explained.left.share + explained.right.share == pytest.approx(1.0)
    assert [w.word for w in explained.words] == ["two", "red", "circles"]
    # The left picture is padded to 7 boxes in the batch: its padding gets exactly zero.
    inputs = encoder.pair_inputs([left], [right], [statement])
    raw = explain_inputs(model, inputs, target=lambda logits: logits[0, 1], rows=[0, 1])
    assert torch.all(raw.rows[0].regions[4:] == 0.0)
    other = explain_judgement(encoder, left, right, statement, verdict=not explained.verdict)
    assert other.verdict is (not explained.verdict)
    with pytest.raises(ValueError, match="no QA head"):
        explain_answer(encoder, left, statement)


def test_refuses_a_model_in_training_mode(small_tokenizer: LxmertTokenizer) -> None:
    encoder = _qa_encoder(small_tokenizer)
    inputs = encoder.model_inputs([make_regions("a", 3, seed=1)], [QUESTION])
    encoder.model.train()
    with pytest.raises(ValueError, match="eval mode"):
        explain_inputs(encoder.model, inputs, target=lambda logits: logits[0, 0], rows=[0])
    encoder.model.eval()


def test_build_visual_inputs_padding_is_what_masking_means() -> None:
    # The masked-region test above relies on padding rows being masked as build_visual_inputs
    # makes them: zero features, mask 0.
    inputs = build_visual_inputs([make_regions("a", 2, seed=1), make_regions("b", 4, seed=2)])
    assert inputs.visual_attention_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_inputs_made_in_inference_mode_are_explained(small_tokenizer: LxmertTokenizer) -> None:
    # The detector runs in inference mode; its tensors cannot enter autograd unless cloned.
    encoder = _qa_encoder(small_tokenizer)
    region = make_regions("a", 5, seed=2)
    expected = explain_answer(encoder, region, QUESTION)
    with torch.inference_mode():
        inputs = encoder.model_inputs([region], [QUESTION])
        assert inputs["visual_feats"].is_inference()
        raw = explain_inputs(
            encoder.model, inputs, target=lambda logits: logits[0, expected.label], rows=[0]
        )
        inside = explain_answer(encoder, region, QUESTION)
    assert inside == expected
    got = (raw.rows[0].regions / raw.rows[0].regions.sum()).numpy()
    np.testing.assert_allclose(got, [r.score for r in expected.image.regions], rtol=1e-6)
