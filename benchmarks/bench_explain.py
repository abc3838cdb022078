"""Explanations (``encoder.explain``): what they cost, and whether they point at the object.

    python benchmarks/bench_explain.py evidence --count 200   # shapes world, held-out scenes
    python benchmarks/bench_explain.py cost                   # seconds per explanation

``evidence``: on held-out scenes (``shapesworld.scenes`` split "heldout", never trained on),
for the questions that name one object ("what color is the {shape}?" where that shape is
unique; "what shape is the {color} object?" where that colour is unique), the shipped
``shapes-detector`` + ``shapes-lxmert`` answer and the top answer is explained. A hit: the
region with the highest relevance overlaps the named object's true box at IoU >= 0.5.
Reported per question kind for Chefer relevance and raw last-layer attention, with chance
(mean of 1 / regions), the share of questions where some region covers the object (the
ceiling) and the answer accuracy. Nothing is tuned: the shipped models as they are.

``cost``: median seconds per explanation (a forward and a backward pass with hooks) against
one plain answer (inference mode), for the shapes model on its real regions and for the
full-size LXMERT configuration (9/5/5 layers, hidden 768, 12 heads, 36 regions of 2048,
3129 answers) with random weights, since the real ones are not on this machine.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import LxmertPreTrainedModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.boxes import pairwise_iou
from detector.structures import RegionFeatures
from encoder.explain import METHODS, explain_inputs
from pipeline.api import Pipeline
from shapesworld.questions import Question, scene_questions
from shapesworld.scenes import Scene, SceneObject, make_split

#: Question kinds that name exactly one object of the scene.
NAMING_KINDS = ("color", "shape")
IOU_HIT = 0.5


@dataclass(frozen=True)
class Pointing:
    """One explained question: its kind, the regions offered, whether the answer was right,
    whether each method's top region is the named object, whether any region is; ``case``
    and ``tops`` say which question and what each method's top region was (for the misses)."""

    kind: str
    regions: int
    correct: bool
    hits: dict[str, bool]
    covered: bool
    case: str
    tops: dict[str, str]


def named_object(scene: Scene, question: Question) -> SceneObject:
    """The one object a color/shape question names (its shape, resp. colour, is unique)."""
    words = question.text.rstrip("?").split()
    if question.kind == "color":  # what color is the {shape}?
        found = [o for o in scene.objects if o.shape == words[-1]]
    else:  # what shape is the {color} object?
        found = [o for o in scene.objects if o.color == words[-2]]
    if len(found) != 1:
        raise ValueError(f"seed {scene.seed}: {question.text!r} names {len(found)} objects")
    return found[0]


def point(pipeline: Pipeline, scene: Scene, region: RegionFeatures, question: Question) -> Pointing:
    """Explain the top answer to ``question`` by each method and score the top regions."""
    truth = torch.tensor([named_object(scene, question).box], dtype=torch.float32)
    ious = pairwise_iou(torch.from_numpy(region.boxes), truth)[:, 0]
    hits: dict[str, bool] = {}
    tops: dict[str, str] = {}
    answer = ""
    for method in METHODS:
        explained = pipeline.explain_regions(region, question.text, method=method)
        top = explained.image.top(1)[0]
        hits[method] = bool(ious[top.index] >= IOU_HIT)
        tops[method] = f"{top.label} {top.score:.2f} IoU {float(ious[top.index]):.2f}"
        answer = explained.answer
    return Pointing(
        kind=question.kind,
        regions=region.num_boxes,
        correct=answer == question.answer,
        hits=hits,
        covered=bool((ious >= IOU_HIT).any()),
        case=f"seed {scene.seed}: {question.text} -> {answer} ({question.answer})",
        tops=tops,
    )


