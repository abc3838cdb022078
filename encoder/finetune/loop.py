"""The fine-tuning loop: one ``train_epoch``, one ``evaluate``, and ``fit`` around them with a
checkpoint that holds everything a resume needs.

A resumed run continues from the last finished epoch and ends with the same weights as a run
that was never interrupted: the shuffling of epoch ``e`` depends only on (seed, e), and the
checkpoint restores the model, optimiser, scheduler and RNG states (dropout draws from torch's
global generator).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
from torch.utils.data import DataLoader

from encoder.build import Encoder
from encoder.finetune.config import FinetuneConfig
from encoder.finetune.data import QADataset, QAExample, SizedDataset
from encoder.finetune.distributed import SINGLE, Ranks, shards, summed
from encoder.finetune.evaluation import Task, question_scores
from encoder.finetune.metrics import AccuracyReport
from encoder.losses import soft_score_loss
from weights.files import atomic_path

CHECKPOINT_FORMAT = 1

#: One training example of a task (QA question, NLVR2 statement).
Example = TypeVar("Example")


@dataclass(frozen=True)
class Progress:
    """One optimiser step, for progress display.

    Attributes:
        epoch: 0-based epoch.
        step: 1-based step within the epoch; ``steps`` in all.
        loss: mean training loss of the epoch so far.
        examples_per_s: training throughput of the epoch so far.
    """

    epoch: int
    step: int
    steps: int
    loss: float
    examples_per_s: float


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch did (kept in the checkpoint and in the output's history).

    Attributes:
        epoch: 1-based number of the finished epoch.
        loss: mean training loss.
        examples: training questions seen.
        seconds: wall time of the training part.
        valid_accuracy: overall accuracy on the validation questions, or None without them.
        train_accuracy: running accuracy of the epoch's own training batches, each scored as
            the model predicted it during its step (dropout on, weights still moving), as
            LXMERT's ``vqa.py`` reports "Train"; None in records written before it was kept.
    """

    epoch: int
    loss: float
    examples: int
    seconds: float
    valid_accuracy: float | None
    train_accuracy: float | None = None


def make_optimizer(model: torch.nn.Module, config: FinetuneConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and LayerNorm weights (BERT's rule).

    Fused (one kernel per parameter group) on CPU and CUDA: the per-tensor update of the
    30522-word embedding table was a third of a small model's step on CPU (30 -> 7 ms).
    """
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        (no_decay if param.ndim <= 1 or "LayerNorm" in name else decay).append(param)
    fused = all(p.device.type in ("cpu", "cuda") for p in decay + no_decay)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
        fused=fused,
    )


def linear_schedule(step: int, *, total: int, warmup: int) -> float:
    """Learning-rate factor at optimiser step ``step`` (0-based): ``(step + 1) / warmup``
    during warm-up, then linear decay from 1 to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(total - warmup, 1))


def make_scheduler(
    optimizer: torch.optim.Optimizer, *, total_steps: int, config: FinetuneConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_ratio * total_steps`` steps, then linear decay to 0."""
    warmup = int(config.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        return linear_schedule(step, total=total_steps, warmup=warmup)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def epoch_batches(count: int, batch_size: int, *, seed: int, epoch: int) -> list[list[int]]:
    """Shuffled index batches of one epoch; the order depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(count, generator=generator).tolist()
    return [order[start : start + batch_size] for start in range(0, count, batch_size)]


def autocast(
    device: torch.device, config: FinetuneConfig
) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast of the forward when ``config.precision`` is bf16, else nothing."""
    if config.precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def in_order(count: int, size: int) -> list[list[int]]:
    """Index batches of at most ``size`` in dataset order (evaluation, prediction)."""
    return [list(range(start, min(start + size, count))) for start in range(0, count, size)]


def _as_list(examples: list[Example]) -> list[Example]:
    """The DataLoader's ``collate_fn``: a batch stays a list of typed examples (the encoder
    pads and stacks them, e.g. :meth:`encoder.build.Encoder.model_inputs`)."""
    return examples


def load_batches(
    dataset: SizedDataset[Example], batches: Sequence[list[int]], workers: int
) -> Iterator[list[Example]]:
    """The examples of each index batch of ``batches``, read by ``workers`` processes."""
    loader: DataLoader[Example] = DataLoader(
        dataset, batch_sampler=batches, collate_fn=_as_list, num_workers=workers
    )
    return iter(loader)


def train_epoch(
    encoder: Encoder,
    dataset: QADataset,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: FinetuneConfig,
    task: Task,
    epoch: int,
    on_progress: Callable[[Progress], None] | None = None,
    network: torch.nn.Module | None = None,
    ranks: Ranks = SINGLE,
) -> EpochRecord:
    """One pass over ``dataset`` (0-based ``epoch``): soft-score BCE, clipped AdamW steps;
    each batch's predictions are scored as validation scores them (``task``'s rule).
    ``network``: the module to run forward (``encoder.model`` wrapped for data parallelism,
    :mod:`encoder.finetune.distributed`); ``ranks``: this process's share of each batch."""
    model = encoder.model
    forward = network if network is not None else model
    answers = encoder.answers
    if answers is None:
        raise ValueError("the encoder has no answer table")

    def batch_loss(batch: list[QAExample]) -> BatchLoss:
        inputs = encoder.model_inputs([e.regions for e in batch], [e.entry.sentence for e in batch])
        targets = torch.stack([e.target for e in batch]).to(model.device)
        with autocast(model.device, config):
            logits = forward(**inputs).question_answering_score
        guesses = [answers.answers[i] for i in logits.detach().argmax(dim=1).tolist()]
        report = question_scores([e.entry for e in batch], guesses, task=task)
        return BatchLoss(soft_score_loss(logits.float(), targets), report.overall * len(batch))

    return run_epoch(
        model,
        dataset,
        batch_loss,
        optimizer=optimizer,
        scheduler=scheduler,
        config=config,
        epoch=epoch,
        on_progress=on_progress,
        ranks=ranks,
    )


