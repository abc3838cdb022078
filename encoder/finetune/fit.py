"""``fit``: epochs of :func:`~encoder.finetune.loop.train_epoch`, validation after each, the
best model handed to the caller, and a resumable checkpoint after every epoch."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from encoder.build import Encoder
from encoder.finetune.config import FinetuneConfig
from encoder.finetune.data import QADataset
from encoder.finetune.distributed import (
    SINGLE,
    Ranks,
    current_ranks,
    data_parallel,
    seed_epoch,
)
from encoder.finetune.evaluation import Task
from encoder.finetune.loop import (
    EpochRecord,
    Progress,
    TrainingState,
    capture_state,
    evaluate,
    load_checkpoint,
    make_optimizer,
    make_scheduler,
    restore_rng_state,
    save_checkpoint,
    train_epoch,
)
from encoder.finetune.pair_loop import evaluate_pairs, train_pair_epoch
from encoder.finetune.pairs import PairDataset

#: A training or validation set: questions (vqa, gqa) or statements about image pairs (nlvr2).
FitData = QADataset | PairDataset


class ResumeError(ValueError):
    """A checkpoint that does not belong to this run (other recipe or answer table)."""


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` did.

    Attributes:
        history: every finished epoch, resumed ones included, in order.
        best: best validation accuracy (None without validation data).
        best_epoch: 1-based epoch of the model handed to ``on_best`` last.
        resumed_from: finished epochs found in the checkpoint (0 for a fresh run).
    """

    history: tuple[EpochRecord, ...]
    best: float | None
    best_epoch: int
    resumed_from: int


def _checked(path: Path, encoder: Encoder, config: FinetuneConfig) -> TrainingState:
    state = load_checkpoint(path)
    if dict(state.config) != asdict(config):
        raise ResumeError(
            f"{path} was written with other settings ({dict(state.config)}); resume with the "
            "same flags, or start afresh in another --out"
        )
    answers = tuple(encoder.answers.answers) if encoder.answers else ()
    if state.answers != answers:
        raise ResumeError(f"{path} was written with another answer table")
    return state


@dataclass(frozen=True, eq=False)
class _Run:
    """What every epoch of one :func:`fit` call shares."""

    encoder: Encoder
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    config: FinetuneConfig
    task: Task
    inputs: Mapping[str, object]
    ranks: Ranks = SINGLE
    network: torch.nn.Module | None = None

    def restore(self, state: TrainingState | None) -> tuple[list[EpochRecord], float | None, int]:
        """Load a checkpoint's model, optimiser, scheduler and RNG states (nothing without
        one); returns its history, best validation accuracy and best epoch."""
        if state is None:
            return [], None, 0
        self.encoder.model.load_state_dict(dict(state.model))
        self.optimizer.load_state_dict(dict(state.optimizer))
        self.scheduler.load_state_dict(dict(state.scheduler))
        restore_rng_state(state.rng)
        return list(state.history), state.best, state.best_epoch

    def epoch(
        self,
        train: FitData,
        valid: FitData | None,
        *,
        epoch: int,
        on_progress: Callable[[Progress], None] | None,
    ) -> EpochRecord:
        """One epoch of the loop that fits the data (pairs for NLVR2, else questions), with
        its validation accuracy when ``valid`` has data."""
        record = _train_one(
            self.encoder,
            train,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            config=self.config,
            task=self.task,
            epoch=epoch,
            on_progress=on_progress,
            network=self.network,
            ranks=self.ranks,
        )
        # Every rank scores the whole validation set: all then agree on the best epoch.
        if valid is None or len(valid) == 0:
            return record
        accuracy = _valid_score(self.encoder, valid, config=self.config, task=self.task)
        return replace(record, valid_accuracy=accuracy)

    def save(
        self,
        checkpoint: Path,
        *,
        history: list[EpochRecord],
        best: float | None,
        best_epoch: int,
    ) -> None:
        """Replace ``checkpoint`` atomically with the run's state now."""
        state = capture_state(
            encoder=self.encoder,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            config=self.config,
            history=history,
            best=best,
            best_epoch=best_epoch,
            inputs=self.inputs,
        )
        save_checkpoint(checkpoint, state)


