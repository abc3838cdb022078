"""Train the shapes-world detector and LXMERT on CPU, and write the shipped weights.

    python -m shapesworld.train --out weights/shipped --seed 0 [--stage detector|lxmert|all]

writes ``<out>/shapes-detector/`` (``model.safetensors`` with its config in the metadata,
``objects_vocab.txt``, ``attributes_vocab.txt``) and ``<out>/shapes-lxmert/`` (``config.json``,
``model.safetensors`` from ``save_pretrained``, ``label2ans.json``). The ``lxmert`` stage reads
the detector from ``<out>/shapes-detector/``.

Detector: the ``detector/`` model with the :data:`SHAPES_DETECTOR` config, trained from scratch
on fresh train-split scenes (one image per step) with :mod:`detector.training`'s losses.
LXMERT: a small :class:`~transformers.LxmertConfig`; the trained detector's regions of
train-split scenes are extracted once and cached in memory; then pretraining with the
encoder's targets (masked LM on captions made from the ground truth, masked object prediction
against the detector's labels with feature regression, image-caption matching, QA), then
question-answering fine-tuning. Everything is seeded; scenes come from the ``train`` split only
(``val``/``heldout`` are for evaluation).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from detector.checkpoint import save_detector
from detector.config import DetectorConfig, get_preset
from detector.model import Detector, build_detector
from detector.preprocess import PreparedImage, preprocess_for
from detector.structures import RegionFeatures
from detector.training import (
    Targets,
    TrainingConfig,
    detector_losses,
    trainable_parameters,
)
from detector.vocab import ATTRIBUTES_FILE, OBJECTS_FILE
from shapesworld.scenes import Scene, make_scene, split_seeds
from shapesworld.vocab import ANSWERS, COLORS, SHAPES

DETECTOR_DIR = "shapes-detector"
LXMERT_DIR = "shapes-lxmert"
DETECTOR_FILE = "model.safetensors"
LABEL2ANS_FILE = "label2ans.json"

#: The shapes-world detector: the same C4 Faster R-CNN code, tiny. Images resize to a short
#: side of 288 (long side <= 480), so that even small objects (43..107 px squares, hence square
#: anchors of 36..144 px) span several stride-16 cells: at 192 the classifier barely told the
#: shapes apart. RoIs pool to 7x7 and res5 is undilated (dilated convs take PyTorch's slow CPU
#: path in backward). Regions: bottom-up selection, 4..16 boxes.
#: The detector preset the shipped model was trained with (``detector.config`` preset "shapes").
SHAPES_DETECTOR = get_preset("shapes")
if (SHAPES_DETECTOR.num_classes, SHAPES_DETECTOR.num_attributes) != (len(SHAPES), len(COLORS)):
    raise RuntimeError("detector preset 'shapes' does not match shapesworld.vocab")


#: Detectron2's matching and sampling; 64 RoIs per image (a scene has at most 6 objects).
SHAPES_TRAINING = TrainingConfig(roi_batch_size_per_image=64)


@dataclass(frozen=True)
class DetectorRecipe:
    """Optimiser and schedule of the detector stage."""

    steps: int = 5000
    """SGD steps, one fresh train-split scene each."""
    lr: float = 2e-3
    """Peak AdamW learning rate."""
    warmup: int = 200
    """Linear warm-up steps; cosine decay to 0 after."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    clip_norm: float = 5.0
    """Gradient-norm clip."""
    losses: TrainingConfig = SHAPES_TRAINING
    """Matching, sampling and loss settings."""


@dataclass(frozen=True)
class LxmertRecipe:
    """Model size, data and schedule of the LXMERT stages."""

    hidden_size: int = 64
    """Transformer width (the 30522 x hidden word embeddings dominate the file size)."""
    num_attention_heads: int = 4
    intermediate_size: int = 256
    l_layers: int = 2
    x_layers: int = 2
    r_layers: int = 1
    scenes: int = 2000
    """Train-split scenes whose regions are extracted once (detector inference)."""
    pretrain_batch_size: int = 16
    """Pretraining is ~6x dearer per example: the LM head scores all 30522 words."""
    batch_size: int = 32
    """Questions per fine-tuning step."""
    pretrain_steps: int = 300
    finetune_steps: int = 8000
    lr: float = 5e-4
    warmup: int = 150
    initializer_range: float = 0.1
    """Std of the initial weights. BERT's 0.02 suits width 768; at width 64 it leaves every
    attention map uniform and the gradients on queries and keys tiny, and QA stayed at the
    answer prior for thousands of steps. ~1/sqrt(hidden_size) lets attention form early."""
    weight_decay: float = 0.01
    max_question_length: int = 20


