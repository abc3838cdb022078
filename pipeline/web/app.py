"""The page: :func:`build_app` lays out components and wires them to
:class:`pipeline.web.service.DemoService`. Layout only; the work is in the service.

Endpoints (``gradio_client`` and plain HTTP, ``/gradio_api/call/<name>``):

- ``detect``: image, detector, encoder, selection, box count, boxes shown -> picture,
  region table, status.
- ``ask``: the same plus questions (one per line) -> picture, region table, answers (JSON:
  per question the top 5 ``{"answer", "probability"}``), status.
- ``explain``: image, one question, an answer (one of the encoder's answers; empty: the
  top one), then the controls -> relevance picture, the why view (HTML), the explanation
  (JSON: ``regions`` with ``index``, ``box``, ``label``, ``score``; ``words`` with
  ``word``, ``score``; ``timing``), status. The page calls it when an answer is clicked.

Uploads reach the service as files (``preprocess=False``), so the service's own decoder,
with its byte and pixel caps, is the only one that reads them, and a bad upload is the
service's message on the page, never a failure inside gradio. Because gradio checks a
file's path only when the payload carries its FileData marker, every value a request sends
passes :mod:`pipeline.web.gate` first: files only from gradio's upload folder (or the listed
examples), models only among those offered, numbers only within the sliders' ranges.

Memory: a page session keeps only the key of its detection (the image stays in the
service's bounded region cache), gradio keeps at most :data:`SESSIONS` sessions, and files
in gradio's folder older than an hour are deleted every ten minutes (:data:`DELETE_CACHE`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import gradio as gr

from pipeline.web.gate import NOT_UPLOADED, Uploads, bounded, offered, upload_of
from pipeline.web.models import (
    ModelChoice,
    ModelSettings,
    StartModels,
    models_html,
    unique_choices,
)
from pipeline.web.service import (
    MAX_QUESTIONS,
    REGION_COLUMNS,
    TOP_K,
    DemoError,
    DemoService,
    PageView,
    boxes_picture,
    region_choices,
)
from pipeline.web.why_view import (
    PairWhy,
    Why,
    answer_charts,
    clicked_answer,
    clicked_verdict,
    explained,
    explained_pair,
    pair_why_layout,
    top_answer,
    top_verdict,
    verdict_charts,
    why_layout,
)

if TYPE_CHECKING:
    from detector.config import Selection

#: Radio label meaning "the checkpoint's own selection".
OWN_SELECTION = "checkpoint's own"
#: Boxes drawn at first (the slider's start).
DEFAULT_SHOWN = 36
#: The selection radio's choices.
SELECTIONS = (OWN_SELECTION, "bottom-up", "max-class")
#: The box-count slider's top (0 means the checkpoint's own) and the boxes-shown slider's.
MAX_BOX_COUNT = 100
MAX_SHOWN = 100
#: gradio's cache cleaning: every 600 s, files older than 3600 s (all of them at shutdown).
DELETE_CACHE = (600, 3600)
#: Page sessions gradio keeps in memory (``launch(state_session_capacity=...)``).
SESSIONS = 64

_F = TypeVar("_F", bound=Callable[..., Any])


def _shown_errors(function: _F) -> _F:
    """Turn a :class:`DemoError` into a ``gr.Error``: shown on the page, the app serving on."""

    @functools.wraps(function)
    def wrapper(*args: Any) -> Any:
        try:
            return function(*args)
        except DemoError as error:
            raise gr.Error(str(error), duration=None) from error

    return cast("_F", wrapper)


@dataclass(frozen=True)
class Offer:
    """Every value a request may choose, as the page offers it.

    Attributes:
        uploads: the files it may name (:class:`pipeline.web.gate.Uploads`).
        detectors, encoders: the names in the detector and encoder dropdowns.
    """

    uploads: Uploads
    detectors: tuple[str, ...]
    encoders: tuple[str, ...]


class _Blocks(gr.Blocks):
    """Blocks whose refusal of a file payload is the page's one message.

    gradio checks a request's file payloads itself before our functions run: a path outside
    its upload folder raises ``InvalidPathError`` and a plain string fails validation, both
    shown as ``{"error": null}`` and logged with the path. Every such refusal becomes
    :data:`pipeline.web.gate.NOT_UPLOADED`, the same as the gate's own.
    """

    async def preprocess_data(self, *args: Any, **kwargs: Any) -> Any:
        from gradio.exceptions import InvalidPathError
        from pydantic import ValidationError

        try:
            return await super().preprocess_data(*args, **kwargs)
        except (InvalidPathError, ValidationError) as error:
            raise gr.Error(NOT_UPLOADED, duration=None) from error


def settings_of(
    offer: Offer, detector: object, encoder: object, selection: object, boxes: object
) -> ModelSettings:
    """The settings the page's controls describe (box count 0: the checkpoint's own).

    Raises:
        DemoError: a value the page does not offer (the message lists what it does).
    """
    chosen = offered(selection, SELECTIONS, what="Selection")
    count = bounded(boxes, low=0, high=MAX_BOX_COUNT, what="Box count")
    return ModelSettings(
        detector=offered(detector, offer.detectors, what="Detector"),
        encoder=offered(encoder, offer.encoders, what="Encoder"),
        selection=None if chosen == OWN_SELECTION else cast("Selection", chosen),
        boxes=count or None,
    )


def build_app(
    service: DemoService,
    *,
    start: StartModels,
    detectors: Sequence[ModelChoice],
    encoders: Sequence[ModelChoice],
    nlvr2_encoders: Sequence[ModelChoice] = (),
    examples: Sequence[str] = (),
) -> gr.Blocks:
    """The page over ``service``; ``start`` says which models are selected first (and why,
    when they are not the defaults). ``nlvr2_encoders``: the NLVR2 tab's models;
    ``examples``: image files, the only ones outside gradio's upload folder a request may
    name. The usable models are the only ones a request may choose."""
    from gradio.utils import get_upload_folder

    uploads = Uploads.of(folder=get_upload_folder(), examples=examples)
    offer = Offer(
        uploads=uploads,
        detectors=tuple(c.name for c in detectors if c.available),
        encoders=tuple(c.name for c in encoders if c.available),
    )
    nlvr2 = dataclasses.replace(
        offer, encoders=tuple(c.name for c in nlvr2_encoders if c.available)
    )
    with _Blocks(title="LXMERT demo", analytics_enabled=False, delete_cache=DELETE_CACHE) as app:
        gr.Markdown(
            "# LXMERT: boxes and answers\nUpload, paste or pick an image; **Show boxes** runs "
            "the detector, **Ask** also answers the questions (one per line). The detector "
            "runs once per image and settings, however many questions are asked."
        )
        gr.Markdown(f"**Note:** {start.notice}", visible=bool(start.notice), elem_id="notice")
        with gr.Tab("Ask"):
            page = _ask_layout(examples)
        with gr.Tab("NLVR2: two images, one statement"):
            pair = _nlvr2_layout(nlvr2_encoders)
        # A textbox: the upload's name (chosen by the client) is shown as text, never markup.
        status = gr.Textbox(
            service.describe_models(), show_label=False, interactive=False, elem_id="status"
        )
        with gr.Accordion("Settings", open=False):
            detector = gr.Dropdown(
                list(offer.detectors),
                value=start.detector or None,
                label="Detector",
            )
            encoder = gr.Dropdown(
                list(offer.encoders),
                value=start.encoder or None,
                label="Encoder",
            )
            selection = gr.Radio(list(SELECTIONS), value=OWN_SELECTION, label="Selection")
            boxes = gr.Slider(
                0, MAX_BOX_COUNT, value=0, step=1, label="Box count (0: the checkpoint's own)"
            )
            gr.HTML(models_html(unique_choices([*detectors, *encoders, *nlvr2_encoders])))
        controls = (detector, encoder, selection, boxes, page.shown)
        _wire(service, offer, page, controls=controls, status=status, detection=gr.State(None))
        _wire_nlvr2(service, nlvr2, pair, (detector, pair.encoder, selection, boxes), status)
        app.load(service.describe_models, None, status, api_visibility="private")
    return app


def _ask_layout(examples: Sequence[str]) -> _Page:
    """The "Ask" tab; status, controls and state are filled in by :func:`build_app`."""
    with gr.Row():
        with gr.Column():
            image = gr.Image(
                label="Image",
                type="filepath",
                sources=["upload", "clipboard"],
                height=360,
                elem_id="image",
            )
            questions = gr.Textbox(
                label=f"Questions, one per line (at most {MAX_QUESTIONS})",
                lines=3,
                placeholder="what color is the circle?",
                elem_id="questions",
            )
            with gr.Row():
                detect_button = gr.Button("Show boxes", elem_id="detect")
                ask_button = gr.Button("Ask", variant="primary", elem_id="ask")
            if examples:
                gr.Examples(examples=[[path] for path in examples], inputs=[image])
        with gr.Column():
            picture = gr.Image(
                label="Boxes", type="numpy", format="png", interactive=False, elem_id="boxes"
            )
            shown = gr.Slider(1, MAX_SHOWN, value=DEFAULT_SHOWN, step=1, label="Boxes shown")
            picked = gr.Dropdown(label="Highlight a region", choices=[], value=None)
            charts = [
                gr.Label(num_top_classes=TOP_K, visible=False, elem_classes="answer-chart")
                for _ in range(MAX_QUESTIONS)
            ]
    why = why_layout()
    table = gr.Dataframe(
        headers=list(REGION_COLUMNS), interactive=False, label="Regions (click to highlight)"
    )
    answers = gr.JSON(label="Answers (JSON)")
    return _Page(
        why=why,
        image=image,
        questions=questions,
        detect=detect_button,
        ask=ask_button,
        picture=picture,
        shown=shown,
        picked=picked,
        charts=tuple(charts),
        table=table,
        answers=answers,
    )


@dataclass(frozen=True)
class _Page:
    """The components of the "Ask" tab."""

    why: Why

    image: gr.Image
    questions: gr.Textbox
    detect: gr.Button
    ask: gr.Button
    picture: gr.Image
    shown: gr.Slider
    picked: gr.Dropdown
    charts: tuple[gr.Label, ...]
    table: gr.Dataframe
    answers: gr.JSON


def _wire_why(
    service: DemoService,
    offer: Offer,
    page: _Page,
    *,
    controls: tuple[gr.components.Component, ...],
    status: gr.Textbox,
) -> tuple[list[gr.components.Component], Callable[[Any], Any]]:
    """Connect the "why" view: ``explain`` is a public endpoint (served like ``ask``); a click
    on a chart's answer explains that answer. Returns the (question, answer) components and
    ``explain_after(event)``, which explains privately once ``event`` succeeds."""

    @_shown_errors
    def explain(
        image: Any,
        question: str,
        answer: str,
        detector: str,
        encoder: str,
        selection: str,
        box_count: float,
        boxes_shown: float,
    ) -> tuple[Any, ...]:
        settings = settings_of(offer, detector, encoder, selection, box_count)
        bounded(boxes_shown, low=1, high=MAX_SHOWN, what="Boxes shown")
        path, name = upload_of(image, offer.uploads)
        return explained(service, path, name, _text(question), _text(answer), settings)

    why = page.why
    why_asked: list[gr.components.Component] = [why.question, why.answer]
    why_inputs = [page.image, *why_asked, *controls]
    why_outputs = [why.picture, why.text, why.explanation, status]

    def explain_after(event: Any) -> Any:
        return event.success(
            explain,
            why_inputs,
            why_outputs,
            api_visibility="private",
            preprocess=False,
            concurrency_id="models",
        )

    why.button.click(
        explain,
        why_inputs,
        why_outputs,
        api_name="explain",
        preprocess=False,
        concurrency_id="models",
    )
    for number, chart in enumerate(page.charts):
        explain_after(
            chart.select(clicked_answer(number), page.answers, why_asked, api_visibility="private")
        )
    return why_asked, explain_after


def _wire(
    service: DemoService,
    offer: Offer,
    page: _Page,
    *,
    controls: tuple[gr.components.Component, ...],
    status: gr.Textbox,
    detection: gr.State,
) -> None:
    """Connect the "Ask" tab: ``detect`` and ``ask`` are the public endpoints (uploads passed
    unprocessed, one shared queue); redraws and charts are private. ``controls``: detector,
    encoder, selection, box count, boxes shown (:func:`_outputs`' arguments). ``detection``
    holds the key of the shown detection, never its image."""

    # Parameter names are the API's (gradio_client, /gradio_api/info).
    @_shown_errors
    def detect(
        image: Any,
        detector: str,
        encoder: str,
        selection: str,
        box_count: float,
        boxes_shown: float,
    ) -> tuple[Any, ...]:
        chosen = (detector, encoder, selection, box_count, boxes_shown)
        return _outputs(service, offer, image, None, *chosen)[:4]

    @_shown_errors
    def ask(
        image: Any,
        questions: str,
        detector: str,
        encoder: str,
        selection: str,
        box_count: float,
        boxes_shown: float,
    ) -> tuple[Any, ...]:
        chosen = (detector, encoder, selection, box_count, boxes_shown)
        return _outputs(service, offer, image, questions, *chosen)

    def choices(key: Any) -> Any:
        return _region_choices(service, key)

    def redraw(key: Any, shown: Any, picked: Any) -> Any:
        return _redraw(service, key, shown, picked)

    why_asked, explain_after = _wire_why(service, offer, page, controls=controls, status=status)
    outputs = [page.picture, page.table, status, detection]
    for event, fn, inputs, results in (
        (page.detect, detect, [page.image, *controls], outputs),
        (page.ask, ask, [page.image, page.questions, *controls], [*outputs, page.answers]),
    ):
        done = event.click(
            fn,
            inputs,
            results,
            api_name=fn.__name__,
            preprocess=False,
            concurrency_id="models",
        ).success(choices, detection, page.picked, api_visibility="private")
        if fn is ask:
            done.success(answer_charts, page.answers, list(page.charts), api_visibility="private")
            explain_after(
                done.success(top_answer, page.answers, why_asked, api_visibility="private")
            )
    redraw_inputs = [detection, page.shown, page.picked]
    page.shown.release(redraw, redraw_inputs, page.picture, api_visibility="private")
    page.picked.change(redraw, redraw_inputs, page.picture, api_visibility="private")
    page.table.select(_picked_row, None, page.picked, api_visibility="private")


def _region_choices(service: DemoService, key: Any) -> Any:
    """The highlight picker's choices for the detection ``key``'s regions, nothing picked."""
    known = service.known(key)
    return gr.update(choices=region_choices(known) if known else [], value=None)


@_shown_errors
def _redraw(service: DemoService, key: Any, shown: Any, picked: Any) -> Any:
    """The detection ``key``'s picture with ``shown`` boxes and the ``picked`` row outlined;
    nothing when the detection is no longer known."""
    known = service.known(key)
    if known is None:
        return gr.skip()
    count = bounded(shown, low=1, high=MAX_SHOWN, what="Boxes shown")
    row = picked if isinstance(picked, int) and not isinstance(picked, bool) else None
    return boxes_picture(known, shown=count, picked=row)


@dataclass(frozen=True)
class _Pair:
    """The components of the NLVR2 tab."""

    left: gr.Image
    right: gr.Image
    statements: gr.Textbox
    encoder: gr.Dropdown
    judge: gr.Button
    left_picture: gr.Image
    right_picture: gr.Image
    verdicts: gr.JSON
    charts: tuple[gr.Label, ...]
    why: PairWhy


def _nlvr2_layout(encoders: Sequence[ModelChoice]) -> _Pair:
    """The NLVR2 tab: two images, statements, an NLVR2 model; verdicts and both images' boxes."""
    usable = [c.name for c in encoders if c.available]
    if not usable:
        gr.Markdown(
            "No NLVR2 model resolves on this machine (see Settings for the reasons); "
            "LXMERT released none, and the shapes-world one is `shapes-nlvr2`."
        )
    with gr.Row():
        left = gr.Image(label="Left image", type="filepath", height=280, elem_id="left")
        right = gr.Image(label="Right image", type="filepath", height=280, elem_id="right")
    statements = gr.Textbox(
        label="Statements about the pair, one per line",
        lines=2,
        placeholder="there is a yellow circle",
        elem_id="statements",
    )
    encoder = gr.Dropdown(usable, value=usable[0] if usable else None, label="NLVR2 model")
    judge = gr.Button("Judge", variant="primary", elem_id="judge")
    with gr.Row():
        left_picture = gr.Image(label="Left boxes", type="numpy", format="png", interactive=False)
        right_picture = gr.Image(label="Right boxes", type="numpy", format="png", interactive=False)
    charts = tuple(
        gr.Label(num_top_classes=2, visible=False, elem_classes="verdict-chart")
        for _ in range(MAX_QUESTIONS)
    )
    verdicts = gr.JSON(label="Verdicts (probability that each statement is true)")
    why = pair_why_layout()
    return _Pair(
        left, right, statements, encoder, judge, left_picture, right_picture, verdicts, charts, why
    )


def _wire_nlvr2(
    service: DemoService,
    offer: Offer,
    pair: _Pair,
    controls: tuple[gr.components.Component, ...],
    status: gr.Textbox,
) -> None:
    """Connect the NLVR2 tab: the public ``judge`` endpoint. ``controls``: detector, NLVR2
    encoder, selection, box count; ``offer``: with the NLVR2 models as its encoders."""

    @_shown_errors
    def judge(
        left: Any,
        right: Any,
        statements: str,
        detector: str,
        encoder: str,
        selection: str,
        box_count: float,
    ) -> tuple[Any, ...]:
        chosen = (detector, encoder, selection, box_count)
        return _judged(service, offer, left, right, statements, chosen)

    @_shown_errors
    def explain_verdict(
        left: Any, right: Any, statement: Any, verdict: Any, *chosen: Any
    ) -> tuple[Any, ...]:
        settings = settings_of(offer, *chosen)
        first, second = upload_of(left, offer.uploads), upload_of(right, offer.uploads)
        return explained_pair(service, first, second, _text(statement), _text(verdict), settings)

    why = pair.why
    asked = [why.statement, why.verdict]
    private: dict[str, Any] = {"api_visibility": "private"}
    explaining = {
        "fn": explain_verdict,
        "inputs": [pair.left, pair.right, *asked, *controls],
        "outputs": [why.left, why.right, why.text, status],
        "preprocess": False,
        "concurrency_id": "models",
        **private,
    }
    done = pair.judge.click(
        judge,
        [pair.left, pair.right, pair.statements, *controls],
        [pair.left_picture, pair.right_picture, pair.verdicts, status],
        api_name="judge",
        preprocess=False,
        concurrency_id="models",
    )
    count = len(pair.charts)
    done.success(lambda v: verdict_charts(v, count), pair.verdicts, list(pair.charts), **private)
    done.success(top_verdict, pair.verdicts, asked, **private).success(**explaining)
    for number, chart in enumerate(pair.charts):
        chart.select(clicked_verdict(number), pair.verdicts, asked, **private).success(**explaining)


def _judged(
    service: DemoService,
    offer: Offer,
    left: Any,
    right: Any,
    statements: Any,
    chosen: tuple[str, str, str, float],
) -> tuple[Any, ...]:
    """The NLVR2 tab's outputs: both pictures, the verdicts, the status line. ``chosen``:
    detector, encoder, selection, box count, as the page sent them."""
    settings = settings_of(offer, *chosen)
    first, second, verdicts, timing = service.judge(
        upload_of(left, offer.uploads), upload_of(right, offer.uploads), _text(statements), settings
    )
    return (
        boxes_picture(first, shown=DEFAULT_SHOWN),
        boxes_picture(second, shown=DEFAULT_SHOWN),
        [verdict.as_json() for verdict in verdicts],
        f"{len(verdicts)} statement(s) judged by {settings.encoder}; {timing.describe()}; "
        f"{service.describe_models()}",
    )


def _text(value: object) -> str:
    """A text box's value: a string, or nothing (a client may send null or a number)."""
    return value if isinstance(value, str) else ""


def _outputs(
    service: DemoService,
    offer: Offer,
    upload: Any,
    text: object,
    detector: object,
    encoder: object,
    selection: object,
    boxes: object,
    shown: object,
) -> tuple[Any, ...]:
    """detect's and ask's values (``text`` None: boxes only); the detection as its key."""
    settings = settings_of(offer, detector, encoder, selection, boxes)
    count = bounded(shown, low=1, high=MAX_SHOWN, what="Boxes shown")
    path, name = upload_of(upload, offer.uploads)
    view: PageView = service.respond(
        path, None if text is None else _text(text), settings, name=name, shown=count
    )
    return (
        view.picture,
        view.rows,
        view.status,
        view.detection.key,
        [answer.as_json() for answer in view.answers],
    )


def _picked_row(event: gr.SelectData) -> int:
    return int(event.index[0])