def _train_one(
    encoder: Encoder,
    train: FitData,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: FinetuneConfig,
    task: Task,
    epoch: int,
    on_progress: Callable[[Progress], None] | None,
    network: torch.nn.Module | None,
    ranks: Ranks,
) -> EpochRecord:
    """One training epoch of the loop that fits the data: pairs (NLVR2) or questions."""
    if isinstance(train, PairDataset):
        return train_pair_epoch(
            encoder,
            train,
            optimizer=optimizer,
            scheduler=scheduler,
            config=config,
            epoch=epoch,
            on_progress=on_progress,
            network=network,
            ranks=ranks,
        )
    return train_epoch(
        encoder,
        train,
        optimizer=optimizer,
        scheduler=scheduler,
        config=config,
        task=task,
        epoch=epoch,
        on_progress=on_progress,
        network=network,
        ranks=ranks,
    )


def _valid_score(encoder: Encoder, valid: FitData, *, config: FinetuneConfig, task: Task) -> float:
    """Overall validation accuracy: NLVR2's for pairs, the task's for questions."""
    if isinstance(valid, PairDataset):
        return evaluate_pairs(encoder, valid, config=config).accuracy.overall
    return evaluate(encoder, valid, config=config, task=task).overall


def fit(
    *,
    encoder: Encoder,
    train: FitData,
    valid: FitData | None,
    config: FinetuneConfig,
    task: Task,
    checkpoint: Path,
    on_best: Callable[[Encoder, EpochRecord], None],
    resume: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    on_epoch: Callable[[Sequence[EpochRecord]], None] | None = None,
    inputs: Mapping[str, object] | None = None,
) -> FitResult:
    """Fine-tune ``encoder.model`` in place for ``config.epochs`` epochs: a QA model on
    question sets (:class:`QADataset`), an NLVR2 model on pair sets (:class:`PairDataset`;
    ``task`` then only names the run).

    After each epoch: validation on ``valid`` (if given); ``on_best`` gets the model when
    that accuracy improves (every epoch without ``valid``); ``checkpoint`` is replaced
    atomically; ``on_epoch`` gets the history so far, the new epoch last (a log can be
    rendered whole from it, so a resumed run never repeats an epoch's lines). With
    ``resume``, training goes on after the checkpoint's last epoch (set up ``encoder``
    exactly as for the first run: same source, answer table and seed).
    ``inputs`` (JSON-ready, e.g. the data files' fingerprints) is stored in the checkpoint
    for the caller to compare before a resume.

    In an initialised ``torch.distributed`` process group (e.g. under ``torchrun``) every rank
    calls ``fit`` alike: the model is wrapped in DistributedDataParallel, each rank trains on
    its slice of every global batch of ``config.batch_size``
    (:mod:`encoder.finetune.distributed`), the records' figures are summed over the ranks, and
    rank 0 alone calls ``on_best``/``on_epoch`` and writes ``checkpoint``.

    Raises:
        ValueError: ``train`` is empty.
        ResumeError: the checkpoint was written with other settings or answers.
    """
    if len(train) == 0:
        raise ValueError("no training questions")
    optimizer = make_optimizer(encoder.model, config)
    steps = -(-len(train) // config.batch_size) * config.epochs
    scheduler = make_scheduler(optimizer, total_steps=steps, config=config)
    run = _Run(
        encoder=encoder,
        optimizer=optimizer,
        scheduler=scheduler,
        config=config,
        task=task,
        inputs=dict(inputs or {}),
    )
    state = _checked(checkpoint, encoder, config) if resume and checkpoint.is_file() else None
    history, best, best_epoch = run.restore(state)
    ranks = current_ranks()
    run = replace(run, ranks=ranks, network=data_parallel(encoder.model, ranks))
    resumed_from = len(history)
    for epoch in range(resumed_from, config.epochs):
        seed_epoch(config.seed, epoch=epoch, ranks=ranks)
        record = run.epoch(train, valid, epoch=epoch, on_progress=on_progress)
        history.append(record)
        score = record.valid_accuracy
        improved = score is None or best is None or score > best
        if improved:
            best, best_epoch = score, record.epoch
        if not ranks.writes:  # rank 0 alone writes models, logs and the checkpoint
            continue
        if improved:
            on_best(encoder, record)
        if on_epoch is not None:
            on_epoch(tuple(history))
        run.save(checkpoint, history=history, best=best, best_epoch=best_epoch)
    return FitResult(
        history=tuple(history), best=best, best_epoch=best_epoch, resumed_from=resumed_from
    )
