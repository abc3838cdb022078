"""NLVR2: is a statement true of a pair of images? LXMERT's ``NLVR2Model`` on transformers'
``LxmertModel``, adapted at its boundary as the QA model is.

The encoder reads each image with the statement; the two pooled outputs (the ``[CLS]``
token after the cross-modality layers) are concatenated, left image then right, and a head
Linear(2h, 2h) -> GeLU -> LayerNorm(2h, eps 1e-12) -> Linear(2h, 2) gives two logits:
index 0 "False", index 1 "True" (LXMERT's label). The loss is cross-entropy.

Saved with ``save_pretrained`` (``config.json`` naming ``LxmertForNLVR2`` + weights: the
encoder under ``lxmert.``, the head under ``logit_fc.``); built from any LXMERT checkpoint
with ``LxmertForNLVR2.from_pretrained(dir)`` (the encoder's weights load, the head starts
from LXMERT's BERT initialisation) or ``encoder.model.build_model(source, head="nlvr2")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import LxmertConfig, LxmertModel, LxmertPreTrainedModel

from detector.structures import RegionFeatures
from encoder.inputs import VisualInputs, build_visual_inputs

#: Logit index of each verdict (LXMERT's NLVR2 label: 1 means the statement is true).
FALSE_LABEL, TRUE_LABEL = 0, 1


@dataclass(frozen=True)
class NLVR2Output:
    """What :class:`LxmertForNLVR2` returns.

    Attributes:
        logits: float ``[B, 2]``; column 0 "False", column 1 "True".
        loss: mean cross-entropy against ``labels`` (a scalar), or None without labels.
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None


class LxmertForNLVR2(LxmertPreTrainedModel):
    """LXMERT with LXMERT's NLVR2 head (src/tasks/nlvr2_model.py), for B (left, right,
    statement) triples.

    Args:
        config: the LXMERT architecture; the head is ``2 * config.hidden_size`` wide.
    """

    def __init__(self, config: LxmertConfig) -> None:
        super().__init__(config)
        self.lxmert = LxmertModel(config)
        width = 2 * config.hidden_size
        self.logit_fc = nn.Sequential(
            nn.Linear(width, width),
            nn.GELU(),  # erf GeLU, as LXMERT's GeLU
            nn.LayerNorm(width, eps=1e-12),
            nn.Linear(width, 2),
        )
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        visual_feats: torch.Tensor,
        visual_pos: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        visual_attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> NLVR2Output:
        """Logits of B statements about B image pairs.

        Args:
            input_ids, attention_mask, token_type_ids: int64 ``[B, L]``, one statement per pair.
            visual_feats: float ``[B, 2, N, D]``, left image then right, zero-padded.
            visual_pos: float ``[B, 2, N, 4]`` xyxy normalised by (w, h, w, h), in [0, 1].
            visual_attention_mask: int64 ``[B, 2, N]``, 1 for real boxes, 0 for padding;
                None: every box is real.
            labels: int64 ``[B]``, 1 when the statement is true, 0 otherwise.
        """
        batch, images, boxes, dim = visual_feats.shape
        if images != 2:
            raise ValueError(f"visual_feats must be [B, 2, N, D], got {list(visual_feats.shape)}")

        def per_image(text: torch.Tensor | None) -> torch.Tensor | None:
            # Row 2b is pair b's left image, row 2b + 1 its right one: both read the statement.
            return None if text is None else text.repeat_interleave(2, dim=0)

        mask = visual_attention_mask
        output = self.lxmert(
            input_ids=per_image(input_ids),
            attention_mask=per_image(attention_mask),
            token_type_ids=per_image(token_type_ids),
            visual_feats=visual_feats.reshape(batch * 2, boxes, dim),
            visual_pos=visual_pos.reshape(batch * 2, boxes, visual_pos.shape[-1]),
            visual_attention_mask=None if mask is None else mask.reshape(batch * 2, boxes),
            return_dict=True,
        )
        pooled = output.pooled_output.reshape(batch, 2 * self.config.hidden_size)
        logits = self.logit_fc(pooled)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return NLVR2Output(logits=logits, loss=loss)


def build_pair_inputs(
    lefts: Sequence[RegionFeatures], rights: Sequence[RegionFeatures]
) -> VisualInputs:
    """Visual inputs of B image pairs: ``[B, 2, N, ...]``, left then right.

    Every image is padded to the image with the most boxes in the whole batch, and the mask
    says which boxes are real, so two images with different box counts are both used whole
    (LXMERT's loader stacks 36 and 36; nothing is ever cut here).

    Returns:
        :class:`~encoder.inputs.VisualInputs` with ``visual_feats`` float32 ``[B, 2, N, D]``,
        ``visual_pos`` float32 ``[B, 2, N, 4]`` (normalised xyxy) and
        ``visual_attention_mask`` int64 ``[B, 2, N]``.
    """
    if len(lefts) != len(rights):
        raise ValueError(f"got {len(lefts)} left images but {len(rights)} right images")
    interleaved = [image for pair in zip(lefts, rights, strict=True) for image in pair]
    flat = build_visual_inputs(interleaved)
    batch, boxes = len(lefts), flat.visual_feats.shape[1]
    return VisualInputs(
        visual_feats=flat.visual_feats.reshape(batch, 2, boxes, -1),
        visual_pos=flat.visual_pos.reshape(batch, 2, boxes, 4),
        visual_attention_mask=flat.visual_attention_mask.reshape(batch, 2, boxes),
    )


def true_probability(logits: torch.Tensor) -> torch.Tensor:
    """Probability that each statement is true: softmax of ``[B, 2]`` logits, column 1, ``[B]``."""
    return logits.float().softmax(dim=-1)[:, TRUE_LABEL]
