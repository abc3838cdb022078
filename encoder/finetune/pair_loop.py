"""One NLVR2 training epoch and NLVR2 prediction: the pair counterparts of
``encoder.finetune.loop.train_epoch`` and ``predict`` (same batches, schedule and precision)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from encoder.build import Encoder
from encoder.finetune.config import FinetuneConfig
from encoder.finetune.distributed import SINGLE, Ranks
from encoder.finetune.loop import (
    BatchLoss,
    EpochRecord,
    Progress,
    autocast,
    in_order,
    load_batches,
    run_epoch,
)
from encoder.finetune.pairs import PairDataset, PairExample, PairReport, pair_scores
from encoder.nlvr2 import LxmertForNLVR2, true_probability


def _model(encoder: Encoder) -> LxmertForNLVR2:
    if not isinstance(encoder.model, LxmertForNLVR2):
        raise TypeError(f"encoder {encoder.config.checkpoint!r} is not an NLVR2 model")
    return encoder.model


def _inputs(encoder: Encoder, batch: Sequence[PairExample]) -> dict[str, torch.Tensor]:
    return encoder.pair_inputs(
        [e.left for e in batch], [e.right for e in batch], [e.entry.sentence for e in batch]
    )


def train_pair_epoch(
    encoder: Encoder,
    dataset: PairDataset,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: FinetuneConfig,
    epoch: int,
    on_progress: Callable[[Progress], None] | None = None,
    network: torch.nn.Module | None = None,
    ranks: Ranks = SINGLE,
) -> EpochRecord:
    """One pass over ``dataset`` (0-based ``epoch``): cross-entropy over (False, True),
    clipped AdamW steps; a statement counts as right when its argmax is its label.
    ``network`` and ``ranks``: as :func:`~encoder.finetune.loop.train_epoch`'s."""
    model = _model(encoder)
    forward = network if network is not None else model

    def batch_loss(batch: list[PairExample]) -> BatchLoss:
        labels = torch.tensor([e.target for e in batch], device=model.device)
        with autocast(model.device, config):
            logits = forward(**_inputs(encoder, batch)).logits
        correct = float((logits.detach().argmax(dim=1) == labels).sum())
        return BatchLoss(torch.nn.functional.cross_entropy(logits.float(), labels), correct)

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


@torch.inference_mode()
def predict_pairs(encoder: Encoder, dataset: PairDataset, *, config: FinetuneConfig) -> list[float]:
    """Probability that each statement of ``dataset`` is true, in order (a statement is
    judged true when its probability is above 0.5, the argmax of the two logits)."""
    model = _model(encoder)
    model.eval()
    batches = in_order(len(dataset), config.eval_batch_size)
    out: list[float] = []
    for batch in load_batches(dataset, batches, config.workers):
        with autocast(model.device, config):
            logits = model(**_inputs(encoder, batch)).logits
        out.extend(float(p) for p in true_probability(logits))
    return out


def evaluate_pairs(encoder: Encoder, dataset: PairDataset, *, config: FinetuneConfig) -> PairReport:
    """NLVR2 accuracy and consistency of :func:`predict_pairs` on ``dataset``."""
    verdicts = [p > 0.5 for p in predict_pairs(encoder, dataset, config=config)]
    return pair_scores(dataset.entries, verdicts)
