"""Encoder-side settings: which checkpoint, which head, which answer set, how questions are cut.

One frozen dataclass per concern, with presets by name. Nothing here loads anything.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

#: Which transformers class a checkpoint is loaded into.
Head = Literal["qa", "pretraining", "base", "nlvr2"]

#: Where in a box-level loss the detector's labels count (see :class:`PretrainingConfig`).
LabelBoxes = Literal["all", "masked"]


@dataclass(frozen=True)
class EncoderConfig:
    """How to build and feed one LXMERT encoder.

    Attributes:
        checkpoint: registry name (``lxmert-vqa``) or a directory written by ``save_pretrained``.
        head: ``"qa"`` (LxmertForQuestionAnswering), ``"pretraining"`` (LxmertForPreTraining),
            ``"base"`` (LxmertModel, no heads) or ``"nlvr2"`` (``encoder.nlvr2.LxmertForNLVR2``:
            two images, one statement, no answer set).
        answer_set: ``"vqa"`` (3129), ``"gqa"`` (1842), ``"lxmert"`` (9500, the pretraining QA
            table), a path to a JSON list of answers, or ``None`` to pick by the model's
            ``num_qa_labels``.
        max_question_length: tokens per question including ``[CLS]`` and ``[SEP]``; longer
            questions are truncated. 20 as in LXMERT's VQA/GQA code (``MAX_VQA_LENGTH``).
        num_attention_heads: attention heads of an original LXMERT ``.pth`` checkpoint, which
            no tensor records; None: hidden size / 64 as in BERT (12 for the released
            LXMERT). Directories carry theirs in ``config.json`` and ignore this.
    """

    checkpoint: str
    head: Head = "qa"
    answer_set: str | None = None
    max_question_length: int = 20
    num_attention_heads: int | None = None

    def __post_init__(self) -> None:
        if self.head not in ("qa", "pretraining", "base", "nlvr2"):
            raise ValueError(
                "EncoderConfig.head must be 'qa', 'pretraining', 'base' or 'nlvr2', "
                f"got {self.head!r}"
            )
        if self.num_attention_heads is not None and self.num_attention_heads < 1:
            raise ValueError(
                "EncoderConfig.num_attention_heads must be >= 1 or None, "
                f"got {self.num_attention_heads}"
            )
        if self.max_question_length < 3:
            raise ValueError(
                "EncoderConfig.max_question_length must be >= 3 ([CLS], one token, [SEP]), "
                f"got {self.max_question_length}"
            )


@dataclass(frozen=True)
class PretrainingConfig:
    """LXMERT's pretraining recipe (src/pretrain/lxmert_pretrain.py, lxmert_data.py).

    Attributes:
        max_caption_length: tokens per caption including ``[CLS]``/``[SEP]`` (LXMERT: 20).
        word_mask_rate: probability that a caption token is chosen for masked LM (BERT: 0.15).
        obj_mask_rate: probability that a box is chosen for masked object prediction (0.15).
        mask_token_rate: share of chosen items replaced by ``[MASK]`` / a zero feature (0.8).
        random_token_rate: share of chosen items replaced by a random token / another image's
            box feature (0.1); the rest (0.1) keep their value.
        mismatch_rate: probability that a caption is swapped for one of another image in the
            batch, giving ``matched_label = 0`` and no QA target (0.5).
        label_boxes: boxes whose detector labels enter the object/attribute losses. ``"all"``
            is LXMERT's recipe (and what transformers computes when given its ``obj_labels``):
            every real box, weighted by the detector's confidence. ``"masked"`` weights by
            confidence times the box-mask, so only masked boxes count.
    """

    max_caption_length: int = 20
    word_mask_rate: float = 0.15
    obj_mask_rate: float = 0.15
    mask_token_rate: float = 0.8
    random_token_rate: float = 0.1
    mismatch_rate: float = 0.5
    label_boxes: LabelBoxes = "all"

    def __post_init__(self) -> None:
        for name in ("word_mask_rate", "obj_mask_rate", "mismatch_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"PretrainingConfig.{name} must be in [0, 1], got {value}")
        if not (
            self.mask_token_rate >= 0.0
            and self.random_token_rate >= 0.0
            and self.mask_token_rate + self.random_token_rate <= 1.0
        ):
            raise ValueError(
                "PretrainingConfig.mask_token_rate + random_token_rate must lie in [0, 1], got "
                f"{self.mask_token_rate} + {self.random_token_rate}"
            )
        if self.label_boxes not in ("all", "masked"):
            raise ValueError(
                f"PretrainingConfig.label_boxes must be 'all' or 'masked', got {self.label_boxes!r}"
            )
        if self.max_caption_length < 3:
            raise ValueError(
                f"PretrainingConfig.max_caption_length must be >= 3, got {self.max_caption_length}"
            )


#: LXMERT's recipe; the default of every pretraining function (frozen, so safe to share).
DEFAULT_PRETRAINING = PretrainingConfig()

#: Encoder presets by name; each registry encoder record names one (``weights.registry``).
#: Read-only: look presets up with :func:`get_preset` or :func:`config_for`.
PRESETS: Mapping[str, EncoderConfig] = MappingProxyType(
    {
        "lxmert-vqa": EncoderConfig(checkpoint="lxmert-vqa", head="qa", answer_set="vqa"),
        "lxmert-gqa": EncoderConfig(checkpoint="lxmert-gqa", head="qa", answer_set="gqa"),
        "lxmert-base": EncoderConfig(
            checkpoint="lxmert-base", head="pretraining", answer_set="lxmert"
        ),
        # The shipped shapes-world LXMERT (LxmertForQuestionAnswering, hidden 64, 256-d
        # visual features): its 22 answers come from the label2ans.json beside its weights.
        "shapes-lxmert": EncoderConfig(checkpoint="shapes-lxmert", head="qa", answer_set=None),
        # The same model after pretraining only (LxmertForPreTraining; its pretraining QA head
        # over the same 22 answers): the starting point of lxmert-finetune.
        "shapes-lxmert-pretrained": EncoderConfig(
            checkpoint="shapes-lxmert-pretrained", head="pretraining", answer_set=None
        ),
        # The shipped shapes-world NLVR2 model (LxmertForNLVR2: two images, one statement,
        # true/false), fine-tuned from shapes-lxmert-pretrained on shapes-world pairs.
        "shapes-nlvr2": EncoderConfig(checkpoint="shapes-nlvr2", head="nlvr2", answer_set=None),
    }
)


def get_preset(name: str) -> EncoderConfig:
    """The :class:`EncoderConfig` registered under ``name`` (``lxmert-vqa``, ``lxmert-gqa``,
    ``lxmert-base``, ``shapes-lxmert``); raises ``KeyError`` listing the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(
            f"unknown encoder preset {name!r}; known presets: {', '.join(sorted(PRESETS))}"
        ) from None


def config_for(source: str | os.PathLike[str]) -> EncoderConfig:
    """The settings for a model source: the preset when ``source`` is a preset name (a ``str``;
    a path never is one), else the defaults (head ``qa``, answer set from the checkpoint) for
    the checkpoint ``source`` (a directory or another registry name).

    The one place where names become encoder settings: ``load_encoder`` and ``build_model``
    both ask here.
    """
    if isinstance(source, str) and source in PRESETS:
        return PRESETS[source]
    return EncoderConfig(checkpoint=os.fspath(source))
