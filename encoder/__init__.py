"""LXMERT on the detector's regions: inputs, answers, pretraining targets and losses.

The models are transformers' ``LxmertModel``, ``LxmertForQuestionAnswering`` and
``LxmertForPreTraining`` as they are; this package adapts at their boundary.
"""

from encoder.answers import (
    AnswerTable,
    ScoredAnswer,
    answer_labels,
    answer_table_for,
    load_answer_table,
    top_k_answers,
)
from encoder.build import Encoder, load_encoder
from encoder.config import PRESETS, EncoderConfig, PretrainingConfig, get_preset
from encoder.inputs import VisualInputs, build_visual_inputs
from encoder.losses import soft_score_loss
from encoder.model import build_model, checkpoint_directory
from encoder.pretrain import (
    PretrainingBatch,
    PretrainingExample,
    PretrainingLosses,
    build_pretraining_batch,
    pretraining_losses,
    pretraining_step,
)
from encoder.tokenizer import TextInputs, encode_text, load_tokenizer

__all__ = [
    "PRESETS",
    "AnswerTable",
    "Encoder",
    "EncoderConfig",
    "PretrainingBatch",
    "PretrainingConfig",
    "PretrainingExample",
    "PretrainingLosses",
    "ScoredAnswer",
    "TextInputs",
    "VisualInputs",
    "answer_labels",
    "answer_table_for",
    "build_model",
    "build_pretraining_batch",
    "build_visual_inputs",
    "checkpoint_directory",
    "encode_text",
    "get_preset",
    "load_answer_table",
    "load_encoder",
    "load_tokenizer",
    "pretraining_losses",
    "pretraining_step",
    "soft_score_loss",
    "top_k_answers",
]
