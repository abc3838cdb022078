"""Data-parallel fit over a gloo process group on the CPU: two processes with the same global
batch end with the weights of one process; only rank 0 writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from encoder_fixtures import make_regions
from finetune_helpers import DictSource, write_questions, write_tiny_model

from detector.structures import RegionFeatures
from encoder.finetune import (
    FinetuneConfig,
    QADataset,
    answer_table_from_labels,
    fit,
    prepare_encoder,
    read_questions,
)
from encoder.finetune.distributed import Ranks, shards

ANSWERS = ["yes", "no", "red", "blue"]
CONFIG = FinetuneConfig(epochs=2, batch_size=4, lr=1e-3, seed=5)


class CountingSource(DictSource):
    """A DictSource that counts the records read."""

    reads = 0

    def get(self, image_id: str) -> RegionFeatures:
        self.reads += 1
        return super().get(image_id)


def _data(folder: Path) -> None:
    """Twelve questions on six random images (three batches of 4), and a model, dropout off."""
    raw = [
        {
            "question_id": k,
            "img_id": f"img{k % 6}",
            "sent": "is there a red circle ?",
            "label": {ANSWERS[k % 4]: 1.0, ANSWERS[(k + 1) % 4]: 0.3},
        }
        for k in range(12)
    ]
    write_questions(folder / "train.json", raw)
    write_tiny_model(folder / "start", answers=ANSWERS, feat_dim=16, dropout=0.0)


def _fit(folder: Path, out: Path) -> None:
    """Fit from ``folder``'s data, writing the checkpoint under ``out``; this process's final
    weights go to ``out/weights-<rank>.pt``."""
    torch.set_num_threads(1)
    regions = {f"img{i}": make_regions(f"img{i}", 5, seed=i) for i in range(6)}
    entries = read_questions(folder / "train.json")
    table = answer_table_from_labels(entries, name="train")
    encoder, _ = prepare_encoder(folder / "start", answers=table, config=CONFIG, device="cpu")
    source = CountingSource(regions)
    train = QADataset(entries, source, table, num_boxes=36)
    written: list[int] = []
    fit(
        encoder=encoder,
        train=train,
        valid=train,
        config=CONFIG,
        task="vqa",
        checkpoint=out / "last.pt",
        on_best=lambda e, r: written.append(r.epoch),
    )
    rank = dist.get_rank() if dist.is_initialized() else 0
    state = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    record = {"state": state, "written": written, "reads": source.reads}
    torch.save(record, out / f"weights-{rank}.pt")


def _worker(rank: int, world: int, folder: Path, out: Path) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{out / 'rendezvous'}", rank=rank, world_size=world
    )
    try:
        _fit(folder, out)
    finally:
        dist.destroy_process_group()


def test_shards_are_strided_slices_and_a_too_small_batch_is_refused() -> None:
    batches = [[5, 1, 7, 3], [0, 2]]
    assert shards(batches, Ranks(rank=1, world=2)) == [[1, 3], [2]]
    assert shards(batches, Ranks(rank=0, world=1)) == batches
    with pytest.raises(ValueError, match="cannot feed 3 processes"):
        shards(batches, Ranks(rank=0, world=3))


def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    _data(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    _fit(tmp_path, one)
    mp.spawn(_worker, args=(2, tmp_path, two), nprocs=2, join=True)
    alone = torch.load(one / "weights-0.pt", weights_only=True)
    ranks = [torch.load(two / f"weights-{r}.pt", weights_only=True) for r in (0, 1)]
    # The ranks hold one model: DDP's averaged gradients are the same on both, bit for bit.
    for name, tensor in ranks[0]["state"].items():
        assert torch.equal(tensor, ranks[1]["state"][name]), name
    # Against one process: the same sums in another order (two half-batch means averaged,
    # not one mean of four) differ in the last float32 bits. Within 1e-5 (1% of one step at
    # lr 1e-3, 6 steps), except attention key biases: softmax ignores a shift common to all
    # keys, so their true gradient is 0 and what they get is rounding noise, which Adam
    # normalises into steps of up to lr whatever its size; they are only held to that bound.
    steps = CONFIG.epochs * 3
    for name, tensor in alone["state"].items():
        noise = name.endswith("key.bias")
        atol = 2 * CONFIG.lr * steps if noise else 1e-5
        torch.testing.assert_close(ranks[0]["state"][name], tensor, rtol=0, atol=atol, msg=name)
    # Rank 0 alone wrote (best models, checkpoint); both decided the same best epochs.
    assert (two / "last.pt").is_file()
    assert ranks[0]["written"] == alone["written"] and ranks[1]["written"] == []
    # Each rank trained on its half of every batch (6 of 12 questions an epoch), and scored
    # the whole validation set (12).
    assert alone["reads"] == CONFIG.epochs * (12 + 12)
    assert ranks[0]["reads"] == ranks[1]["reads"] == CONFIG.epochs * (6 + 12)