@dataclass(frozen=True, eq=False)
class BatchLoss:
    """What one training batch's forward gives :func:`run_epoch`.

    Attributes:
        loss: the scalar to minimise.
        score: the sum of the batch's per-example accuracy scores (in [0, len(batch)]) of
            the predictions of this same forward.
    """

    loss: torch.Tensor
    score: float


def run_epoch(
    model: torch.nn.Module,
    dataset: SizedDataset[Example],
    batch_loss: Callable[[list[Example]], BatchLoss],
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: FinetuneConfig,
    epoch: int,
    on_progress: Callable[[Progress], None] | None,
    ranks: Ranks = SINGLE,
) -> EpochRecord:
    """The training steps every task shares: ``batch_loss`` of each batch of the epoch's
    shuffle of ``dataset`` (:func:`epoch_batches`; with several ``ranks``, this rank's slice
    of it), backward, clipped AdamW step, schedule step, progress; the epoch's running
    training accuracy from each batch's ``score``. The record's figures are over all ranks;
    progress is this rank's."""
    model.train()
    every = epoch_batches(len(dataset), config.batch_size, seed=config.seed, epoch=epoch)
    batches = shards(every, ranks)
    steps = len(batches)
    total_loss, total_score, seen, start = 0.0, 0.0, 0, time.perf_counter()
    parameters = list(model.parameters())
    for step, batch in enumerate(load_batches(dataset, batches, config.workers), start=1):
        result = batch_loss(batch)
        loss = result.loss
        total_score += result.score
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, config.clip_norm)
        optimizer.step()
        scheduler.step()
        total_loss += float(loss.detach()) * len(batch)
        seen += len(batch)
        if on_progress is not None:
            elapsed = max(time.perf_counter() - start, 1e-9)
            on_progress(Progress(epoch, step, steps, total_loss / seen, seen / elapsed))
    model.eval()
    total_loss, total_score, count = summed([total_loss, total_score, float(seen)], ranks)
    seen = int(count)
    return EpochRecord(
        epoch=epoch + 1,
        loss=total_loss / max(seen, 1),
        examples=seen,
        seconds=time.perf_counter() - start,
        valid_accuracy=None,
        train_accuracy=total_score / max(seen, 1),
    )


@torch.inference_mode()
def predict(encoder: Encoder, dataset: QADataset, *, config: FinetuneConfig) -> list[str]:
    """The top answer (argmax of the QA logits) of every question of ``dataset``, in order."""
    if encoder.answers is None:
        raise ValueError("the encoder has no answer table")
    model = encoder.model
    model.eval()
    batches = in_order(len(dataset), config.eval_batch_size)
    out: list[str] = []
    for batch in load_batches(dataset, batches, config.workers):
        inputs = encoder.model_inputs([e.regions for e in batch], [e.entry.sentence for e in batch])
        with autocast(model.device, config):
            logits = model(**inputs).question_answering_score
        out.extend(encoder.answers.answers[i] for i in logits.float().argmax(dim=1).tolist())
    return out


