"""``extract_features compare``'s finish: the figures over all images, the verdict, the
printed report, the JSON report and the exit code."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from pipeline.compare.metrics import (
    MATCHING,
    FullSummary,
    GivenBoxSummary,
    GivenBoxTolerances,
    ReproduceRule,
    summarize_full,
    summarize_given,
)
from pipeline.compare.run import ComparePlan, ImageComparison
from pipeline.compare.settings import REPORT_KIND, CompareSettings, Require
from pipeline.errors import EXIT_OK, EXIT_SOME_FAILED
from pipeline.features.manifest import Failure

if TYPE_CHECKING:
    from detector.config import ProposalMode


# --- finish: figures, verdict, report, exit code ---------------------------------------------


@dataclass(frozen=True)
class CompareResult:
    """Everything the report says.

    Attributes:
        given: the given-box check over all compared images.
        full: the full check per proposal layer that ran.
        images: each compared image.
        failures: images in common that could not be compared.
        verdict: the last line: which proposal layer reproduces the reference, with figures.
        exit_code: 0 the checks ``--require`` names passed on every image (the given-box
            check; with ``full`` also the full check); 1 otherwise.
    """

    given: GivenBoxSummary
    full: Mapping[ProposalMode, FullSummary]
    images: Sequence[ImageComparison]
    failures: Sequence[Failure]
    verdict: str
    exit_code: int


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def reproduce_figures(summary: FullSummary, rule: ReproduceRule) -> str:
    return (
        f"{percent(summary.matched[f'{rule.iou:g}'])} of reference boxes matched at IoU >= "
        f"{rule.iou:g}, objects agree on {percent(summary.objects_agree)} of "
        f"{summary.matched_pairs} pairs at IoU >= {rule.match_iou:g}"
    )


def verdict_line(
    full: Mapping[ProposalMode, FullSummary],
    unavailable: Mapping[ProposalMode, str],
    rule: ReproduceRule,
) -> str:
    """One line: which proposal layer reproduces the reference (see :class:`ReproduceRule`),
    or that neither does, with each layer's figures."""
    if not full or all(s.reference_boxes == 0 for s in full.values()):
        return "verdict: nothing to compare: no image in common could be checked"
    parts = [f"{mode}: {reproduce_figures(summary, rule)}" for mode, summary in full.items()]
    parts += [f"{mode}: not run ({why})" for mode, why in unavailable.items()]
    winners = [mode for mode, summary in full.items() if summary.reproduces]
    if not winners:
        need = (
            f"reproducing needs >= {rule.matched_fraction:.0%} matched at IoU >= {rule.iou:g} "
            f"and objects agreeing on >= {rule.objects_agree:.0%}"
        )
        return (
            f"verdict: neither proposal layer reproduces the reference ({'; '.join(parts)}; {need})"
        )
    names = " and ".join(winners)
    verb = "reproduces" if len(winners) == 1 else "reproduce"
    return f"verdict: {names} {verb} the reference ({'; '.join(parts)})"


def summarize(
    plan: ComparePlan, images: Sequence[ImageComparison], failures: Sequence[Failure]
) -> CompareResult:
    """Pool every image's figures and decide the verdict and the exit code."""
    settings = plan.settings
    given = summarize_given([c.given for c in images], settings.tolerances)
    full = {
        mode: summarize_full([c.full[mode] for c in images], settings.rule)
        for mode in settings.configs
    }
    reproduced = any(s.reproduces for s in full.values())
    passed = given.passed and (settings.require == "given" or reproduced)
    code = EXIT_OK if passed and not failures else EXIT_SOME_FAILED
    verdict = verdict_line(full, settings.unavailable, settings.rule) + coverage_clause(
        require=settings.require,
        given_passed=given.passed,
        reproduced=reproduced,
        failures=len(failures),
        code=code,
    )
    return CompareResult(given, full, images, failures, verdict, code)


def _outcome(passed: bool) -> str:
    return "passed" if passed else "failed"


