"""Pretraining targets: shapes, masking rates, confidence weighting, parity, training."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from encoder_fixtures import FEAT_DIM, NUM_ANSWERS, make_regions, tiny_config
from transformers import LxmertForPreTraining, LxmertTokenizer

from encoder.answers import AnswerTable
from encoder.config import PretrainingConfig
from encoder.model import build_model
from encoder.pretrain import (
    PretrainingBatch,
    PretrainingExample,
    build_pretraining_batch,
    mask_boxes,
    mask_words,
    pretraining_losses,
    pretraining_step,
)

TABLE = AnswerTable(name="tiny", answers=("yes", "no", "red", "blue", "two"))
CAPTIONS = (
    "a red ball on the grass",
    "two blue cubes near a wall",
    "is the ball red?",
    "a small green circle above a square",
)


def _examples(counts: tuple[int, ...] = (6, 6, 6, 6)) -> list[PretrainingExample]:
    answers = ("red", None, "yes", "maybe")
    return [
        PretrainingExample(
            regions=make_regions(f"img{i}", n, seed=10 + i), caption=CAPTIONS[i], answer=answers[i]
        )
        for i, n in enumerate(counts)
    ]


def test_target_shapes_and_invariants(small_tokenizer: LxmertTokenizer) -> None:
    examples = _examples((6, 4, 6, 3))
    batch = build_pretraining_batch(examples, small_tokenizer, seed=0, answer_table=TABLE)
    b, t = batch.input_ids.shape
    assert b == 4 and t <= 20
    for name in ("attention_mask", "token_type_ids", "lm_labels"):
        assert getattr(batch, name).shape == (b, t) and getattr(batch, name).dtype == torch.long
    assert batch.visual_feats.shape == (4, 6, FEAT_DIM) and batch.visual_pos.shape == (4, 6, 4)
    assert batch.visual_attention_mask.sum(1).tolist() == [6, 4, 6, 3]
    for key in ("obj", "attr"):
        ids, conf = batch.obj_labels[key]
        assert ids.shape == conf.shape == (4, 6) and ids.dtype == torch.long
        assert conf[batch.visual_attention_mask == 0].eq(0).all()  # padding weighs nothing
    target, mask = batch.obj_labels["feat"]
    np.testing.assert_array_equal(target[0].numpy(), examples[0].regions.features)
    assert mask.shape == (4, 6) and mask[batch.visual_attention_mask == 0].eq(0).all()
    np.testing.assert_array_equal(
        batch.obj_labels["obj"][1][0].numpy(), examples[0].regions.objects_conf
    )
    # Unmasked words are ignored, [CLS]/[SEP]/padding are never chosen.
    chosen = batch.lm_labels != -100
    assert not chosen[:, 0].any()
    assert not chosen[batch.attention_mask == 0].any()
    # Swapped captions carry no answer; kept ones carry theirs ("maybe" is outside the table).
    expected = [TABLE.label(e.answer) if e.answer else None for e in examples]
    for row, matched in enumerate(batch.matched_label.tolist()):
        want = expected[row] if matched and expected[row] is not None else -100
        assert batch.ans[row].item() == want
    # Seeded: the same seed gives the same batch, another seed another.
    again = build_pretraining_batch(examples, small_tokenizer, seed=0, answer_table=TABLE)
    assert torch.equal(again.input_ids, batch.input_ids)
    assert torch.equal(again.visual_feats, batch.visual_feats)
    other = build_pretraining_batch(examples, small_tokenizer, seed=1, answer_table=TABLE)
    assert not torch.equal(other.visual_feats, batch.visual_feats) or not torch.equal(
        other.input_ids, batch.input_ids
    )


def test_word_masking_rates_over_10k_draws() -> None:
    rng = np.random.default_rng(0)
    ids = np.full((100, 100), 2000, np.int64)
    maskable = np.ones_like(ids, bool)
    maskable[:, 0] = False
    corrupted, labels = mask_words(ids, maskable, rng=rng, vocab_size=30522, mask_token_id=103)
    chosen = labels != -100
    n = maskable.sum()
    assert abs(chosen.sum() / n - 0.15) < 0.012
    assert not chosen[:, 0].any() and (corrupted[:, 0] == 2000).all()
    assert (labels[chosen] == 2000).all()
    assert (corrupted[~chosen] == 2000).all()
    share_mask = (corrupted[chosen] == 103).mean()
    share_random = ((corrupted[chosen] != 103) & (corrupted[chosen] != 2000)).mean()
    share_kept = (corrupted[chosen] == 2000).mean()
    assert abs(share_mask - 0.8) < 0.04
    assert abs(share_random - 0.1) < 0.03
    assert abs(share_kept - 0.1) < 0.03


def test_box_masking_rates_and_sources_over_10k_draws() -> None:
    rng = np.random.default_rng(1)
    rows, boxes = 100, 100
    # Every feature of image b is the constant b + 1, so a replacement's source is readable.
    features = np.repeat(np.arange(1, rows + 1, dtype=np.float32)[:, None, None], boxes, 1)
    features = np.repeat(features, 3, 2)
    valid = np.ones((rows, boxes), bool)
    valid[:, -10:] = False
    features[~valid] = -1.0  # padding must never be a replacement's source
    corrupted, feat_mask = mask_boxes(features, valid, [f"i{b}" for b in range(rows)], rng=rng)
    chosen = feat_mask.astype(bool)
    assert not chosen[~valid].any()
    assert abs(chosen.sum() / valid.sum() - 0.15) < 0.012
    own = features[..., 0]
    value = corrupted[..., 0]
    zeroed = chosen & (value == 0)
    kept = chosen & (value == own)
    replaced = chosen & (value != 0) & (value != own)
    assert not (value[valid] == -1.0).any()
    assert zeroed.sum() + kept.sum() + replaced.sum() == chosen.sum()
    assert abs(zeroed.sum() / chosen.sum() - 0.8) < 0.04
    assert abs(replaced.sum() / chosen.sum() - 0.1) < 0.03
    assert abs(kept.sum() / chosen.sum() - 0.1) < 0.03
    assert (corrupted[~chosen] == features[~chosen]).all()
    # Replacements are whole feature vectors of real boxes of other images.
    assert (corrupted[replaced] == corrupted[replaced][:, :1]).all()


def test_caption_swap_rate(tokenizer: LxmertTokenizer) -> None:
    examples = [
        PretrainingExample(regions=make_regions(f"img{i}", 2, seed=i), caption=f"caption {i}")
        for i in range(20)
    ]
    matched = [
        build_pretraining_batch(examples, tokenizer, seed=s, answer_table=TABLE).matched_label
        for s in range(200)
    ]
    rate = 1 - torch.cat(matched).float().mean().item()
    assert abs(rate - 0.5) < 0.04  # 4000 draws, 3.6 standard deviations
    # A swapped row shows another example's caption, a kept row its own.
    plain = PretrainingConfig(word_mask_rate=0.0)
    batch = build_pretraining_batch(examples, tokenizer, seed=0, config=plain)
    for row, matched in enumerate(batch.matched_label.tolist()):
        text = tokenizer.decode(batch.input_ids[row], skip_special_tokens=True)
        assert (text == f"caption {row}") == bool(matched)
        assert text.startswith("caption ")
    # A batch of one image has nothing to swap with.
    single = [examples[0], PretrainingExample(regions=examples[0].regions, caption="x")]
    for seed in range(20):
        batch = build_pretraining_batch(single, tokenizer, seed=seed, answer_table=TABLE)
        assert batch.matched_label.tolist() == [1, 1]


def _manual_obj_loss(
    model: LxmertForPreTraining, batch: PretrainingBatch, key: str
) -> torch.Tensor:
    """Plain recomputation: -log p(label) * conf summed over boxes / real boxes * 6.67."""
    vision = model.lxmert(**batch.model_inputs()).vision_output
    logits = model.obj_predict_head(vision)[key]
    ids, conf = batch.obj_labels[key]
    total = torch.zeros(())
    for b in range(ids.shape[0]):
        for i in range(ids.shape[1]):
            log_p = F.log_softmax(logits[b, i], dim=-1)[ids[b, i]]
            total = total - log_p * conf[b, i]
    return total / batch.visual_attention_mask.sum() * model.config.visual_loss_normalizer


def _with_labels(
    batch: PretrainingBatch, key: str, ids: torch.Tensor, conf: torch.Tensor
) -> PretrainingBatch:
    return dataclasses.replace(batch, obj_labels={**batch.obj_labels, key: (ids, conf)})


def test_confidence_weighting(small_tokenizer: LxmertTokenizer) -> None:
    model = build_model(tiny_config(), head="pretraining")
    batch = build_pretraining_batch(
        _examples((6, 4, 6, 3)), small_tokenizer, seed=3, answer_table=TABLE
    )
    conf = batch.obj_labels["obj"][1].clone()
    conf[0, 2] = 0.0
    batch = _with_labels(batch, "obj", batch.obj_labels["obj"][0], conf)
    with torch.no_grad():
        losses = pretraining_losses(model, batch)
        torch.testing.assert_close(losses.obj, _manual_obj_loss(model, batch, "obj"))
        torch.testing.assert_close(losses.attr, _manual_obj_loss(model, batch, "attr"))
        # The zero-confidence box contributes nothing whatever its label.
        ids = batch.obj_labels["obj"][0].clone()
        ids[0, 2] = (ids[0, 2] + 1) % 10
        changed = pretraining_losses(model, _with_labels(batch, "obj", ids, conf))
        torch.testing.assert_close(changed.obj, losses.obj)


def test_masked_label_boxes_option(small_tokenizer: LxmertTokenizer) -> None:
    config = PretrainingConfig(label_boxes="masked")
    batch = build_pretraining_batch(
        _examples(), small_tokenizer, seed=4, answer_table=TABLE, config=config
    )
    all_boxes = build_pretraining_batch(_examples(), small_tokenizer, seed=4, answer_table=TABLE)
    torch.testing.assert_close(
        batch.obj_labels["obj"][1], all_boxes.obj_labels["obj"][1] * batch.feat_mask
    )


def test_terms_match_transformers_loss(small_tokenizer: LxmertTokenizer) -> None:
    model = build_model(tiny_config(), head="pretraining")
    config = PretrainingConfig(word_mask_rate=0.5)  # so that every term has targets
    batch = build_pretraining_batch(
        _examples(), small_tokenizer, seed=5, answer_table=TABLE, config=config
    )
    assert (batch.ans != -100).any() and (batch.lm_labels != -100).any()
    with torch.no_grad():
        ours = pretraining_losses(model, batch)
        theirs = model(**batch.model_kwargs()).loss
    torch.testing.assert_close(ours.total, theirs, rtol=1e-5, atol=1e-6)
    terms = ours.as_floats()
    assert terms["total"] == pytest.approx(
        sum(v for k, v in terms.items() if k != "total"), rel=1e-5
    )
    assert all(v > 0 for v in terms.values())


def test_no_targets_give_zero_not_nan(small_tokenizer: LxmertTokenizer) -> None:
    model = build_model(tiny_config(), head="pretraining")
    config = PretrainingConfig(word_mask_rate=0.0, obj_mask_rate=0.0)
    examples = [PretrainingExample(regions=make_regions("a", 3, seed=1), caption="a cat")]
    losses = pretraining_step(model, small_tokenizer, examples, seed=0, config=config)
    assert losses.masked_lm.item() == 0.0 and losses.qa.item() == 0.0 and losses.feat.item() == 0.0
    assert torch.isfinite(losses.total)
    losses.total.backward()


def test_loss_falls_on_a_fixed_batch(small_tokenizer: LxmertTokenizer) -> None:
    model = build_model(tiny_config(), head="pretraining").train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    examples = _examples((6, 4, 6, 3))
    history = []
    for _ in range(20):
        optimizer.zero_grad()
        losses = pretraining_step(model, small_tokenizer, examples, seed=7, answer_table=TABLE)
        losses.total.backward()
        optimizer.step()
        history.append(losses.total.item())
    assert np.isfinite(history).all()
    assert history[-1] < 0.6 * history[0]


def test_incompatible_model_is_refused(small_tokenizer: LxmertTokenizer) -> None:
    model = build_model(tiny_config(num_object_labels=3), head="pretraining")
    examples = _examples()
    with pytest.raises(ValueError, match="num_object_labels=3"):
        pretraining_step(model, small_tokenizer, examples, seed=0, answer_table=TABLE)
    wide = build_model(tiny_config(visual_feat_dim=8), head="pretraining")
    with pytest.raises(ValueError, match="visual_feat_dim=8"):
        pretraining_step(wide, small_tokenizer, examples, seed=0, answer_table=TABLE)
    assert len(TABLE) == NUM_ANSWERS
