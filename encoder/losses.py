"""Loss terms of LXMERT's pretraining and fine-tuning, as plain functions of tensors.

transformers' ``LxmertForPreTraining`` returns only the sum of its terms; these functions give
each term, computed as LXMERT (src/lxrt/modeling.py) and transformers do, with two deliberate
differences that only matter at the edges:

* a term whose targets are all ignored (no masked word, no answer in the batch) is 0, not the
  NaN of a cross-entropy mean over nothing;
* box-level terms are averaged over the real boxes (``visual_attention_mask``), not over all
  ``B * N`` slots, so padding in adaptive-box batches does not dilute them. Without padding
  this is exactly LXMERT's ``mean()``.

Otherwise transformers follows LXMERT: object/attribute cross-entropy on every box weighted by
the ``obj_labels`` weights (LXMERT passes the detector's confidences, not the box mask), feature
regression weighted by the box mask, each times ``visual_loss_normalizer``. That factor is
6.67 in ``LxmertConfig`` and 1 / 0.15 = 6.666... in LXMERT; we use the model config's value.
Ignored labels are -100 in transformers, -1 in LXMERT.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX: int = -100  # transformers' CrossEntropyLoss default; LXMERT's own code used -1


def _zero_like_graph(tensor: torch.Tensor) -> torch.Tensor:
    # Keeps the term attached to the graph, so backward() works when it is the only term.
    return tensor.sum() * 0.0


def ignorable_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labels that are not ``IGNORE_INDEX``; 0 if there are none.

    Args:
        logits: float ``[..., C]``.
        labels: int64 ``[...]`` in ``[0, C)`` or ``IGNORE_INDEX``.
    """
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1)
    if not bool((flat_labels != IGNORE_INDEX).any()):
        return _zero_like_graph(flat_logits)
    return F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX)


def weighted_label_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    valid: torch.Tensor,
    *,
    normalizer: float,
) -> torch.Tensor:
    """LXMERT's object / attribute loss: per-box cross-entropy times a per-box weight.

    ``sum(CE * weights) / num_real_boxes * normalizer``; with LXMERT's recipe ``weights`` is the
    detector's confidence (0 at padding) and ``normalizer`` is ``1 / 0.15`` (6.67).

    Args:
        logits: float ``[B, N, C]`` predicted class scores.
        labels: int64 ``[B, N]`` detector labels in ``[0, C)``.
        weights: float ``[B, N]`` per-box weights (0 removes a box).
        valid: ``[B, N]`` 1 for real boxes, 0 for padding.
        normalizer: LXMERT's ``visual_loss_normalizer``.
    """
    per_box = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none"
    )
    count = valid.sum().clamp(min=1).to(per_box.dtype)
    return (per_box * weights.reshape(-1).to(per_box.dtype)).sum() / count * normalizer


def feature_regression_loss(
    predicted: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    valid: torch.Tensor,
    *,
    normalizer: float,
) -> torch.Tensor:
    """LXMERT's masked feature regression: smooth-L1 averaged over the feature dimension, on
    masked boxes. ``sum(smoothL1.mean(-1) * mask) / num_real_boxes * normalizer``.

    Args:
        predicted: float ``[B, N, D]``.
        target: float ``[B, N, D]`` the unmasked input features.
        mask: float ``[B, N]`` 1 for boxes chosen for masking.
        valid: ``[B, N]`` 1 for real boxes, 0 for padding.
        normalizer: LXMERT's ``visual_loss_normalizer``.
    """
    per_box = F.smooth_l1_loss(predicted, target.to(predicted.dtype), reduction="none").mean(-1)
    count = valid.sum().clamp(min=1).to(per_box.dtype)
    return (per_box * mask.to(per_box.dtype)).sum() / count * normalizer


def soft_score_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """LXMERT's VQA/GQA fine-tuning loss on soft answer scores.

    Binary cross-entropy with logits, mean over ``B * L``, times the number of answers ``L``
    (src/tasks/vqa.py), i.e. the per-question sum of BCE averaged over the batch.

    Args:
        logits: float ``[B, L]`` QA logits.
        targets: float ``[B, L]`` soft scores in [0, 1] (VQA: min(1, annotators / 3)).
    """
    if logits.shape != targets.shape or logits.ndim != 2:
        raise ValueError(
            f"logits and targets must both be [B, L], got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    loss = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
    return loss * logits.shape[1]
