"""Data-parallel fine-tuning over the ranks of a ``torch.distributed`` process group (one
process per device, as ``torchrun`` starts them; gloo on CPU, NCCL on GPUs).

The batch size stays global: every rank draws the same shuffled batches of
``config.batch_size`` (:func:`~encoder.finetune.loop.epoch_batches`) and trains on its own
slice of each, ``batch[rank::world]``. DistributedDataParallel averages the ranks' gradients,
so with equal slices a step equals one process's step on the whole batch: each loss is a mean
over its examples, and the mean of equal-sized means is the mean of the whole. A slice of
unequal size (a last batch that does not split evenly) weighs its examples a little more or
less; a batch smaller than the number of ranks is refused (a rank with nothing would wait for
the others for ever).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Ranks:
    """This process's place in the process group.

    Attributes:
        rank: 0-based rank of this process; rank 0 alone writes checkpoints and logs.
        world: number of processes (1: not distributed).
    """

    rank: int = 0
    world: int = 1

    @property
    def writes(self) -> bool:
        """Whether this process writes (checkpoints, models, logs): rank 0 only."""
        return self.rank == 0


#: One process, not distributed.
SINGLE = Ranks()


def current_ranks() -> Ranks:
    """The ranks of the initialised default process group, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(rank=dist.get_rank(), world=dist.get_world_size())
    return SINGLE


def shards(batches: Sequence[list[int]], ranks: Ranks) -> list[list[int]]:
    """This rank's slice ``batch[rank::world]`` of every batch.

    Raises:
        ValueError: a batch has fewer examples than there are ranks.
    """
    if ranks.world == 1:
        return [list(batch) for batch in batches]
    small = min(len(batch) for batch in batches)
    if small < ranks.world:
        raise ValueError(
            f"a batch of {small} example(s) cannot feed {ranks.world} processes: choose a "
            "--batch-size (global) and a data size whose every batch has one per process"
        )
    return [list(batch[ranks.rank :: ranks.world]) for batch in batches]


def data_parallel(model: torch.nn.Module, ranks: Ranks) -> torch.nn.Module | None:
    """``model`` wrapped in DistributedDataParallel (rank 0's weights broadcast to all), or
    None for a single process."""
    if ranks.world == 1:
        return None
    on_gpu = next(model.parameters()).device.type == "cuda"
    device_ids = [next(model.parameters()).device.index] if on_gpu else None
    # LXMERT's last cross-modality layer computes a visual output that no head reads: those
    # parameters get no gradient, which DDP must be told to expect.
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)


def summed(values: Sequence[float], ranks: Ranks) -> list[float]:
    """``values`` summed over all ranks (float64; unchanged for a single process)."""
    if ranks.world == 1:
        return list(values)
    total = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return [float(v) for v in total]


def seed_epoch(seed: int, *, epoch: int, ranks: Ranks) -> None:
    """Each rank's own dropout stream for ``epoch``, a function of (seed, epoch, rank) only,
    so a resumed run draws what an uninterrupted one would on every rank (the checkpoint
    holds rank 0's generator alone). A single process keeps its one continued stream."""
    if ranks.world > 1:
        torch.manual_seed((seed * 1_000_003 + epoch) * 65_537 + ranks.rank)
