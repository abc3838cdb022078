"""The fine-tuning recipe as one typed record (LXMERT's VQA/GQA defaults)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Mixed-precision training mode: ``bf16`` runs the encoder's forward (training and
#: prediction) under ``torch.autocast`` in bfloat16, the weights, gradients and optimiser state
#: staying fp32; ``fp32`` runs all in fp32. Not :data:`detector.precision.Precision`, which
#: says which detector layers run in low precision at inference (fine-tuning reads regions
#: from feature files and runs no detector). No fp16: it would need loss scaling.
TrainPrecision = Literal["fp32", "bf16"]
#: The members of :data:`TrainPrecision`, for flags and checks.
TRAIN_PRECISIONS: tuple[TrainPrecision, ...] = ("fp32", "bf16")


@dataclass(frozen=True)
class FinetuneConfig:
    """How ``encoder.finetune.fit`` trains (defaults: LXMERT's src/tasks/vqa.py recipe).

    Attributes:
        epochs: passes over the training questions (LXMERT: 4).
        batch_size: questions per optimiser step (32); the last batch of an epoch may be
            smaller.
        lr: peak learning rate of AdamW (5e-5).
        warmup_ratio: share of all steps with a linear warm-up from 0 (0.1, BertAdam's
            ``warmup``); then linear decay to 0 at the last step.
        weight_decay: AdamW weight decay, not on biases and LayerNorm weights (0.01).
        clip_norm: largest global gradient norm (5.0, as LXMERT).
        max_question_length: tokens per question with ``[CLS]``/``[SEP]`` (20).
        num_boxes: regions per image, at most (36; the first, best-scored boxes are kept).
        seed: seeds the head's new rows, the shuffling and dropout.
        precision: mixed-precision training mode (:data:`TrainPrecision`): ``fp32``, or
            ``bf16`` autocast of the forward (CUDA or CPU).
        eval_batch_size: questions per forward when predicting.
        workers: DataLoader worker processes reading regions (0: in the main process).
    """

    epochs: int = 4
    batch_size: int = 32
    lr: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    clip_norm: float = 5.0
    max_question_length: int = 20
    num_boxes: int = 36
    seed: int = 0
    precision: TrainPrecision = "fp32"
    eval_batch_size: int = 256
    workers: int = 0

    def __post_init__(self) -> None:
        positive = ("epochs", "batch_size", "num_boxes", "eval_batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"FinetuneConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0.0:
            raise ValueError(f"FinetuneConfig.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ValueError(
                f"FinetuneConfig.warmup_ratio must be in [0, 1], got {self.warmup_ratio}"
            )
        if self.weight_decay < 0.0 or not self.clip_norm > 0.0:
            raise ValueError("FinetuneConfig.weight_decay must be >= 0 and clip_norm > 0")
        if self.max_question_length < 3:
            raise ValueError(
                f"FinetuneConfig.max_question_length must be >= 3, got {self.max_question_length}"
            )
        if self.precision not in TRAIN_PRECISIONS:
            raise ValueError(
                f"FinetuneConfig.precision must be fp32 or bf16, got {self.precision!r}"
            )
        if self.workers < 0:
            raise ValueError(f"FinetuneConfig.workers must be >= 0, got {self.workers}")


#: Peak learning rate of LXMERT's own fine-tuning scripts, by task (``run/vqa_finetune.bash``
#: and ``run/nlvr2_finetune.bash``: 5e-5; ``run/gqa_finetune.bash``: 1e-5). All three use
#: batch size 32 and 4 epochs, :class:`FinetuneConfig`'s defaults.
LXMERT_TASK_LR: dict[str, float] = {"vqa": 5e-5, "gqa": 1e-5, "nlvr2": 5e-5}


def lxmert_recipe_lr(task: str) -> float:
    """The learning rate LXMERT's script for ``task`` (vqa, gqa, nlvr2) trains with."""
    if task not in LXMERT_TASK_LR:
        raise ValueError(f"no LXMERT recipe for task {task!r}; one of {sorted(LXMERT_TASK_LR)}")
    return LXMERT_TASK_LR[task]