def coverage_clause(
    *, require: Require, given_passed: bool, reproduced: bool | None, failures: int, code: int
) -> str:
    """The verdict's last words: which checks the exit code covers, and how each went.

    ``reproduced`` is None where no full check ran (file against file)."""
    checks = [f"the given-box check ({_outcome(given_passed)})"]
    if require == "full" and reproduced is not None:
        checks.append(f"the full check ({_outcome(reproduced)}: a proposal layer must reproduce)")
    elif reproduced is not None:
        checks.append("not the full check (--require full adds it)")
    if failures:
        checks.append(f"{failures} image{'' if failures == 1 else 's'} not compared")
    return f"; exit code {code} covers {', '.join(checks)}"


def _number(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _worst_place(given: GivenBoxSummary) -> str:
    if given.worst_cosine_image is None:
        return "n/a"
    return f"image {given.worst_cosine_image!r} box {given.worst_cosine_box}"


def given_lines(
    given: GivenBoxSummary,
    tolerances: GivenBoxTolerances,
    *,
    title: str = "given-box check (the reference's own boxes",
) -> list[str]:
    """The given-box table: figures, their limits, the worst box, PASS or FAIL."""
    return [
        f"{title}, {given.boxes} in all)",
        f"  feature cosine        median {_number(given.median_cosine, '.6f'):>10}  worst "
        f"{_number(given.worst_cosine, '.6f'):>10}   need median >= "
        f"{tolerances.median_cosine}, worst >= {tolerances.worst_cosine}",
        f"  cosine 1st percentile        {_number(given.cosine_1st_percentile, '.6f'):>10}  "
        f"worst at {_worst_place(given)}",
        f"  |norm ratio - 1|      median {_number(given.median_scale_difference, '.3g'):>10}  "
        f"worst {_number(given.worst_scale_difference, '.3g'):>10}   need median <= "
        f"{tolerances.median_scale_difference}",
        f"  largest |difference|  median {_number(given.median_largest_difference, '.3g'):>10}  "
        f"worst {_number(given.worst_largest_difference, '.3g'):>10}",
        f"  relative difference   median {_number(given.median_relative_difference, '.3g'):>10}  "
        f"worst {_number(given.worst_relative_difference, '.3g'):>10}   need median <= "
        f"{tolerances.median_relative_difference}",
        f"  objects_id agree      {percent(given.objects_agree):>17}"
        f"{'':24}need >= {tolerances.objects_agree:.0%}",
        f"  attrs_id agree        {percent(given.attrs_agree):>17}",
        f"  result                {'PASS' if given.passed else 'FAIL':>17}",
    ]


def _full_lines(plan: ComparePlan, result: CompareResult) -> list[str]:
    settings, rule = plan.settings, plan.settings.rule
    selection = next(iter(settings.configs.values())).selection
    count = "the reference's" if settings.box_count == "reference" else "the preset's"
    levels = list(next(iter(result.full.values())).matched) if result.full else []
    header = "  proposals   boxes ref/ours" + "".join(f"  {'IoU>=' + t:>9}" for t in levels)
    lines = [
        f"full check ({selection} selection; boxes per image: {count}; greedy one-to-one IoU)",
        header + "  objects*  cosine* median/worst  reproduces",
    ]
    for mode, s in result.full.items():
        matched = "".join(f"  {percent(s.matched[t]):>9}" for t in levels)
        cosine = f"{_number(s.median_cosine, '.5f')}/{_number(s.worst_cosine, '.5f')}"
        lines.append(
            f"  {mode:<10}  {f'{s.reference_boxes}/{s.our_boxes}':>14}{matched}  "
            f"{percent(s.objects_agree):>8}  {cosine:>20}  {'yes' if s.reproduces else 'no'}"
        )
    lines += [f"  {mode:<10}  not run: {why}" for mode, why in settings.unavailable.items()]
    lines.append(
        f"  * over the pairs matched at IoU >= {rule.match_iou:g}. Reproduces: >= "
        f"{rule.matched_fraction:.0%} of reference boxes matched at IoU >= {rule.iou:g} and "
        f">= {rule.objects_agree:.0%} object agreement"
    )
    return lines


def _image_lines(result: CompareResult, rule: ReproduceRule) -> list[str]:
    lines = [
        "per image: given-box worst cosine / objects agree; per layer: matched at IoU >= "
        f"{rule.iou:g} / objects agree"
    ]
    for c in result.images:
        given = summarize_given([c.given], GivenBoxTolerances())
        layers = "".join(
            f"  {mode} {percent(s.matched[f'{rule.iou:g}'])}/{percent(s.objects_agree)}"
            for mode, s in ((m, summarize_full([f], rule)) for m, f in c.full.items())
        )
        lines.append(
            f"  {c.image_id}: {_number(given.worst_cosine, '.5f')}/"
            f"{percent(given.objects_agree)}{layers}"
        )
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _numerics(settings: CompareSettings) -> str:
    if settings.device.type != "cuda":
        return ""  # CPU runs are always exact
    if settings.deterministic:
        return " (deterministic: no TF32, deterministic cuDNN)"
    return " (--no-deterministic: TF32 and cuDNN autotuning may move features by ~1e-3)"


def format_report(plan: ComparePlan, result: CompareResult, checkpoint: str) -> str:
    """The printed report: what was compared, the two checks, failures, the verdict last."""
    settings = plan.settings
    limit = f", --limit {settings.limit}" if settings.limit else ""
    lines = [
        f"reference  {settings.reference}: {_count(len(plan.store), 'record')}; "
        f"{_count(plan.in_common, 'image')} in common ({len(result.images)} compared, "
        f"{len(result.failures)} failed{limit}); {plan.inputs_only} inputs without a record",
        f"detector   {checkpoint} on {settings.device}{_numerics(settings)}",
        "",
        *given_lines(result.given, settings.tolerances),
        "",
        *_full_lines(plan, result),
    ]
    if settings.verbose:
        lines += ["", *_image_lines(result, settings.rule)]
    if result.failures:
        lines += ["", f"not compared ({len(result.failures)}):"]
        lines += [f"  {f.image_id} ({f.path}): {f.reason}" for f in result.failures]
    return "\n".join([*lines, "", result.verdict])


def json_safe(value: object) -> object:
    """``value`` with every non-finite float as None (JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def report_json(
    plan: ComparePlan, result: CompareResult, checkpoint: Mapping[str, object]
) -> dict[str, object]:
    """The JSON report: settings, rules, both checks overall and per image, failures, verdict."""
    settings, rule = plan.settings, plan.settings.rule
    full: dict[str, object] = {mode: asdict(s) for mode, s in result.full.items()}
    full.update({mode: {"not_run": why} for mode, why in settings.unavailable.items()})
    per_image = [
        {
            "image_id": c.image_id,
            "path": c.path,
            "given_boxes": asdict(summarize_given([c.given], settings.tolerances)),
            "full": {m: asdict(summarize_full([s], rule)) for m, s in c.full.items()},
        }
        for c in result.images
    ]
    report = {
        "kind": REPORT_KIND,
        "reference": {"path": str(settings.reference), "records": len(plan.store)},
        "inputs": list(settings.inputs),
        "images": {
            "in_common": plan.in_common,
            "compared": len(result.images),
            "failed": len(result.failures),
            "limit": settings.limit,
            "inputs_without_record": plan.inputs_only,
            "records_without_input": plan.reference_only,
        },
        "detector": dict(checkpoint),
        "device": str(settings.device),
        "selection": next(iter(settings.configs.values())).selection,
        "box_count": settings.box_count,
        "require": settings.require,
        "deterministic": settings.deterministic,
        "matching": MATCHING,
        "tolerances": {"given_boxes": asdict(settings.tolerances), "reproduces": asdict(rule)},
        "given_boxes": asdict(result.given),
        "full": full,
        "per_image": per_image,
        "failures": [f.to_dict() for f in result.failures],
        "verdict": result.verdict,
        "exit_code": result.exit_code,
    }
    return {key: json_safe(value) for key, value in report.items()}