def cosine_lr(step: int, *, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def scene_bgr(scene: Scene) -> np.ndarray:
    """The scene's pixels as the detector reads them: uint8 ``[H, W, 3]`` BGR."""
    return cv2.cvtColor(scene.image_rgb, cv2.COLOR_RGB2BGR)


def prepare_scene(scene: Scene, config: DetectorConfig) -> PreparedImage:
    """Preprocess a scene for a detector with ``config`` (image id ``seed-<seed>``)."""
    return preprocess_for(scene_bgr(scene), config, image_id=f"seed-{scene.seed}")


def scene_targets(scene: Scene, scale: float) -> Targets:
    """Ground truth of ``scene`` in resized pixels (boxes times ``scale``)."""
    return Targets(
        boxes=torch.from_numpy(scene.boxes_array()) * scale,
        classes=torch.from_numpy(scene.class_ids()),
        attributes=torch.from_numpy(scene.attribute_ids()),
    )


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def train_detector(
    *,
    seed: int,
    recipe: DetectorRecipe = DetectorRecipe(),
    log_every: int = 100,
    snapshot_dir: Path | None = None,
    snapshot_every: int = 1000,
) -> Detector:
    """A detector trained from scratch on ``recipe.steps`` train-split scenes (seeded).

    With ``snapshot_dir``, the weights so far are written there every ``snapshot_every`` steps
    (so a long run can be evaluated while it trains).
    """
    torch.manual_seed(seed)
    config = SHAPES_DETECTOR
    detector = build_detector(
        config, seed=seed, object_names=list(SHAPES), attribute_names=list(COLORS)
    )
    detector.train()
    params = trainable_parameters(detector, train_norm=True)
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": recipe.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=recipe.lr,
    )
    generator = torch.Generator().manual_seed(seed)
    running: dict[str, float] = {}
    # Scene order is a seeded permutation of the first `steps` train seeds.
    order = np.random.default_rng(seed).permutation(recipe.steps)
    seeds = split_seeds("train", recipe.steps)
    start = time.perf_counter()
    for step in range(recipe.steps):
        scene = make_scene(seeds[int(order[step])])
        image = prepare_scene(scene, config)
        targets = scene_targets(scene, image.scale)
        lr = cosine_lr(step, total=recipe.steps, warmup=recipe.warmup, peak=recipe.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        losses = detector_losses(
            detector, image.tensor[None], [targets], config=recipe.losses, generator=generator
        )
        optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        torch.nn.utils.clip_grad_norm_(params, recipe.clip_norm)
        optimizer.step()
        for key, value in losses.as_floats().items():
            running[key] = running.get(key, 0.0) + value
        if (step + 1) % log_every == 0:
            means = " ".join(f"{k}={v / log_every:.3f}" for k, v in running.items())
            elapsed = time.perf_counter() - start
            _log(f"detector step {step + 1}/{recipe.steps} lr={lr:.2e} {means} ({elapsed:.0f}s)")
            running = {}
        if snapshot_dir is not None and (step + 1) % snapshot_every == 0:
            write_detector(detector, snapshot_dir)
    return detector.eval()


def write_detector(detector: Detector, directory: Path) -> Path:
    """``model.safetensors`` plus the two vocabulary files into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (DETECTOR_FILE + ".tmp.safetensors")
    save_detector(detector, tmp)
    os.replace(tmp, directory / DETECTOR_FILE)
    (directory / OBJECTS_FILE).write_text("\n".join(SHAPES) + "\n", encoding="utf-8")
    (directory / ATTRIBUTES_FILE).write_text("\n".join(COLORS) + "\n", encoding="utf-8")
    return directory / DETECTOR_FILE


# --- LXMERT ---------------------------------------------------------------------------------


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A sentence listing the scene's objects from its ground truth, in random order.

    E.g. "a red circle , a blue square and a green star ." -- only words of the question
    vocabulary, so masked LM teaches the names the questions use.
    """
    parts = [f"a {o.color} {o.shape}" for o in scene.objects]
    order = rng.permutation(len(parts))
    parts = [parts[int(i)] for i in order]
    if len(parts) == 1:
        return parts[0] + " ."
    return " , ".join(parts[:-1]) + " and " + parts[-1] + " ."


def extract_regions(
    detector: Detector, scenes: Sequence[Scene], *, log_every: int = 500
) -> list[RegionFeatures]:
    """The detector's regions of each scene (the shipped inference path, BN folded)."""
    out = []
    start = time.perf_counter()
    for index, scene in enumerate(scenes):
        out.extend(detector.detect([prepare_scene(scene, detector.config)]))
        if (index + 1) % log_every == 0:
            _log(f"regions {index + 1}/{len(scenes)} ({time.perf_counter() - start:.0f}s)")
    return out


def lxmert_config(recipe: LxmertRecipe, *, visual_feat_dim: int) -> object:
    """A small :class:`~transformers.LxmertConfig` for the shapes world."""
    from transformers import LxmertConfig

    from encoder.tokenizer import read_vocab

    return LxmertConfig(
        vocab_size=len(read_vocab()),
        hidden_size=recipe.hidden_size,
        num_attention_heads=recipe.num_attention_heads,
        intermediate_size=recipe.intermediate_size,
        l_layers=recipe.l_layers,
        x_layers=recipe.x_layers,
        r_layers=recipe.r_layers,
        num_qa_labels=len(ANSWERS),
        num_object_labels=len(SHAPES),
        num_attr_labels=len(COLORS),
        visual_feat_dim=visual_feat_dim,
        visual_pos_dim=4,
        max_position_embeddings=64,
        initializer_range=recipe.initializer_range,
    )


def _batches(count: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless shuffled index batches over ``range(count)``."""
    while True:
        order = rng.permutation(count)
        for start in range(0, count - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def _optimizer(model: torch.nn.Module, recipe: LxmertRecipe) -> torch.optim.Optimizer:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        (no_decay if param.ndim <= 1 or "LayerNorm" in name else decay).append(param)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": recipe.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=recipe.lr,
    )


def _run_schedule(
    *,
    name: str,
    model: torch.nn.Module,
    recipe: LxmertRecipe,
    steps: int,
    loss_of_batch: Callable[[int], dict[str, torch.Tensor]],
    log_every: int = 100,
) -> None:
    optimizer = _optimizer(model, recipe)
    model.train()
    running: dict[str, float] = {}
    start = time.perf_counter()
    for step in range(steps):
        lr = cosine_lr(step, total=steps, warmup=recipe.warmup, peak=recipe.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        terms = loss_of_batch(step)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        for key, value in terms.items():
            running[key] = running.get(key, 0.0) + float(value.detach())
        if (step + 1) % log_every == 0:
            means = " ".join(f"{k}={v / log_every:.3f}" for k, v in running.items())
            elapsed = time.perf_counter() - start
            _log(f"{name} step {step + 1}/{steps} lr={lr:.2e} {means} ({elapsed:.0f}s)")
            running = {}
    model.eval()


def train_lxmert(detector: Detector, *, seed: int, recipe: LxmertRecipe = LxmertRecipe()) -> object:
    """Pretrain then fine-tune a small LXMERT on the detector's regions; returns the QA model."""
    from transformers import LxmertForPreTraining, LxmertForQuestionAnswering

    from encoder.answers import AnswerTable
    from encoder.inputs import build_visual_inputs
    from encoder.losses import ignorable_cross_entropy
    from encoder.pretrain import PretrainingExample, pretraining_step
    from encoder.tokenizer import encode_text, load_tokenizer

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    # Seeds disjoint from the detector stage's? Not needed: both are train-split scenes.
    scenes = [make_scene(s) for s in split_seeds("train", recipe.scenes)]
    _log(f"extracting regions of {len(scenes)} train scenes")
    regions = extract_regions(detector, scenes)
    tokenizer = load_tokenizer()
    table = AnswerTable(name=LABEL2ANS_FILE, answers=tuple(ANSWERS))
    config = lxmert_config(recipe, visual_feat_dim=detector.config.feature_dim)

    pretrain = LxmertForPreTraining(config)  # type: ignore[arg-type]
    batches = _batches(len(scenes), recipe.pretrain_batch_size, rng)

    def pretrain_batch(step: int) -> dict[str, torch.Tensor]:
        indices = next(batches)
        examples = []
        for i in indices:
            scene = scenes[int(i)]
            # LXMERT pretrains on captions and on questions (with their answers).
            if rng.random() < 0.5 or not scene.questions:
                text, answer = caption(scene, rng), None
            else:
                question = scene.questions[int(rng.integers(len(scene.questions)))]
                text, answer = question.text, question.answer
            examples.append(
                PretrainingExample(regions=regions[int(i)], caption=text, answer=answer)
            )
        losses = pretraining_step(
            pretrain, tokenizer, examples, seed=seed * 1_000_003 + step, answer_table=table
        )
        return {
            k: getattr(losses, k)
            for k in ("total", "masked_lm", "matched", "obj", "attr", "feat", "qa")
        }

    _log("LXMERT pretraining")
    _run_schedule(
        name="pretrain",
        model=pretrain,
        recipe=recipe,
        steps=recipe.pretrain_steps,
        loss_of_batch=pretrain_batch,
    )

    qa = LxmertForQuestionAnswering(config)  # type: ignore[arg-type]
    missing, unexpected = qa.load_state_dict(pretrain.state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"pretrained LXMERT lacks QA-model weights: {missing}")
    del unexpected  # the pretraining heads (cls, obj_predict_head) are not part of QA
    questions = [(i, q) for i, scene in enumerate(scenes) for q in scene.questions]
    question_batches = _batches(len(questions), recipe.batch_size, rng)

    def qa_batch(step: int) -> dict[str, torch.Tensor]:
        del step
        picked = [questions[int(j)] for j in next(question_batches)]
        text = encode_text(
            tokenizer, [q.text for _, q in picked], max_length=recipe.max_question_length
        )
        visual = build_visual_inputs([regions[i] for i, _ in picked])
        labels = torch.tensor([table.label(q.answer) for _, q in picked], dtype=torch.long)
        logits = qa(**vars(text), **vars(visual)).question_answering_score
        return {"total": ignorable_cross_entropy(logits, labels)}

    _log("LXMERT question-answering fine-tuning")
    _run_schedule(
        name="finetune",
        model=qa,
        recipe=recipe,
        steps=recipe.finetune_steps,
        loss_of_batch=qa_batch,
    )
    return qa


def write_lxmert(model: object, directory: Path) -> Path:
    """``save_pretrained`` (config.json + model.safetensors) and ``label2ans.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)  # type: ignore[attr-defined]
    (directory / LABEL2ANS_FILE).write_text(json.dumps(list(ANSWERS)) + "\n", encoding="utf-8")
    return directory


def load_trained_detector(directory: Path) -> Detector:
    """The detector written by the detector stage, ready for inference."""
    from detector.checkpoint import load_detector

    path = directory / DETECTOR_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; run the detector stage first (--stage detector or all)"
        )
    return load_detector(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m shapesworld.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="directory of the shipped models")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stage", choices=("detector", "lxmert", "all"), default="all")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch CPU threads (1 is faster on a busy machine)"
    )
    parser.add_argument("--detector-steps", type=int, default=DetectorRecipe.steps)
    parser.add_argument("--lxmert-scenes", type=int, default=LxmertRecipe.scenes)
    parser.add_argument("--pretrain-steps", type=int, default=LxmertRecipe.pretrain_steps)
    parser.add_argument("--finetune-steps", type=int, default=LxmertRecipe.finetune_steps)
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    # Tiny gradients and Adam moments go subnormal, which is very slow on x86 without this.
    torch.set_flush_denormal(True)
    start = time.perf_counter()
    if args.stage in ("detector", "all"):
        detector = train_detector(
            seed=args.seed,
            recipe=DetectorRecipe(steps=args.detector_steps),
            snapshot_dir=args.out / DETECTOR_DIR,
        )
        path = write_detector(detector, args.out / DETECTOR_DIR)
        _log(f"wrote {path} ({time.perf_counter() - start:.0f}s so far)")
    if args.stage in ("lxmert", "all"):
        detector = load_trained_detector(args.out / DETECTOR_DIR)
        recipe = LxmertRecipe(
            scenes=args.lxmert_scenes,
            pretrain_steps=args.pretrain_steps,
            finetune_steps=args.finetune_steps,
        )
        model = train_lxmert(detector, seed=args.seed, recipe=recipe)
        path = write_lxmert(model, args.out / LXMERT_DIR)
        _log(f"wrote {path} ({time.perf_counter() - start:.0f}s so far)")
    _log(f"done in {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
