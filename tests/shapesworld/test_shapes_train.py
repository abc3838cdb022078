"""The shapes-world training: the shared loop on a toy problem, and a few real steps of every
stage through the command line (files written, loadable, reproducible)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from shapesworld.models import (
    DETECTOR_DIR,
    DETECTOR_FILE,
    LABEL2ANS_FILE,
    LXMERT_DIR,
    load_trained_detector,
    shapes_detector_config,
)
from shapesworld.schedule import Schedule, TotalLoss, adamw, cosine_lr, run_schedule
from shapesworld.train import LxmertRecipe, main
from shapesworld.vocab import ANSWERS, COLORS, SHAPES


@pytest.fixture
def torch_settings() -> Iterator[None]:
    """``main`` sets the thread count and flush-denormal for the process; put them back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)


def test_cosine_lr_by_hand() -> None:
    assert cosine_lr(0, total=10, warmup=4, peak=1.0) == 0.25
    assert cosine_lr(3, total=10, warmup=4, peak=1.0) == 1.0
    assert cosine_lr(4, total=10, warmup=4, peak=1.0) == 1.0  # decay starts at the peak
    assert cosine_lr(7, total=10, warmup=4, peak=1.0) == pytest.approx(0.5)
    assert cosine_lr(10, total=10, warmup=4, peak=1.0) == pytest.approx(0.0)
    assert cosine_lr(50, total=10, warmup=4, peak=1.0) == pytest.approx(0.0)


def test_run_schedule_fits_a_line_with_the_schedule_and_the_clip(capsys) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    x = torch.linspace(-1, 1, 32)[:, None]
    y = 3 * x - 1
    optimizer = adamw(decay=[model.weight], no_decay=[model.bias], lr=0.0, weight_decay=0.0)
    schedule = Schedule(
        name="line", steps=400, peak_lr=0.05, warmup=20, clip_norm=0.5, log_every=100
    )
    seen_lr: list[float] = []
    seen_modes: list[bool] = []
    norms: list[float] = []
    after: list[int] = []

    def losses_of_step(step: int) -> TotalLoss:
        seen_lr.append(optimizer.param_groups[1]["lr"])
        seen_modes.append(model.training)
        if model.weight.grad is not None:  # the previous step's gradient, after clipping
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return TotalLoss(total=torch.nn.functional.mse_loss(model(x), y))

    run_schedule(
        model=model,
        optimizer=optimizer,
        clip_parameters=list(model.parameters()),
        schedule=schedule,
        losses_of_step=losses_of_step,
        after_step=after.append,
    )
    expected = [cosine_lr(s, total=400, warmup=20, peak=0.05) for s in range(400)]
    assert seen_lr == pytest.approx(expected)
    assert all(seen_modes) and not model.training
    assert max(norms) <= 0.5 + 1e-6 and max(norms) > 0.4  # clipped, and the clip was reached
    assert after == list(range(400))
    assert float(model.weight.detach()) == pytest.approx(3.0, abs=0.05)
    assert float(model.bias.detach()) == pytest.approx(-1.0, abs=0.05)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and "line step 400/400" in lines[-1] and "total=" in lines[-1]
    assert optimizer.param_groups[0]["weight_decay"] == 0.0


def test_adamw_decays_only_the_decay_group() -> None:
    weight = torch.nn.Parameter(torch.ones(2, 2))
    bias = torch.nn.Parameter(torch.ones(2))
    optimizer = adamw(decay=[weight], no_decay=[bias], lr=0.1, weight_decay=0.5)
    weight.grad, bias.grad = torch.zeros(2, 2), torch.zeros(2)
    optimizer.step()
    assert torch.allclose(weight, torch.full((2, 2), 1 - 0.1 * 0.5))
    assert torch.equal(bias, torch.ones(2))


def test_shapes_detector_config_matches_the_vocabulary() -> None:
    config = shapes_detector_config()
    assert (config.num_classes, config.num_attributes) == (len(SHAPES), len(COLORS))


def test_lxmert_recipe_refuses_batches_it_cannot_fill() -> None:
    with pytest.raises(ValueError, match="pretrain_batch_size"):
        LxmertRecipe(scenes=4)


def test_cli_refuses_bad_flags_before_training(tmp_path, capsys, torch_settings) -> None:
    with pytest.raises(SystemExit) as err:
        main(["--out", str(tmp_path), "--lxmert-scenes", "4"])
    assert err.value.code == 2 and "pretrain_batch_size" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(["--out", str(tmp_path), "--threads", "0"])
    assert err.value.code == 2
    assert list(tmp_path.iterdir()) == []


def _train(out: Path) -> dict[str, bytes]:
    flags = ["--detector-steps", "3", "--lxmert-scenes", "16"]
    flags += ["--pretrain-steps", "2", "--finetune-steps", "2", "--threads", "1"]
    assert main(["--out", str(out), "--seed", "3", *flags]) == 0
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, bytes]]]:
    """One small training run of every stage: its folder and its files' bytes."""
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("trained")
    try:
        yield out, _train(out)
    finally:  # main sets them for the process
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)


@pytest.mark.slow
def test_cli_reproduces_its_files(trained, tmp_path, torch_settings) -> None:
    """Seeded: a second run writes the same bytes (same process, same thread count). Slow:
    a second training run, and nothing else checks it."""
    assert _train(tmp_path / "b") == trained[1]


def test_cli_trains_every_stage(trained, torch_settings) -> None:
    from encoder.build import load_encoder
    from shapesworld.evaluate import answer_scenes
    from shapesworld.questions import scene_questions
    from shapesworld.scenes import make_split

    folder, first = trained
    assert set(first) == {
        f"{DETECTOR_DIR}/{DETECTOR_FILE}",
        f"{DETECTOR_DIR}/objects_vocab.txt",
        f"{DETECTOR_DIR}/attributes_vocab.txt",
        f"{LXMERT_DIR}/config.json",
        f"{LXMERT_DIR}/model.safetensors",
        f"{LXMERT_DIR}/{LABEL2ANS_FILE}",
    }
    detector = load_trained_detector(folder / DETECTOR_DIR)
    assert detector.object_names == list(SHAPES) and detector.attribute_names == list(COLORS)
    encoder = load_encoder(folder / LXMERT_DIR)
    assert encoder.answers is not None and encoder.answers.answers == ANSWERS
    scenes = make_split("val", 2)
    predicted = answer_scenes(detector, encoder, scenes)
    assert len(predicted) == sum(len(scene_questions(s)) for s in scenes)
    assert set(predicted) <= set(ANSWERS)
