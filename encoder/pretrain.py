"""LXMERT pretraining targets from the detector's own labels, and one seeded loss call.

The recipe is LXMERT's (src/pretrain/lxmert_pretrain.py, lxmert_data.py), drawn from one
seeded ``numpy.random.Generator`` per batch so that a batch and its targets are reproducible:

* caption swap: with ``mismatch_rate`` a caption is replaced by that of another image in the
  batch (``matched_label`` 0), and then carries no QA target;
* words: each caption token is chosen with ``word_mask_rate``; a chosen token becomes
  ``[MASK]`` (80%), a random vocabulary token (10%) or stays (10%), and its label is the
  original id; every other position is ``-100``;
* boxes: each real box is chosen with ``obj_mask_rate``; a chosen feature is zeroed (80%),
  replaced by a random box feature of another image of the batch (10%; LXMERT drew from the
  whole dataset) or kept (10%);
* ``obj_labels``: ``{"obj": (objects_id, w), "attr": (attrs_id, w'), "feat": (features,
  feat_mask)}`` exactly as ``LxmertForPreTraining`` takes them, with ``w`` the detector's
  confidence (``label_boxes="all"``, LXMERT) or confidence times ``feat_mask`` ("masked").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import LxmertForPreTraining

from detector.structures import RegionFeatures
from encoder.answers import AnswerTable, answer_table_for
from encoder.config import DEFAULT_PRETRAINING, PretrainingConfig
from encoder.inputs import build_visual_inputs
from encoder.losses import (
    IGNORE_INDEX,
    feature_regression_loss,
    ignorable_cross_entropy,
    weighted_label_loss,
)
from encoder.tokenizer import LxmertTokenizer, TextInputs, encode_text


@dataclass(frozen=True)
class PretrainingExample:
    """One pretraining item.

    Attributes:
        regions: the detector's output for the image.
        caption: a sentence about the image (caption or question).
        answer: the QA answer (string in the answer set, or its label index), or None.
    """

    regions: RegionFeatures
    caption: str
    answer: str | int | None = None


@dataclass(frozen=True)
class PretrainingBatch:
    """Inputs and targets for ``LxmertForPreTraining``.

    Attributes:
        input_ids: int64 ``[B, T]`` masked caption tokens.
        attention_mask: int64 ``[B, T]``.
        token_type_ids: int64 ``[B, T]``.
        lm_labels: int64 ``[B, T]`` original id at chosen tokens, ``-100`` elsewhere.
        visual_feats: float32 ``[B, N, D]`` masked features.
        visual_pos: float32 ``[B, N, 4]`` normalised xyxy.
        visual_attention_mask: int64 ``[B, N]`` 1 for real boxes.
        obj_labels: ``{"obj": (int64 [B, N], float32 [B, N]), "attr": (same),
            "feat": (float32 [B, N, D] unmasked features, float32 [B, N] feat_mask)}``.
        matched_label: int64 ``[B]`` 1 if the caption belongs to the image, 0 if swapped.
        ans: int64 ``[B]`` answer label or ``-100``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    lm_labels: torch.Tensor
    visual_feats: torch.Tensor
    visual_pos: torch.Tensor
    visual_attention_mask: torch.Tensor
    obj_labels: dict[str, tuple[torch.Tensor, torch.Tensor]]
    matched_label: torch.Tensor
    ans: torch.Tensor

    @property
    def feat_mask(self) -> torch.Tensor:
        """float32 ``[B, N]`` 1 for boxes chosen for masking."""
        return self.obj_labels["feat"][1]

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments of ``LxmertModel.forward`` (no targets)."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "token_type_ids": self.token_type_ids,
            "visual_feats": self.visual_feats,
            "visual_pos": self.visual_pos,
            "visual_attention_mask": self.visual_attention_mask,
        }

    def model_kwargs(self) -> dict[str, object]:
        """Keyword arguments of ``LxmertForPreTraining.forward``, targets included."""
        return {
            **self.model_inputs(),
            "labels": self.lm_labels,
            "obj_labels": self.obj_labels,
            "matched_label": self.matched_label,
            "ans": self.ans,
        }

    def to(self, device: torch.device | str) -> PretrainingBatch:
        """A copy on ``device``."""
        return PretrainingBatch(
            **{k: v.to(device) for k, v in self.model_inputs().items()},
            lm_labels=self.lm_labels.to(device),
            obj_labels={
                key: (a.to(device), b.to(device)) for key, (a, b) in self.obj_labels.items()
            },
            matched_label=self.matched_label.to(device),
            ans=self.ans.to(device),
        )


