"""The page's "why" view: which answer to explain, and its explanation shown as a relevance
picture (:func:`pipeline.web.why.relevance_picture`), the top regions, and the question's
words shaded by relevance. Layout and the values of the ``explain`` endpoint; the request's
checks (:mod:`pipeline.web.gate`) are made by :mod:`pipeline.web.app` before these run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from pipeline.web.models import ModelSettings
from pipeline.web.service import MAX_QUESTIONS, DemoError, DemoService, Timing
from pipeline.web.why import regions_html, relevance_picture, words_html


@dataclass(frozen=True)
class Why:
    """The "why" view: which answer to explain, and the explanation."""

    question: gr.Textbox
    answer: gr.Textbox
    button: gr.Button
    picture: gr.Image
    text: gr.HTML
    explanation: gr.JSON


def why_layout() -> Why:
    """The "why" view under the charts: click an answer in a chart to explain it."""
    gr.Markdown(
        "### Why this answer\nClick an answer in a chart (or type one) to see the regions "
        "and words it rests on: each region as bright as its relevance, the top ones "
        "outlined (Chefer et al.'s relevance, ICCV 2021)."
    )
    with gr.Row():
        question = gr.Textbox(label="Question", elem_id="why-question", scale=3)
        answer = gr.Textbox(label="Answer (empty: the top one)", elem_id="why-answer", scale=1)
        button = gr.Button("Why?", elem_id="why-button", scale=0)
    with gr.Row():
        picture = gr.Image(
            label="Relevance", type="numpy", format="png", interactive=False, elem_id="why-picture"
        )
        text = gr.HTML(elem_id="why")
    explanation = gr.JSON(label="Explanation (JSON)", open=False)
    return Why(question, answer, button, picture, text, explanation)


def explained(
    service: DemoService,
    path: Any,
    name: str,
    question: str,
    answer: str,
    settings: ModelSettings,
) -> tuple[Any, ...]:
    """The ``explain`` endpoint's values for the checked upload at ``path``: relevance
    picture, why view (HTML), explanation (JSON, with ``timing``), status line.

    Raises:
        DemoError: as :meth:`DemoService.detect` and :meth:`DemoService.explain`.
    """
    detection, detector_s = service.detect_timed(path, settings, name=name)
    found, seconds = service.explain(detection, question, answer.strip() or None, settings)
    timing = Timing(detector_s, None, seconds)
    title = (
        f"Why \u201c{found.answer}\u201d ({found.probability:.2f}) "
        f"to \u201c{found.question}\u201d: the top regions"
    )
    explanation = {**found.to_json(), "timing": timing.as_json()}
    return (
        relevance_picture(detection.image_bgr, found.image),
        regions_html(found.image, title=title) + words_html(found.words),
        explanation,
        f"{name}: explained \u201c{found.answer}\u201d with {settings.encoder}; "
        f"{timing.describe()}; {service.describe_models()}",
    )


def top_answer(answers: list[dict[str, Any]] | None) -> tuple[str, str]:
    """The first question and its top answer: what the why view shows after Ask."""
    if not answers or not answers[0]["answers"]:
        return gr.skip(), gr.skip()  # type: ignore[no-any-return]
    return answers[0]["question"], answers[0]["answers"][0]["answer"]


def clicked_answer(number: int) -> Callable[..., tuple[str, str]]:
    """The select handler of chart ``number``: its question and the answer clicked."""

    def clicked(answers: list[dict[str, Any]] | None, event: gr.SelectData) -> tuple[str, str]:
        if not answers or number >= len(answers) or not isinstance(event.value, str):
            raise gr.Error("Ask again: this chart's question is no longer known.")
        return answers[number]["question"], event.value

    return clicked


# -- NLVR2: why this verdict, on both images ----------------------------------------------------

#: The verdicts as the NLVR2 charts name them.
TRUE, FALSE = "true", "false"


@dataclass(frozen=True)
class PairWhy:
    """The NLVR2 "why" view: which verdict is explained, and both images' relevance."""

    statement: gr.Textbox
    verdict: gr.Textbox
    left: gr.Image
    right: gr.Image
    text: gr.HTML