def evaluate(
    encoder: Encoder, dataset: QADataset, *, config: FinetuneConfig, task: Task
) -> AccuracyReport:
    """Accuracy of :func:`predict` on ``dataset`` (soft score for vqa, exact match for gqa)."""
    predictions = predict(encoder, dataset, config=config)
    return question_scores(dataset.entries, predictions, task=task)


def _rng_state() -> dict[str, object]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda, "python": random.getstate()}


def restore_rng_state(state: Mapping[str, object]) -> None:
    """Set torch's (CPU and CUDA) and Python's generators to a state saved by a checkpoint."""
    torch_state = state.get("torch")
    if not isinstance(torch_state, torch.Tensor):
        raise ValueError("checkpoint: bad torch RNG state")
    torch.set_rng_state(torch_state)
    cuda = state.get("cuda")
    if isinstance(cuda, list) and cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    python = state.get("python")
    if isinstance(python, tuple):
        random.setstate(python)


@dataclass(frozen=True, eq=False)
class TrainingState:
    """The contents of a fine-tuning checkpoint.

    Attributes:
        model, optimizer, scheduler: their state dicts.
        history: the finished epochs.
        best: best validation accuracy so far (None without validation).
        best_epoch: 1-based epoch of that model (0 before the first epoch).
        rng: torch CPU/CUDA and Python generator states after the last finished epoch.
        config: ``asdict`` of the recipe.
        answers: the answer table, in label order.
        inputs: what the caller recorded of the run's inputs (files and their fingerprints),
            JSON-ready; a resume compares it with the inputs it is given ({} when none).
    """

    model: Mapping[str, torch.Tensor]
    optimizer: Mapping[str, object]
    scheduler: Mapping[str, object]
    history: tuple[EpochRecord, ...]
    best: float | None
    best_epoch: int
    rng: Mapping[str, object]
    config: Mapping[str, object]
    answers: tuple[str, ...]
    inputs: Mapping[str, object] = field(default_factory=dict)


def save_checkpoint(path: Path, state: TrainingState) -> None:
    """Write ``state`` to ``path``, replacing it atomically (``weights.files.atomic_path``)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": dict(state.model),
        "optimizer": dict(state.optimizer),
        "scheduler": dict(state.scheduler),
        "history": [asdict(record) for record in state.history],
        "best": state.best,
        "best_epoch": state.best_epoch,
        "rng": dict(state.rng),
        "config": dict(state.config),
        "answers": list(state.answers),
        "inputs": dict(state.inputs),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as target:
        torch.save(payload, target)


def capture_state(
    *,
    encoder: Encoder,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: FinetuneConfig,
    history: Sequence[EpochRecord],
    best: float | None,
    best_epoch: int,
    inputs: Mapping[str, object] | None = None,
) -> TrainingState:
    """The :class:`TrainingState` of a run now (RNG states included)."""
    return TrainingState(
        model=encoder.model.state_dict(),
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        history=tuple(history),
        best=best,
        best_epoch=best_epoch,
        rng=_rng_state(),
        config=asdict(config),
        answers=tuple(encoder.answers.answers) if encoder.answers else (),
        inputs=dict(inputs or {}),
    )


def load_checkpoint(path: Path, *, mmap: bool = False) -> TrainingState:
    """A checkpoint written by :func:`save_checkpoint` (``torch.load(weights_only=True)``:
    no code runs); ``ValueError`` naming ``path`` when it is not one. ``mmap``: tensors stay
    on disk until used (a check of its settings and inputs reads little of a large model)."""
    raw = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a fine-tuning checkpoint of this version")
    try:
        best = raw["best"]
        return TrainingState(
            model=dict(raw["model"]),
            optimizer=dict(raw["optimizer"]),
            scheduler=dict(raw["scheduler"]),
            history=tuple(EpochRecord(**record) for record in raw["history"]),
            best=None if best is None else float(best),
            best_epoch=int(raw["best_epoch"]),
            rng=dict(raw["rng"]),
            config=dict(raw["config"]),
            answers=tuple(str(a) for a in raw["answers"]),
            inputs=dict(raw.get("inputs", {})),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: damaged fine-tuning checkpoint ({err})") from None
