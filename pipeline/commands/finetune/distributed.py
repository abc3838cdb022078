"""``torchrun --nproc_per_node K lxmert-finetune train ...``: one process per device.

torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (and the rendezvous address); with
``WORLD_SIZE`` above 1 ``train`` joins the process group (gloo on the CPU, NCCL on GPUs, each
rank on ``cuda:LOCAL_RANK``) after its flags and inputs are checked, and
``encoder.finetune.fit`` trains data-parallel. ``--batch-size`` stays global: each step uses
that many examples over all processes together. Rank 0 alone prints progress and writes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

# torch is imported where a rank uses it: ``lxmert-finetune``'s parser and usage errors
# import this module and must not load torch (issue 29).
if TYPE_CHECKING:
    import torch

    from encoder.finetune.distributed import Ranks


def world_size() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun): known before the group
    is joined, so the other ranks stay quiet from the start."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def rank_device(device: torch.device) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` when ``device`` is a GPU and torchrun started
    several processes, else ``device``."""
    if world_size() == 1 or device.type != "cuda":
        return device
    import torch

    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def join_group(device: torch.device) -> Ranks:
    """Join torchrun's process group (gloo for CPU, NCCL for CUDA); a single process without
    torchrun. Every rank must call it: it waits until all have."""
    from encoder.finetune.distributed import SINGLE, current_ranks

    if world_size() == 1:
        return SINGLE
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return current_ranks()


@contextmanager
def peers_lost_named(ranks: Ranks, *, remedy: str) -> Iterator[None]:
    """Turn a collective that failed because another rank died into one line naming this
    rank (torchrun's own summary names the rank that failed) and the way to resume; the
    error goes on to the caller (exit 4)."""
    try:
        yield
    except RuntimeError as error:
        import torch.distributed

        # gloo raises a plain RuntimeError naming its transport, NCCL a DistBackendError.
        text = str(error)
        lost = isinstance(error, torch.distributed.DistBackendError) or "gloo" in text
        if ranks.world > 1 and lost:
            print(
                f"lxmert-finetune: rank {ranks.rank} of {ranks.world}: another process of the "
                f"run stopped ({str(error).splitlines()[0]}); {remedy}",
                file=sys.stderr,
                flush=True,
            )
        raise


def leave_group(ranks: Ranks) -> None:
    """Leave the process group (after the run; nothing for a single process)."""
    if ranks.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
