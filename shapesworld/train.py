"""Train the shapes-world detector and LXMERT on CPU, and write the shipped weights.

    python -m shapesworld.train --out weights/shipped --seed 0 [--stage detector|lxmert|all]

writes ``<out>/shapes-detector/`` and ``<out>/shapes-lxmert/`` (files: see
:mod:`shapesworld.models`). The ``lxmert`` stage reads the detector from
``<out>/shapes-detector/``.

Detector: the ``detector/`` model with the "shapes" preset, trained from scratch on fresh
train-split scenes (one image per step) with :mod:`detector.training`'s losses.
LXMERT: a small :class:`~transformers.LxmertConfig`; the trained detector's regions of
train-split scenes are extracted once and cached in memory; then pretraining with the
encoder's targets (masked LM on captions made from the ground truth, masked object prediction
against the detector's labels with feature regression, image-caption matching, QA), then
question-answering fine-tuning. All three run in :func:`shapesworld.schedule.run_schedule`.
Everything is seeded; scenes come from the ``train`` split only (``val``/``heldout`` are for
evaluation).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from detector.model import Detector, build_detector
from detector.structures import RegionFeatures
from detector.training import (
    DetectorLosses,
    Targets,
    TrainingConfig,
    detector_losses,
    trainable_parameters,
)
from shapesworld.models import (
    DETECTOR_DIR,
    LABEL2ANS_FILE,
    LXMERT_DIR,
    load_trained_detector,
    prepare_scene,
    shapes_detector_config,
    write_detector,
    write_lxmert,
)
from shapesworld.questions import Question, scene_questions
from shapesworld.scenes import Scene, make_scene, split_seeds
from shapesworld.schedule import Schedule, TotalLoss, adamw, log, run_schedule
from shapesworld.vocab import ANSWERS, COLORS, SHAPES

if TYPE_CHECKING:
    # transformers and the encoder load in the LXMERT stage only (seconds of imports).
    from transformers import LxmertConfig, LxmertForPreTraining, LxmertForQuestionAnswering

    from encoder.answers import AnswerTable
    from encoder.build import Encoder
    from encoder.pretrain import PretrainingExample, PretrainingLosses
    from encoder.tokenizer import LxmertTokenizer

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

    def schedule(self, *, log_every: int = 100) -> Schedule:
        """The detector stage's schedule (logging the loss means every ``log_every`` steps)."""
        return Schedule(
            name="detector",
            steps=self.steps,
            peak_lr=self.lr,
            warmup=self.warmup,
            clip_norm=self.clip_norm,
            log_every=log_every,
        )


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
    clip_norm: float = 1.0
    """Gradient-norm clip of both stages."""
    initializer_range: float = 0.1
    """Std of the initial weights. BERT's 0.02 suits width 768; at width 64 it leaves every
    attention map uniform and the gradients on queries and keys tiny, and QA stayed at the
    answer prior for thousands of steps. ~1/sqrt(hidden_size) lets attention form early."""
    weight_decay: float = 0.01
    max_question_length: int = 20

    def __post_init__(self) -> None:
        if not 1 <= self.pretrain_batch_size <= self.scenes:
            raise ValueError(
                f"LxmertRecipe needs 1 <= pretrain_batch_size <= scenes, got "
                f"pretrain_batch_size={self.pretrain_batch_size}, scenes={self.scenes}"
            )

    def schedule(self, name: str, steps: int) -> Schedule:
        """The schedule of one LXMERT stage (both share peak rate, warm-up and clip)."""
        return Schedule(
            name=name, steps=steps, peak_lr=self.lr, warmup=self.warmup, clip_norm=self.clip_norm
        )


def scene_targets(scene: Scene, scale: float) -> Targets:
    """Ground truth of ``scene`` in resized pixels (boxes times ``scale``)."""
    return Targets(
        boxes=torch.from_numpy(scene.boxes_array()) * scale,
        classes=torch.from_numpy(scene.class_ids()),
        attributes=torch.from_numpy(scene.attribute_ids()),
    )


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
    config = shapes_detector_config()
    detector = build_detector(
        config, seed=seed, object_names=list(SHAPES), attribute_names=list(COLORS)
    )
    params = trainable_parameters(detector, train_norm=True)
    optimizer = adamw(
        decay=[p for p in params if p.ndim > 1],
        no_decay=[p for p in params if p.ndim <= 1],
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
    )
    generator = torch.Generator().manual_seed(seed)
    # Scene order is a seeded permutation of the first `steps` train seeds.
    order = np.random.default_rng(seed).permutation(recipe.steps)
    seeds = split_seeds("train", recipe.steps)

    def losses_of_step(step: int) -> DetectorLosses:
        scene = make_scene(seeds[int(order[step])])
        image = prepare_scene(scene, config)
        targets = scene_targets(scene, image.scale)
        return detector_losses(
            detector, image.tensor[None], [targets], config=recipe.losses, generator=generator
        )

    def snapshot(step: int) -> None:
        if snapshot_dir is not None and (step + 1) % snapshot_every == 0:
            write_detector(detector, snapshot_dir)

    run_schedule(
        model=detector,
        optimizer=optimizer,
        clip_parameters=params,
        schedule=recipe.schedule(log_every=log_every),
        losses_of_step=losses_of_step,
        after_step=snapshot,
    )
    return detector


