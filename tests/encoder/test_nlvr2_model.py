"""The NLVR2 model: its head against a hand-written computation, save/load, building from
another LXMERT checkpoint, and the box mask of pairs whose images have different box counts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from encoder_fixtures import make_regions, tiny_config
from transformers import LxmertForPreTraining, LxmertModel, LxmertTokenizer

from encoder.build import Encoder
from encoder.config import EncoderConfig
from encoder.inputs import build_visual_inputs
from encoder.model import build_model
from encoder.nlvr2 import LxmertForNLVR2, build_pair_inputs
from encoder.tokenizer import encode_text


def _text(tokenizer: LxmertTokenizer, statements: list[str]) -> dict[str, torch.Tensor]:
    return dict(vars(encode_text(tokenizer, statements, max_length=12)))


def _head_by_hand(model: LxmertForNLVR2, pooled: torch.Tensor) -> torch.Tensor:
    """Linear -> erf GeLU -> LayerNorm(eps 1e-12) -> Linear, written out with the weights."""
    first, norm, last = model.logit_fc[0], model.logit_fc[2], model.logit_fc[3]
    x = pooled @ first.weight.T + first.bias
    x = 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    x = (x - mean) / torch.sqrt(var + 1e-12) * norm.weight + norm.bias
    return x @ last.weight.T + last.bias


def test_forward_equals_the_encoder_per_image_and_a_hand_written_head(
    small_tokenizer: LxmertTokenizer,
) -> None:
    model = LxmertForNLVR2(tiny_config()).eval()
    lefts = [make_regions("a", 5, seed=1), make_regions("b", 5, seed=2)]
    rights = [make_regions("c", 5, seed=3), make_regions("d", 5, seed=4)]
    statements = ["the red circle is above", "two blue square"]
    text = _text(small_tokenizer, statements)
    pairs = build_pair_inputs(lefts, rights)
    with torch.no_grad():
        logits = model(**text, **vars(pairs)).logits
        # Reference: the shared LxmertModel on each image alone, then the head by hand.
        pooled = []
        for row, (left, right) in enumerate(zip(lefts, rights, strict=True)):
            halves = []
            for image in (left, right):
                visual = build_visual_inputs([image])
                single = {k: v[row : row + 1] for k, v in text.items()}
                halves.append(model.lxmert(**single, **vars(visual)).pooled_output[0])
            pooled.append(torch.cat(halves))  # left, then right
        expected = _head_by_hand(model, torch.stack(pooled))
    assert logits.shape == (2, 2)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_loss_is_cross_entropy(small_tokenizer: LxmertTokenizer) -> None:
    model = LxmertForNLVR2(tiny_config()).eval()
    text = _text(small_tokenizer, ["a circle", "the cube"])
    pairs = build_pair_inputs(
        [make_regions("a", 3, seed=1), make_regions("b", 3, seed=2)],
        [make_regions("c", 3, seed=3), make_regions("d", 3, seed=4)],
    )
    labels = torch.tensor([1, 0])
    with torch.no_grad():
        output = model(**text, **vars(pairs), labels=labels)
    assert output.loss is not None
    log_p = output.logits.log_softmax(dim=-1)
    expected = -(log_p[0, 1] + log_p[1, 0]) / 2
    torch.testing.assert_close(output.loss, expected)


def test_save_and_load_round_trip_exactly(tmp_path: Path, small_tokenizer: LxmertTokenizer) -> None:
    model = LxmertForNLVR2(tiny_config()).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    loaded = build_model(tmp_path, head="nlvr2")
    assert isinstance(loaded, LxmertForNLVR2)
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    assert any(key.startswith("logit_fc.") for key in original)
    for key, value in original.items():
        assert torch.equal(value, restored[key]), key
    text = _text(small_tokenizer, ["is the ball red"])
    pairs = build_pair_inputs([make_regions("a", 4, seed=5)], [make_regions("b", 6, seed=6)])
    with torch.no_grad():
        assert torch.equal(
            model(**text, **vars(pairs)).logits, loaded(**text, **vars(pairs)).logits
        )


@pytest.mark.parametrize("source_class", [LxmertForPreTraining, LxmertModel])
def test_built_from_another_lxmert_checkpoint_keeps_its_encoder(
    tmp_path: Path, source_class: type[LxmertModel] | type[LxmertForPreTraining]
) -> None:
    source = source_class(tiny_config())
    source.save_pretrained(tmp_path, safe_serialization=True)
    model = build_model(tmp_path, head="nlvr2")
    assert isinstance(model, LxmertForNLVR2)
    encoder = source.lxmert if isinstance(source, LxmertForPreTraining) else source
    for key, value in encoder.state_dict().items():
        assert torch.equal(model.lxmert.state_dict()[key], value), key
    # The head is new: LXMERT's BERT initialisation (LayerNorm 1/0, biases 0).
    assert torch.equal(model.logit_fc[2].weight, torch.ones(64))
    assert torch.equal(model.logit_fc[3].bias, torch.zeros(2))


def test_pairs_with_different_box_counts_are_padded_and_the_mask_is_used(
    small_tokenizer: LxmertTokenizer,
) -> None:
    # A wide initialisation, so that what the padding holds would show in the logits.
    model = LxmertForNLVR2(tiny_config(initializer_range=0.5)).eval()
    left, right = make_regions("few", 3, seed=7), make_regions("many", 8, seed=8)
    pairs = build_pair_inputs([left], [right])
    assert pairs.visual_feats.shape == (1, 2, 8, left.features.shape[1])
    assert pairs.visual_attention_mask.tolist() == [[[1] * 3 + [0] * 5, [1] * 8]]
    # Every box of both images is there, none cut.
    torch.testing.assert_close(pairs.visual_feats[0, 0, :3], torch.from_numpy(left.features))
    torch.testing.assert_close(pairs.visual_feats[0, 1], torch.from_numpy(right.features))
    text = _text(small_tokenizer, ["the circle is left of the square"])
    with torch.no_grad():
        padded = model(**text, **vars(pairs)).logits
        # Reference: each image alone, unpadded.
        alone = torch.cat(
            [
                model.lxmert(**text, **vars(build_visual_inputs([image]))).pooled_output[0]
                for image in (left, right)
            ]
        )
        expected = _head_by_hand(model, alone[None])
        # Garbage in the padding changes nothing while the mask hides it ...
        noisy_feats = pairs.visual_feats.clone()
        noisy_feats[0, 0, 3:] = 100.0
        noisy = model(
            **text,
            visual_feats=noisy_feats,
            visual_pos=pairs.visual_pos,
            visual_attention_mask=pairs.visual_attention_mask,
        ).logits
        # ... and everything once the mask is dropped.
        unmasked = model(**text, visual_feats=noisy_feats, visual_pos=pairs.visual_pos).logits
    torch.testing.assert_close(padded, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(noisy, padded, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unmasked, padded, atol=1e-3)


def test_encoder_judge_gives_probabilities_and_refuses_a_qa_model(
    small_tokenizer: LxmertTokenizer,
) -> None:
    model = LxmertForNLVR2(tiny_config()).eval()
    encoder = Encoder(
        config=EncoderConfig(checkpoint="tiny", head="nlvr2", max_question_length=12),
        model=model,
        tokenizer=small_tokenizer,
        answers=None,
    )
    lefts, rights = [make_regions("a", 4, seed=1)], [make_regions("b", 2, seed=2)]
    [probability] = encoder.judge(lefts, rights, ["two red circle"])
    with torch.no_grad():
        logits = model(**encoder.pair_inputs(lefts, rights, ["two red circle"])).logits
    assert probability == pytest.approx(float(logits.softmax(-1)[0, 1]))
    with pytest.raises(ValueError, match="one pair of images per statement"):
        encoder.judge(lefts, rights, ["a", "b"])
    qa = Encoder(
        config=EncoderConfig(checkpoint="qa"),
        model=build_model(tiny_config(), head="qa"),
        tokenizer=small_tokenizer,
        answers=None,
    )
    with pytest.raises(ValueError, match=r"no NLVR2 head.*shapes-nlvr2"):
        qa.judge(lefts, rights, ["a"])