@dataclass(frozen=True)
class PretrainingLosses:
    """Loss terms of one pretraining batch (scalar tensors; a disabled task gives 0).

    Attributes:
        total: the sum of the terms below, differentiable.
        masked_lm: cross-entropy over chosen caption tokens.
        matched: cross-entropy of the caption-image match classifier.
        obj: confidence-weighted cross-entropy over detector object labels.
        attr: confidence-weighted cross-entropy over detector attribute labels.
        feat: smooth-L1 feature regression over masked boxes.
        qa: cross-entropy over answer labels of matched examples that have one.
    """

    total: torch.Tensor
    masked_lm: torch.Tensor
    matched: torch.Tensor
    obj: torch.Tensor
    attr: torch.Tensor
    feat: torch.Tensor
    qa: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        """Every term as a Python float, for logging."""
        return {
            name: float(getattr(self, name).detach())
            for name in ("total", "masked_lm", "matched", "obj", "attr", "feat", "qa")
        }


def _split_chosen(
    draws: np.ndarray, chosen: np.ndarray, rate: float, config: PretrainingConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Split chosen items into (replace by mask/zero, replace by random); the rest are kept.

    One uniform draw decides both choice and treatment, as in LXMERT: ``u < rate`` chooses,
    ``u / rate`` then falls into [0, 0.8), [0.8, 0.9) or [0.9, 1).
    """
    scaled = draws / rate if rate > 0 else np.ones_like(draws)
    to_mask = chosen & (scaled < config.mask_token_rate)
    to_random = (
        chosen
        & (scaled >= config.mask_token_rate)
        & (scaled < config.mask_token_rate + config.random_token_rate)
    )
    return to_mask, to_random


def mask_words(
    input_ids: np.ndarray,
    maskable: np.ndarray,
    *,
    rng: np.random.Generator,
    vocab_size: int,
    mask_token_id: int,
    config: PretrainingConfig = DEFAULT_PRETRAINING,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT's masked-LM corruption.

    Args:
        input_ids: int64 ``[B, T]`` token ids.
        maskable: bool ``[B, T]`` positions that may be chosen (real tokens, not
            ``[CLS]``/``[SEP]``/padding).
        rng: the batch's generator.
        vocab_size: random replacements are drawn uniformly from ``[0, vocab_size)``.
        mask_token_id: id of ``[MASK]``.

    Returns:
        (corrupted ids ``[B, T]``, labels ``[B, T]``: original id where chosen, else -100).
    """
    draws = rng.random(input_ids.shape)
    chosen = maskable & (draws < config.word_mask_rate)
    to_mask, to_random = _split_chosen(draws, chosen, config.word_mask_rate, config)
    random_ids = rng.integers(0, vocab_size, size=input_ids.shape)
    corrupted = np.where(to_mask, mask_token_id, input_ids)
    corrupted = np.where(to_random, random_ids, corrupted)
    labels = np.where(chosen, input_ids, IGNORE_INDEX)
    return corrupted.astype(np.int64), labels.astype(np.int64)


def mask_boxes(
    features: np.ndarray,
    valid: np.ndarray,
    groups: Sequence[str],
    *,
    rng: np.random.Generator,
    config: PretrainingConfig = DEFAULT_PRETRAINING,
) -> tuple[np.ndarray, np.ndarray]:
    """LXMERT's masked-object corruption of box features.

    Args:
        features: float32 ``[B, N, D]``.
        valid: bool ``[B, N]`` real boxes.
        groups: B image ids; a random replacement comes from a real box of a row whose id
            differs (another image), or, if there is none, from another box of the same row.
        rng: the batch's generator.

    Returns:
        (corrupted features ``[B, N, D]``, feat_mask float32 ``[B, N]``, 1 where chosen).
    """
    draws = rng.random(valid.shape)
    chosen = valid & (draws < config.obj_mask_rate)
    to_zero, to_random = _split_chosen(draws, chosen, config.obj_mask_rate, config)
    corrupted = features.copy()
    corrupted[to_zero] = 0.0
    rows, cols = np.nonzero(valid)
    row_groups = np.asarray(groups, dtype=object)[rows]
    for b, i in zip(*np.nonzero(to_random), strict=True):
        pool = np.nonzero(row_groups != groups[b])[0]
        if pool.size == 0:
            pool = np.nonzero((rows == b) & (cols != i))[0]
        if pool.size == 0:
            continue  # a single box in the whole batch: nothing else to draw from
        pick = pool[rng.integers(0, pool.size)]
        corrupted[b, i] = features[rows[pick], cols[pick]]
    return corrupted, chosen.astype(np.float32)


def _swap_captions(
    examples: Sequence[PretrainingExample], rng: np.random.Generator, rate: float
) -> tuple[list[str], np.ndarray]:
    """Captions after LXMERT's 50% swap, and matched_label (1 kept, 0 swapped)."""
    ids = [example.regions.image_id for example in examples]
    captions, matched = [], np.ones(len(examples), np.int64)
    for index, example in enumerate(examples):
        others = [j for j, other in enumerate(ids) if other != ids[index]]
        if rng.random() < rate and others:
            captions.append(examples[others[rng.integers(0, len(others))]].caption)
            matched[index] = 0
        else:
            captions.append(example.caption)
    return captions, matched


def _answer_label(example: PretrainingExample, table: AnswerTable | None) -> int:
    if example.answer is None:
        return IGNORE_INDEX
    if table is None:
        raise ValueError(
            f"image {example.regions.image_id!r}: an answer is given but no answer_table"
        )
    if isinstance(example.answer, int):
        if not 0 <= example.answer < len(table):
            raise ValueError(
                f"image {example.regions.image_id!r}: answer label {example.answer} outside "
                f"answer set {table.name!r} of {len(table)}"
            )
        return example.answer
    label = table.label(example.answer)
    # Answers outside the table carry no target, as LXMERT prunes them.
    return IGNORE_INDEX if label is None else label


def _masked_text(
    tokenizer: LxmertTokenizer,
    captions: Sequence[str],
    *,
    rng: np.random.Generator,
    config: PretrainingConfig,
) -> tuple[np.ndarray, np.ndarray, TextInputs]:
    """Token ids with words masked for the masked-LM target, its labels, and the text inputs."""
    text = encode_text(tokenizer, captions, max_length=config.max_caption_length)
    ids = text.input_ids.numpy()
    special = np.isin(ids, tokenizer.all_special_ids)
    maskable = text.attention_mask.numpy().astype(bool) & ~special
    masked_ids, lm_labels = mask_words(
        ids,
        maskable,
        rng=rng,
        vocab_size=len(tokenizer),
        mask_token_id=tokenizer.mask_token_id,
        config=config,
    )
    return masked_ids, lm_labels, text


def _detector_labels(
    regions: Sequence[RegionFeatures],
    key: str,
    *,
    valid: np.ndarray,
    feat_mask: np.ndarray,
    config: PretrainingConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The detector's ``objects`` or ``attrs`` ids and confidences as masked-object targets,
    ``[B, N]`` padded like the boxes; confidences zeroed outside the masked boxes when the
    recipe labels only those."""
    label_ids = np.zeros(valid.shape, np.int64)
    confs = np.zeros(valid.shape, np.float32)
    for row, item in enumerate(regions):
        label_ids[row, : item.num_boxes] = getattr(item, f"{key}_id")
        confs[row, : item.num_boxes] = getattr(item, f"{key}_conf")
    if config.label_boxes == "masked":
        confs = confs * feat_mask
    return torch.from_numpy(label_ids), torch.from_numpy(confs)


def build_pretraining_batch(
    examples: Sequence[PretrainingExample],
    tokenizer: LxmertTokenizer,
    *,
    seed: int | np.random.Generator,
    answer_table: AnswerTable | None = None,
    config: PretrainingConfig = DEFAULT_PRETRAINING,
) -> PretrainingBatch:
    """Inputs and targets of one batch, reproducible from ``seed``.

    Args:
        examples: B items; boxes are padded to the image with the most.
        tokenizer: from ``encoder.tokenizer.load_tokenizer``.
        seed: an int or a generator that draws every random choice of the batch.
        answer_table: maps string answers to labels; needed when any example has an answer.
        config: rates and lengths of the recipe.
    """
    if len(examples) == 0:
        raise ValueError("build_pretraining_batch needs at least one example")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    regions = [example.regions for example in examples]
    captions, matched = _swap_captions(examples, rng, config.mismatch_rate)

    masked_ids, lm_labels, text = _masked_text(tokenizer, captions, rng=rng, config=config)
    visual = build_visual_inputs(regions)
    valid = visual.visual_attention_mask.numpy().astype(bool)
    features = visual.visual_feats.numpy()
    masked_feats, feat_mask = mask_boxes(
        features, valid, [r.image_id for r in regions], rng=rng, config=config
    )
    labels = {
        key: _detector_labels(regions, key, valid=valid, feat_mask=feat_mask, config=config)
        for key in ("objects", "attrs")
    }
    answers = [
        _answer_label(example, answer_table) if matched[index] else IGNORE_INDEX
        for index, example in enumerate(examples)
    ]
    return PretrainingBatch(
        input_ids=torch.from_numpy(masked_ids),
        attention_mask=text.attention_mask,
        token_type_ids=text.token_type_ids,
        lm_labels=torch.from_numpy(lm_labels),
        visual_feats=torch.from_numpy(masked_feats),
        visual_pos=visual.visual_pos,
        visual_attention_mask=visual.visual_attention_mask,
        obj_labels={
            "obj": labels["objects"],
            "attr": labels["attrs"],
            "feat": (torch.from_numpy(features.copy()), torch.from_numpy(feat_mask)),
        },
        matched_label=torch.from_numpy(matched),
        ans=torch.tensor(answers, dtype=torch.long),
    )


def _check_batch(model: LxmertForPreTraining, batch: PretrainingBatch) -> None:
    config = model.config
    if batch.visual_feats.shape[-1] != config.visual_feat_dim:
        raise ValueError(
            f"features are {batch.visual_feats.shape[-1]}-d but the model expects "
            f"visual_feat_dim={config.visual_feat_dim}"
        )
    for key, size, field_name in (
        ("obj", config.num_object_labels, "num_object_labels"),
        ("attr", config.num_attr_labels, "num_attr_labels"),
    ):
        label_ids = batch.obj_labels[key][0]
        if label_ids.numel() and int(label_ids.max()) >= size:
            raise ValueError(
                f"detector {key} label {int(label_ids.max())} >= the model's {field_name}={size}"
            )
    if int(batch.input_ids.max()) >= config.vocab_size:
        raise ValueError(
            f"token id {int(batch.input_ids.max())} >= the model's vocab_size={config.vocab_size}"
        )
    if int(batch.ans.max()) >= config.num_qa_labels:
        raise ValueError(
            f"answer label {int(batch.ans.max())} >= the model's num_qa_labels="
            f"{config.num_qa_labels}"
        )


def pretraining_losses(model: LxmertForPreTraining, batch: PretrainingBatch) -> PretrainingLosses:
    """Run ``model`` (train or eval mode, as it is) on ``batch`` and return every loss term.

    Uses the model's own backbone and heads; the terms are those of ``LxmertForPreTraining``
    (see ``encoder.losses`` for the two edge-case differences). Tasks the model's config turns
    off give 0.
    """
    _check_batch(model, batch)
    config = model.config
    lang, vision, pooled = model.lxmert(**batch.model_inputs(), return_dict=False)[:3]
    lm_scores, match_scores = model.cls(lang, pooled)
    zero = pooled.sum() * 0.0
    terms = dict.fromkeys(("masked_lm", "matched", "obj", "attr", "feat", "qa"), zero)
    if config.task_mask_lm:
        terms["masked_lm"] = ignorable_cross_entropy(lm_scores, batch.lm_labels)
    if config.task_matched:
        terms["matched"] = ignorable_cross_entropy(match_scores, batch.matched_label)
    if config.task_qa:
        terms["qa"] = ignorable_cross_entropy(model.answer_head(pooled), batch.ans)
    if config.task_obj_predict:
        predicted = model.obj_predict_head(vision)
        valid = batch.visual_attention_mask
        normalizer = float(config.visual_loss_normalizer)
        for key in ("obj", "attr"):
            if key in predicted:
                label_ids, weights = batch.obj_labels[key]
                terms[key] = weighted_label_loss(
                    predicted[key], label_ids, weights, valid, normalizer=normalizer
                )
        if "feat" in predicted:
            target, mask = batch.obj_labels["feat"]
            terms["feat"] = feature_regression_loss(
                predicted["feat"], target, mask, valid, normalizer=normalizer
            )
    total = sum(terms.values(), zero)
    return PretrainingLosses(total=total, **terms)


def pretraining_step(
    model: LxmertForPreTraining,
    tokenizer: LxmertTokenizer,
    examples: Sequence[PretrainingExample],
    *,
    seed: int | np.random.Generator,
    answer_table: AnswerTable | None = None,
    config: PretrainingConfig = DEFAULT_PRETRAINING,
) -> PretrainingLosses:
    """Targets for ``examples`` (seeded) and the model's loss terms on them, in one call.

    ``answer_table`` defaults to the shipped set matching the model's ``num_qa_labels`` when an
    example carries an answer. The batch is moved to the model's device. No backward or
    optimiser step is taken: call ``losses.total.backward()``.
    """
    if answer_table is None and any(e.answer is not None for e in examples):
        answer_table = answer_table_for(model.config.num_qa_labels)
    batch = build_pretraining_batch(
        examples, tokenizer, seed=seed, answer_table=answer_table, config=config
    )
    return pretraining_losses(model, batch.to(model.device))