# --- LXMERT ---------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LxmertData:
    """What the LXMERT stages read of their train-split scenes, aligned by scene index.

    Attributes:
        scenes: the scenes.
        questions: each scene's questions (``questions.scene_questions``).
        regions: each scene's regions from the trained detector (inference path, BN folded).
    """

    scenes: tuple[Scene, ...]
    questions: tuple[tuple[Question, ...], ...]
    regions: tuple[RegionFeatures, ...]


def lxmert_data(detector: Detector, count: int) -> LxmertData:
    """The first ``count`` train-split scenes, their questions and the detector's regions."""
    # The detector stage trained on train-split scenes too; reusing them here is fine (the
    # evaluation uses the heldout split).
    scenes = tuple(make_scene(s) for s in split_seeds("train", count))
    log(f"extracting regions of {len(scenes)} train scenes")
    return LxmertData(
        scenes=scenes,
        questions=tuple(scene_questions(scene) for scene in scenes),
        regions=tuple(extract_regions(detector, scenes)),
    )


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
            log(f"regions {index + 1}/{len(scenes)} ({time.perf_counter() - start:.0f}s)")
    return out


def lxmert_config(recipe: LxmertRecipe, *, visual_feat_dim: int) -> LxmertConfig:
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
    """Endless shuffled index batches over ``range(count)`` (a reshuffle per pass; the last
    partial batch of a pass is dropped)."""
    if not 1 <= batch_size <= count:
        raise ValueError(f"cannot fill batches of {batch_size} from {count} examples")

    def endless() -> Iterator[np.ndarray]:
        while True:
            order = rng.permutation(count)
            for start in range(0, count - batch_size + 1, batch_size):
                yield order[start : start + batch_size]

    return endless()


def _lxmert_adamw(model: torch.nn.Module, recipe: LxmertRecipe) -> torch.optim.AdamW:
    """AdamW without weight decay on biases and LayerNorm weights (BERT's rule)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        (no_decay if param.ndim <= 1 or "LayerNorm" in name else decay).append(param)
    return adamw(decay=decay, no_decay=no_decay, lr=recipe.lr, weight_decay=recipe.weight_decay)


def _pretraining_example(
    data: LxmertData, index: int, rng: np.random.Generator
) -> PretrainingExample:
    """Scene ``index`` with a caption (half the time, or when it has no question) or one of
    its questions and that question's answer: LXMERT pretrains on both."""
    from encoder.pretrain import PretrainingExample

    questions = data.questions[index]
    if rng.random() < 0.5 or not questions:
        text, answer = caption(data.scenes[index], rng), None
    else:
        question = questions[int(rng.integers(len(questions)))]
        text, answer = question.text, question.answer
    return PretrainingExample(regions=data.regions[index], caption=text, answer=answer)


def pretrain(
    model: LxmertForPreTraining,
    data: LxmertData,
    *,
    tokenizer: LxmertTokenizer,
    table: AnswerTable,
    recipe: LxmertRecipe,
    seed: int,
    rng: np.random.Generator,
) -> None:
    """Pretrain ``model`` in place for ``recipe.pretrain_steps`` steps (masked LM, masked
    objects, matching, QA; targets drawn with ``seed`` and the step)."""
    from encoder.pretrain import pretraining_step

    batches = _batches(len(data.scenes), recipe.pretrain_batch_size, rng)

    def losses_of_step(step: int) -> PretrainingLosses:
        examples = [_pretraining_example(data, int(i), rng) for i in next(batches)]
        return pretraining_step(
            model, tokenizer, examples, seed=seed * 1_000_003 + step, answer_table=table
        )

    run_schedule(
        model=model,
        optimizer=_lxmert_adamw(model, recipe),
        clip_parameters=list(model.parameters()),
        schedule=recipe.schedule("pretrain", recipe.pretrain_steps),
        losses_of_step=losses_of_step,
    )


