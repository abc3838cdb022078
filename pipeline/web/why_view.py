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
from pipeline.web.service import DemoService, Timing
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
