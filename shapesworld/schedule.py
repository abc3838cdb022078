"""The one training loop of the shapes world: AdamW, warm-up + cosine learning rate, gradient
clipping and running-mean logging, shared by the detector and both LXMERT stages.

A stage gives the loop a function ``step -> losses`` (anything with a differentiable ``total``
and ``as_floats()``, such as ``detector.training``'s and ``encoder.pretrain``'s loss records);
the loop owns everything around it, so the stages differ only in their data and their model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch


class StepLosses(Protocol):
    """The loss terms of one step: ``total`` is backpropagated, ``as_floats()`` is logged."""

    @property
    def total(self) -> torch.Tensor: ...

    def as_floats(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class TotalLoss:
    """A single loss term as :class:`StepLosses` (logged as ``total``)."""

    total: torch.Tensor
    """Scalar, differentiable."""

    def as_floats(self) -> dict[str, float]:
        """``{"total": value}`` as a Python float, for logging."""
        return {"total": float(self.total.detach())}


@dataclass(frozen=True)
class Schedule:
    """How one training stage steps."""

    name: str
    """Stage name in the log lines (``detector``, ``pretrain``, ``finetune``)."""
    steps: int
    """Optimiser steps."""
    peak_lr: float
    """Learning rate at the end of the warm-up."""
    warmup: int
    """Linear warm-up steps; cosine decay to 0 at ``steps`` after them (:func:`cosine_lr`)."""
    clip_norm: float
    """Largest global gradient norm (``clip_grad_norm_``)."""
    log_every: int = 100
    """Log the mean of each loss term over this many steps."""


def cosine_lr(step: int, *, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def adamw(
    *,
    decay: Sequence[torch.Tensor],
    no_decay: Sequence[torch.Tensor],
    lr: float,
    weight_decay: float,
) -> torch.optim.AdamW:
    """AdamW with weight decay on ``decay`` only (biases and norms go in ``no_decay``)."""
    return torch.optim.AdamW(
        [
            {"params": list(decay), "weight_decay": weight_decay},
            {"params": list(no_decay), "weight_decay": 0.0},
        ],
        lr=lr,
    )


def log(message: str) -> None:
    """One progress line on stdout, with the wall-clock time."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_schedule(
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    clip_parameters: Sequence[torch.Tensor],
    schedule: Schedule,
    losses_of_step: Callable[[int], StepLosses],
    after_step: Callable[[int], None] | None = None,
) -> None:
    """Train ``model`` for ``schedule.steps`` steps; it is left in eval mode.

    Each step sets the learning rate of every parameter group, computes
    ``losses_of_step(step)``, backpropagates ``total``, clips the gradient norm of
    ``clip_parameters`` (an explicit list: its order fixes the float sum of the norm, so a
    retrain reproduces the shipped weights) and steps the optimiser; then
    ``after_step(step)`` runs (snapshots, for example).
    """
    model.train()
    running: dict[str, float] = {}
    start = time.perf_counter()
    for step in range(schedule.steps):
        lr = cosine_lr(step, total=schedule.steps, warmup=schedule.warmup, peak=schedule.peak_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        losses = losses_of_step(step)
        optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        torch.nn.utils.clip_grad_norm_(clip_parameters, schedule.clip_norm)
        optimizer.step()
        for key, value in losses.as_floats().items():
            running[key] = running.get(key, 0.0) + value
        if (step + 1) % schedule.log_every == 0:
            means = " ".join(f"{k}={v / schedule.log_every:.3f}" for k, v in running.items())
            elapsed = time.perf_counter() - start
            progress = f"{schedule.name} step {step + 1}/{schedule.steps} lr={lr:.2e}"
            log(f"{progress} {means} ({elapsed:.0f}s)")
            running = {}
        if after_step is not None:
            after_step(step)
    model.eval()