def pair_why_layout() -> PairWhy:
    """The NLVR2 tab's "why" view under the verdict charts."""
    gr.Markdown(
        "### Why this verdict\nThe first statement's verdict is explained after **Judge**; "
        "click a verdict in a chart to explain it (either one) on both images."
    )
    with gr.Row():
        statement = gr.Textbox(label="Statement", elem_id="pair-why-statement", scale=3)
        verdict = gr.Textbox(label="Verdict (true/false)", elem_id="pair-why-verdict", scale=1)
    with gr.Row():
        left = gr.Image(
            label="Left relevance",
            type="numpy",
            format="png",
            interactive=False,
            elem_id="pair-why-left",
        )
        right = gr.Image(
            label="Right relevance",
            type="numpy",
            format="png",
            interactive=False,
            elem_id="pair-why-right",
        )
    text = gr.HTML(elem_id="pair-why")
    return PairWhy(statement, verdict, left, right, text)


def answer_charts(answers: list[dict[str, Any]] | None) -> list[Any]:
    """One bar chart (``gr.Label``) per question, the rest of the page's
    :data:`~pipeline.web.service.MAX_QUESTIONS` charts hidden."""
    updates = [
        gr.update(
            value={a["answer"]: a["probability"] for a in entry["answers"]},
            label=entry["question"],
            visible=True,
        )
        for entry in answers or []
    ]
    return updates + [gr.update(visible=False)] * (MAX_QUESTIONS - len(updates))


def verdict_charts(verdicts: list[dict[str, Any]] | None, count: int) -> list[Any]:
    """One chart per statement (``true`` and ``false`` with their probabilities), the rest
    of the ``count`` charts hidden."""
    updates = [
        gr.update(
            value={TRUE: v["probability_true"], FALSE: 1.0 - v["probability_true"]},
            label=v["statement"],
            visible=True,
        )
        for v in verdicts or []
    ]
    return updates + [gr.update(visible=False)] * (count - len(updates))


def top_verdict(verdicts: list[dict[str, Any]] | None) -> tuple[str, str]:
    """The first statement and the model's verdict on it: explained after Judge."""
    if not verdicts:
        return gr.skip(), gr.skip()  # type: ignore[no-any-return]
    return verdicts[0]["statement"], TRUE if verdicts[0]["true"] else FALSE


def clicked_verdict(number: int) -> Callable[..., tuple[str, str]]:
    """The select handler of verdict chart ``number``: its statement and the verdict clicked."""

    def clicked(verdicts: list[dict[str, Any]] | None, event: gr.SelectData) -> tuple[str, str]:
        if not verdicts or number >= len(verdicts) or event.value not in (TRUE, FALSE):
            raise gr.Error("Judge again: this chart's statement is no longer known.")
        return verdicts[number]["statement"], str(event.value)

    return clicked


def verdict_of(text: str) -> bool | None:
    """``"true"`` / ``"false"`` as a verdict; ``""``: the model's own.

    Raises:
        DemoError: anything else.
    """
    chosen = text.strip().lower()
    if chosen in (TRUE, FALSE):
        return chosen == TRUE
    if not chosen:
        return None
    raise DemoError("Verdict must be true or false (or empty: the model's own).")


def explained_pair(
    service: DemoService,
    left: tuple[Any, str],
    right: tuple[Any, str],
    statement: str,
    verdict: str,
    settings: ModelSettings,
) -> tuple[Any, ...]:
    """Both relevance pictures, the why view (HTML) and the status line for the checked
    uploads ``left`` and ``right`` (path, display name).

    Raises:
        DemoError: as :meth:`DemoService.detect` and :meth:`DemoService.explain_pair`.
    """
    first, first_s = service.detect_timed(left[0], settings, name=left[1])
    second, second_s = service.detect_timed(right[0], settings, name=right[1])
    chosen = verdict_of(verdict)
    found, seconds = service.explain_pair((first, second), statement, chosen, settings)
    detector_s = None if first_s is None and second_s is None else (first_s or 0) + (second_s or 0)
    timing = Timing(detector_s, None, seconds)
    said = TRUE if found.verdict else FALSE
    title = f"Why \u201c{said}\u201d ({found.probability:.2f}) for \u201c{found.statement}\u201d"
    text = (
        regions_html(
            found.left, title=f"{title}: left image, {found.left.share:.0%} of the relevance"
        )
        + regions_html(found.right, title=f"right image, {found.right.share:.0%} of the relevance")
        + words_html(found.words)
    )
    return (
        relevance_picture(first.image_bgr, found.left),
        relevance_picture(second.image_bgr, found.right),
        text,
        f"explained \u201c{said}\u201d with {settings.encoder}; {timing.describe()}; "
        f"{service.describe_models()}",
    )