def finetune(
    encoder: Encoder,
    data: LxmertData,
    *,
    table: AnswerTable,
    recipe: LxmertRecipe,
    rng: np.random.Generator,
) -> None:
    """Fine-tune ``encoder.model`` in place on question answering for
    ``recipe.finetune_steps`` steps, its inputs built by :meth:`Encoder.model_inputs`."""
    from encoder.answers import answer_labels
    from encoder.losses import ignorable_cross_entropy

    pairs = [(index, q) for index, questions in enumerate(data.questions) for q in questions]
    batches = _batches(len(pairs), recipe.batch_size, rng)

    def losses_of_step(step: int) -> TotalLoss:
        del step  # batches come from the shuffled stream
        picked = [pairs[int(j)] for j in next(batches)]
        inputs = encoder.model_inputs(
            [data.regions[index] for index, _ in picked], [q.text for _, q in picked]
        )
        labels = answer_labels([q.answer for _, q in picked], table)
        logits = encoder.model(**inputs).question_answering_score
        return TotalLoss(total=ignorable_cross_entropy(logits, labels))

    run_schedule(
        model=encoder.model,
        optimizer=_lxmert_adamw(encoder.model, recipe),
        clip_parameters=list(encoder.model.parameters()),
        schedule=recipe.schedule("finetune", recipe.finetune_steps),
        losses_of_step=losses_of_step,
    )


def _qa_model(pretrained: LxmertForPreTraining) -> LxmertForQuestionAnswering:
    """A QA model (fresh QA head) carrying every weight it shares with ``pretrained``."""
    from transformers import LxmertForQuestionAnswering

    qa = LxmertForQuestionAnswering(pretrained.config)
    missing, unexpected = qa.load_state_dict(pretrained.state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"pretrained LXMERT lacks QA-model weights: {missing}")
    del unexpected  # the pretraining heads (cls, obj_predict_head) are not part of QA
    return qa


@dataclass(frozen=True)
class PretrainedStage:
    """What the pretraining stage leaves for fine-tuning: the model, its data, tokenizer and
    answer table, and the random generator in the state pretraining left it (fine-tuning goes
    on drawing from it)."""

    model: LxmertForPreTraining
    data: LxmertData
    tokenizer: LxmertTokenizer
    table: AnswerTable
    rng: np.random.Generator


def pretrain_stage(detector: Detector, *, seed: int, recipe: LxmertRecipe) -> PretrainedStage:
    """The pretraining half of :func:`train_lxmert` (seeded; also how the shipped
    ``shapes-lxmert-pretrained`` is made, :mod:`shapesworld.pretrained`)."""
    from transformers import LxmertForPreTraining

    from encoder.answers import AnswerTable
    from encoder.tokenizer import load_tokenizer

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = lxmert_data(detector, recipe.scenes)
    tokenizer = load_tokenizer()
    table = AnswerTable(name=LABEL2ANS_FILE, answers=tuple(ANSWERS))
    model = LxmertForPreTraining(lxmert_config(recipe, visual_feat_dim=detector.config.feature_dim))
    log("LXMERT pretraining")
    pretrain(model, data, tokenizer=tokenizer, table=table, recipe=recipe, seed=seed, rng=rng)
    return PretrainedStage(model=model, data=data, tokenizer=tokenizer, table=table, rng=rng)


def train_lxmert(
    detector: Detector, *, seed: int, recipe: LxmertRecipe = LxmertRecipe()
) -> LxmertForQuestionAnswering:
    """Pretrain then fine-tune a small LXMERT on the detector's regions; returns the QA model
    (eval mode)."""
    from encoder.build import Encoder
    from encoder.config import get_preset

    stage = pretrain_stage(detector, seed=seed, recipe=recipe)
    data, tokenizer, table, rng = stage.data, stage.tokenizer, stage.table, stage.rng
    qa = _qa_model(stage.model)
    # The encoder preset of the model being trained (head "qa", answers from label2ans.json).
    settings = get_preset("shapes-lxmert")
    encoder = Encoder(
        config=dataclasses.replace(settings, max_question_length=recipe.max_question_length),
        model=qa,
        tokenizer=tokenizer,
        answers=table,
    )
    log("LXMERT question-answering fine-tuning")
    finetune(encoder, data, table=table, recipe=recipe, rng=rng)
    return qa


# --- command line ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    try:
        detector_recipe = DetectorRecipe(steps=args.detector_steps)
        lxmert_recipe = LxmertRecipe(
            scenes=args.lxmert_scenes,
            pretrain_steps=args.pretrain_steps,
            finetune_steps=args.finetune_steps,
        )
    except ValueError as err:
        parser.error(str(err))
    torch.set_num_threads(args.threads)
    # Tiny gradients and Adam moments go subnormal, which is very slow on x86 without this.
    torch.set_flush_denormal(True)
    start = time.perf_counter()
    if args.stage in ("detector", "all"):
        detector = train_detector(
            seed=args.seed, recipe=detector_recipe, snapshot_dir=args.out / DETECTOR_DIR
        )
        path = write_detector(detector, args.out / DETECTOR_DIR)
        log(f"wrote {path} ({time.perf_counter() - start:.0f}s so far)")
    if args.stage in ("lxmert", "all"):
        detector = load_trained_detector(args.out / DETECTOR_DIR)
        model = train_lxmert(detector, seed=args.seed, recipe=lxmert_recipe)
        path = write_lxmert(model, args.out / LXMERT_DIR)
        log(f"wrote {path} ({time.perf_counter() - start:.0f}s so far)")
    log(f"done in {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
