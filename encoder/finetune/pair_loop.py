"""One NLVR2 training epoch and NLVR2 prediction: the pair counterparts of
``encoder.finetune.loop.train_epoch`` and ``predict`` (same batches, schedule and precision)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from encoder.build import Encoder
from encoder.finetune.config import FinetuneConfig
from encoder.finetune.loop import EpochRecord, Progress, autocast, epoch_batches, run_epoch
from encoder.finetune.pairs import PairDataset, PairExample, PairReport, pair_scores
from encoder.nlvr2 import LxmertForNLVR2, true_probability


def _collate(examples: list[PairExample]) -> list[PairExample]:
    return examples


def _loader(
    dataset: PairDataset, batches: Sequence[list[int]], workers: int
) -> Iterator[list[PairExample]]:
    loader: DataLoader[PairExample] = DataLoader(
        dataset, batch_sampler=batches, collate_fn=_collate, num_workers=workers
    )
    return iter(loader)


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
) -> EpochRecord:
    """One pass over ``dataset`` (0-based ``epoch``): cross-entropy over (False, True),
    clipped AdamW steps."""
    model = _model(encoder)

    def batch_loss(batch: list[PairExample]) -> torch.Tensor:
        labels = torch.tensor([e.target for e in batch], device=model.device)
        with autocast(model.device, config):
            logits = model(**_inputs(encoder, batch)).logits
        return torch.nn.functional.cross_entropy(logits.float(), labels)

    batches = epoch_batches(len(dataset), config.batch_size, seed=config.seed, epoch=epoch)
    return run_epoch(
        model,
        _loader(dataset, batches, config.workers),
        batch_loss,
        steps=len(batches),
        optimizer=optimizer,
        scheduler=scheduler,
        config=config,
        epoch=epoch,
        on_progress=on_progress,
    )


@torch.inference_mode()
def predict_pairs(encoder: Encoder, dataset: PairDataset, *, config: FinetuneConfig) -> list[float]:
    """Probability that each statement of ``dataset`` is true, in order (a statement is
    judged true when its probability is above 0.5, the argmax of the two logits)."""
    model = _model(encoder)
    model.eval()
    size = config.eval_batch_size
    batches = [list(range(s, min(s + size, len(dataset)))) for s in range(0, len(dataset), size)]
    out: list[float] = []
    for batch in _loader(dataset, batches, config.workers):
        with autocast(model.device, config):
            logits = model(**_inputs(encoder, batch)).logits
        out.extend(float(p) for p in true_probability(logits))
    return out


def evaluate_pairs(encoder: Encoder, dataset: PairDataset, *, config: FinetuneConfig) -> PairReport:
    """NLVR2 accuracy and consistency of :func:`predict_pairs` on ``dataset``."""
    verdicts = [p > 0.5 for p in predict_pairs(encoder, dataset, config=config)]
    return pair_scores(dataset.entries, verdicts)