def summarise(found: list[Pointing]) -> dict[str, dict[str, float]]:
    """Per kind (and "all"): questions, hit rate per method, chance, ceiling, accuracy, the
    hit rates split by right and wrong answers, and the discordant pairs of the two methods."""
    out: dict[str, dict[str, float]] = {}
    for kind in (*NAMING_KINDS, "all"):
        rows = [p for p in found if kind in ("all", p.kind)]
        if not rows:
            continue
        summary: dict[str, float] = {
            "questions": len(rows),
            "chance": float(np.mean([1.0 / p.regions for p in rows])),
            "ceiling": float(np.mean([p.covered for p in rows])),
            "accuracy": float(np.mean([p.correct for p in rows])),
        }
        for method in METHODS:
            summary[method] = float(np.mean([p.hits[method] for p in rows]))
            for name, want in (("right", True), ("wrong", False)):
                part = [p.hits[method] for p in rows if p.correct == want]
                summary[f"{method}_{name}"] = float(np.mean(part)) if part else float("nan")
        # Paired: the questions on which exactly one method finds the object (McNemar's b, c).
        summary["chefer_only"] = sum(p.hits["chefer"] and not p.hits["attention"] for p in rows)
        summary["attention_only"] = sum(p.hits["attention"] and not p.hits["chefer"] for p in rows)
        out[kind] = summary
    return out


def evidence(args: argparse.Namespace) -> dict[str, object]:
    pipeline = Pipeline(detector="shapes-detector", encoder="shapes-lxmert", device="cpu")
    found: list[Pointing] = []
    for scene in make_split("heldout", args.count):
        asked = [q for q in scene_questions(scene) if q.kind in NAMING_KINDS]
        if not asked:
            continue
        region = pipeline.regions([scene.image_rgb], [f"seed-{scene.seed}"])[0]
        found.extend(point(pipeline, scene, region, q) for q in asked)
    misses = [
        {"case": p.case, "covered": p.covered, **p.tops}
        for p in found
        if not (p.hits["chefer"] and p.hits["attention"])
    ]
    return {
        "scenes": args.count,
        "split": "heldout",
        "per_kind": summarise(found),
        "misses": misses,
    }


def _median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: first-call allocations and lazy initialisation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _cost_of(
    model: LxmertPreTrainedModel, inputs: dict[str, torch.Tensor], repeats: int
) -> dict[str, float]:
    def plain() -> object:
        with torch.inference_mode():
            return model(**inputs)

    def explained(method: str) -> Callable[[], object]:
        return lambda: explain_inputs(
            model,
            inputs,
            target=lambda logits: logits[0, logits[0].argmax()],
            rows=[0],
            method=method,  # type: ignore[arg-type]
        )

    return {
        "answer_s": _median_seconds(plain, repeats),
        **{f"{m}_s": _median_seconds(explained(m), repeats) for m in METHODS},
    }


def cost(args: argparse.Namespace) -> dict[str, object]:
    from transformers import LxmertConfig, LxmertForQuestionAnswering

    pipeline = Pipeline(detector="shapes-detector", encoder="shapes-lxmert", device="cpu")
    scene = make_split("heldout", 1)[0]
    region = pipeline.regions([scene.image_rgb])[0]
    shapes_inputs = pipeline.encoder.model_inputs([region], ["what color is the circle?"])
    torch.manual_seed(0)
    full = LxmertForQuestionAnswering(LxmertConfig(num_qa_labels=3129)).eval()
    full_inputs = {
        "input_ids": torch.randint(1000, 20000, (1, 14)),
        "attention_mask": torch.ones(1, 14, dtype=torch.int64),
        "token_type_ids": torch.zeros(1, 14, dtype=torch.int64),
        "visual_feats": torch.rand(1, 36, 2048),
        "visual_pos": torch.rand(1, 36, 4).sort(dim=-1).values,
    }
    return {
        "threads": torch.get_num_threads(),
        "shapes-lxmert": {
            "regions": region.num_boxes,
            **_cost_of(pipeline.encoder.model, shapes_inputs, args.repeats),
        },
        "full-size (random)": {
            "regions": 36,
            "tokens": 14,
            **_cost_of(full, full_inputs, args.repeats),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=("evidence", "cost"))
    parser.add_argument("--count", type=int, default=200, help="held-out scenes (evidence)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs (cost)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = evidence(args) if args.part == "evidence" else cost(args)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
