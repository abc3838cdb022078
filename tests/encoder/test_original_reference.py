"""The mapping is right, not only complete: a VQA checkpoint (and model_LXRT.pth's answer
head) in the original layout gives, through transformers' model, the logits of LXMERT's
forward pass written here from the paper's and the original code's equations, directly on
the original tensors (9 language, 5 object, 5 cross layers, small dimensions)."""

from __future__ import annotations

import math

import pytest
import torch
from original_fixtures import scaled_state
from torch.nn import functional

from encoder.original import model_from_original

State = dict[str, torch.Tensor]
HEADS = 2


def _linear(s: State, name: str, x: torch.Tensor) -> torch.Tensor:
    return x @ s[name + ".weight"].T + s[name + ".bias"]


def _norm(s: State, name: str, x: torch.Tensor) -> torch.Tensor:
    # BERT's LayerNorm: eps 1e-12 everywhere in LXMERT.
    return functional.layer_norm(x, (x.shape[-1],), s[name + ".weight"], s[name + ".bias"], 1e-12)


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _attend(
    s: State, name: str, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Multi-head attention of ``x`` over ``context``; ``mask`` is additive, [B, 1, 1, S]."""

    def heads(t: torch.Tensor) -> torch.Tensor:
        batch, length, width = t.shape
        return t.reshape(batch, length, HEADS, width // HEADS).transpose(1, 2)

    q, k, v = (
        heads(_linear(s, f"{name}.{p}", t))
        for p, t in (("query", x), ("key", context), ("value", context))
    )
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask
    out = scores.softmax(dim=-1) @ v
    return out.transpose(1, 2).reshape(x.shape)


def _residual(s: State, name: str, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _norm(s, name + ".LayerNorm", _linear(s, name + ".dense", h) + x)


def _self_attention(s: State, name: str, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return _residual(s, name + ".output", _attend(s, name + ".self", x, x, mask), x)


def _feed_forward(s: State, inter: str, out: str, x: torch.Tensor) -> torch.Tensor:
    return _residual(s, out, _gelu(_linear(s, inter + ".dense", x)), x)


def _bert_layer(s: State, name: str, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    x = _self_attention(s, name + ".attention", x, mask)
    return _feed_forward(s, name + ".intermediate", name + ".output", x)


def _cross_layer(
    s: State,
    name: str,
    lang: torch.Tensor,
    lmask: torch.Tensor,
    visn: torch.Tensor,
    vmask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    # One cross-attention module serves both directions (LXMERT shares its weights).
    cross = name + ".visual_attention"
    lang, visn = (
        _residual(s, cross + ".output", _attend(s, cross + ".att", lang, visn, vmask), lang),
        _residual(s, cross + ".output", _attend(s, cross + ".att", visn, lang, lmask), visn),
    )
    lang = _self_attention(s, name + ".lang_self_att", lang, lmask)
    visn = _self_attention(s, name + ".visn_self_att", visn, vmask)
    lang = _feed_forward(s, name + ".lang_inter", name + ".lang_output", lang)
    visn = _feed_forward(s, name + ".visn_inter", name + ".visn_output", visn)
    return lang, visn


def reference_logits(
    s: State,
    *,
    encoder: str,
    head: str,
    ids: torch.Tensor,
    mask: torch.Tensor,
    feats: torch.Tensor,
    boxes: torch.Tensor,
) -> torch.Tensor:
    """LXMERT's QA logits from the original tensors (``encoder``: "bert." or
    "lxrt_encoder.model.bert."; ``head``: the answer head's prefix)."""
    e = encoder
    positions = torch.arange(ids.shape[1])
    words = (
        s[e + "embeddings.word_embeddings.weight"][ids]
        + s[e + "embeddings.position_embeddings.weight"][positions]
    )
    lang = _norm(
        s, e + "embeddings.LayerNorm", words + s[e + "embeddings.token_type_embeddings.weight"][0]
    )
    v = e + "encoder.visn_fc."
    visn = (
        _norm(s, v + "visn_layer_norm", _linear(s, v + "visn_fc", feats))
        + _norm(s, v + "box_layer_norm", _linear(s, v + "box_fc", boxes))
    ) / 2
    lmask = (1.0 - mask[:, None, None, :].float()) * -10000.0
    vmask = torch.zeros(feats.shape[0], 1, 1, feats.shape[1])
    for i in range(9):
        lang = _bert_layer(s, f"{e}encoder.layer.{i}", lang, lmask)
    for i in range(5):
        visn = _bert_layer(s, f"{e}encoder.r_layers.{i}", visn, vmask)
    for i in range(5):
        lang, visn = _cross_layer(s, f"{e}encoder.x_layers.{i}", lang, lmask, visn, vmask)
    pooled = torch.tanh(_linear(s, e + "pooler.dense", lang[:, 0]))
    hidden = _norm(s, head + "2", _gelu(_linear(s, head + "0", pooled)))
    return _linear(s, head + "3", hidden)


@pytest.mark.parametrize(
    ("layout", "encoder", "head"),
    [
        ("vqa", "lxrt_encoder.model.bert.", "logit_fc."),
        ("pretraining", "bert.", "answer_head.logit_fc."),
    ],
)
def test_logits_equal_the_original_equations(layout: str, encoder: str, head: str) -> None:
    state = scaled_state(layout, hidden=16, vocab=40, feat=12, answers=11, seed=5)
    model = model_from_original(state, head="qa", num_attention_heads=HEADS).model
    generator = torch.Generator().manual_seed(7)
    ids = torch.randint(1, 40, (3, 7), generator=generator)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    feats = torch.randn(3, 6, 12, generator=generator)
    boxes = torch.rand(3, 6, 4, generator=generator)
    with torch.no_grad():
        ours = model(
            input_ids=ids,
            attention_mask=mask,
            token_type_ids=torch.zeros_like(ids),
            visual_feats=feats,
            visual_pos=boxes,
        ).question_answering_score
        expected = reference_logits(
            state, encoder=encoder, head=head, ids=ids, mask=mask, feats=feats, boxes=boxes
        )
    assert ours.shape == (3, 11)
    assert expected.std() > 0.1  # the logits differ between answers: nothing degenerate
    # float32 through 19 layers in another operation order: agreement to ~1e-6 relative.
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
