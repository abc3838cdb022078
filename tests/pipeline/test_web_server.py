"""The page as a server: a real ``lxmert-demo`` process (shapes models) spoken to over HTTP as
a hostile client would (issue 26, items 1, 2, 4 and 5), then driven in a real browser, and
last stopped with Ctrl-C. One server for the module: each start costs about 18 CPU-seconds.

The Ctrl-C test must run last, as it does in file order (plain pytest, and pytest-xdist's
``--dist loadfile`` that tasks.py uses). An order that puts it earlier (``--ff`` after it
failed, ``--dist worksteal``, a random order) fails the tests after it, loudly: every test
gets the server through :func:`server`, which checks that it still runs.

Every request goes through ``/gradio_api/call/<name>``: a POST that queues it, then the
event stream that ends with ``complete`` (the outputs) or ``error`` (the page error).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from web_helpers import CONTROLS, REFUSED, ROOT, SCENE, Page, file_data

from pipeline.web.browser import (
    INSTALL_CHROMIUM,
    SHAPES_ARGS,
    ask_on_page,
    chromium_executable,
    launch_chromium,
    serve_demo,
)


@dataclass(frozen=True)
class Served:
    """The module's server and the files around it: its ``--examples`` folder (two images
    listed, a dotfile, a text file and a subfolder not) and a private image elsewhere."""

    page: Page
    examples: Path
    secret: Path
    log: Path


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    pytest.importorskip("gradio", reason="pip install 'lxmert-pipeline[web]'")
    base = tmp_path_factory.mktemp("web-server")
    examples = base / "examples"
    (examples / "sub").mkdir(parents=True)
    shutil.copy(SCENE, examples / "a.png")
    shutil.copy(ROOT / "examples" / "scene_001.png", examples / "b.png")
    shutil.copy(SCENE, examples / "sub" / "c.png")
    (examples / ".env").write_text("TOKEN=secret\n")
    (examples / "notes.txt").write_text("not listed\n")
    # A private image: pixels no example has, so a leak would be recognisable.
    secret = base / "private" / "secret.png"
    secret.parent.mkdir()
    Image.fromarray(np.full((64, 96, 3), (12, 200, 34), dtype=np.uint8)).save(secret)
    args, log = [*SHAPES_ARGS, "--examples", str(examples)], base / "server.log"
    try:
        with serve_demo(log=log, args=args, cwd=base) as served:
            yield Served(page=Page(served=served), examples=examples, secret=secret, log=log)
    except RuntimeError as error:
        pytest.fail(str(error))


@pytest.fixture
def server(module_server: Served) -> Served:
    """The module's server, still running."""
    status = module_server.page.served.process.poll()
    if status is not None:
        pytest.fail(
            f"the module's server has exited ({status}): it crashed, or the Ctrl-C test ran "
            f"before this one; its log: {module_server.log}"
        )
    return module_server


@pytest.fixture
def page(server: Served) -> Page:
    return server.page


def _inputs(endpoint: str, image: Any) -> list[Any]:
    if endpoint == "detect":
        return [image, *CONTROLS]
    if endpoint == "ask":
        return [image, "what color is the circle?", *CONTROLS]
    if endpoint == "explain":
        return [image, "what color is the circle?", "", *CONTROLS]
    return [image, image, "there is a circle", "shapes-detector", "shapes-nlvr2", CONTROLS[2], 0]


# -- item 1: only files the server stored ----------------------------------------------------


@pytest.mark.parametrize("endpoint", ["detect", "ask", "explain", "judge"])
def test_files_the_server_did_not_store_are_refused_alike(server: Served, endpoint: str) -> None:
    page, examples, secret = server.page, server.examples, str(server.secret)
    link = page.uploads / f"link-{endpoint}.png"
    link.symlink_to(server.secret)  # inside the upload folder, pointing out of it
    payloads = {
        "bare path dict": {"path": secret},
        "plain string": secret,
        "path outside the upload folder": file_data(secret),
        "missing file": file_data(str(server.secret.parent / "none.png")),
        "a folder": file_data(str(server.secret.parent)),
        "not an image": file_data("/etc/passwd"),
        "link out of the upload folder": file_data(str(link)),
        "unlisted file beside the examples": file_data(str(examples / "sub" / "c.png")),
    }
    for what, payload in payloads.items():
        assert page.call(endpoint, _inputs(endpoint, payload)) == ("error", REFUSED), what


def test_an_uploaded_file_is_answered_and_its_name_shown_as_text(page: Page) -> None:
    name = "**bold** <img src=x onerror=alert(1)> _x_.png"
    upload = page.upload(SCENE, name=name)
    kind, outputs = page.call("ask", [upload, "what color is the circle?", *CONTROLS])
    assert kind == "complete", outputs
    picture, _, status, _, answers = outputs
    assert answers[0]["answers"][0]["answer"] == "yellow"
    assert status.startswith(f"{name}: 271x271 pixels")
    assert "time: detector " in status and ", encoder " in status
    shown = Image.open(picture["path"])
    assert shown.size == (512, 512)  # 271x271, drawn enlarged so labels fit
    config = json.load(urllib.request.urlopen(page.served.url + "config", timeout=60))
    (box,) = [c for c in config["components"] if c["props"].get("elem_id") == "status"]
    assert box["type"] == "textbox"  # text, never Markdown or HTML


# -- item 2: only the models offered, numbers within the sliders ------------------------------


def test_models_not_offered_are_refused_naming_the_choices(page: Page) -> None:
    upload = page.upload(SCENE)
    shipped = ROOT / "weights" / "shipped" / "shapes-lxmert"
    cases = [
        ("/etc/passwd", "shapes-lxmert", "Detector must be one of the page's choices"),
        ("vg-r101-c4-attr", "shapes-lxmert", "Detector must be one of the page's choices"),
        ("shapes-detector", "/etc", "Encoder must be one of the page's choices"),
        ("shapes-detector", f"{shipped}//", "Encoder must be one of the page's choices"),
        ("shapes-detector", "lxmert-vqa", "Encoder must be one of the page's choices"),
    ]
    for detector, encoder, message in cases:
        kind, error = page.call("detect", [upload, detector, encoder, *CONTROLS[2:]])
        assert kind == "error" and error.startswith(message), (detector, encoder, error)
        assert "shapes-detector" in error or "shapes-lxmert" in error
    kind, outputs = page.call("detect", [upload, *CONTROLS])
    assert kind == "complete"
    assert "loaded: detector shapes-detector" in outputs[2]
    assert outputs[2].count("encoder ") == 1  # the refused spellings loaded nothing


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (3, 100000, "Box count must be a whole number from 0 to 100."),
        (3, -1, "Box count must be a whole number from 0 to 100."),
        (3, 2.5, "Box count must be a whole number from 0 to 100."),
        (3, "7", "Box count must be a whole number from 0 to 100."),
        (4, 0, "Boxes shown must be a whole number from 1 to 100."),
        (4, 1e9, "Boxes shown must be a whole number from 1 to 100."),
        (2, "sideways", "Selection must be one of the page's choices"),
    ],
)
def test_numbers_and_choices_are_bounded_as_the_page_bounds_them(
    page: Page, field: int, value: Any, message: str
) -> None:
    controls = list(CONTROLS)
    controls[field] = value
    kind, error = page.call("detect", [page.upload(SCENE), *controls])
    assert kind == "error" and error.startswith(message)


# -- issue 32: explain, served like ask ---------------------------------------------------------


def test_explain_gives_regions_and_words_and_finds_the_named_object(page: Page) -> None:
    """scene_000 has one circle (yellow, box 103.25,169.75,198.25,264.75 in scenes.json);
    measured beforehand: the top region is the detector's yellow circle, IoU 0.66."""
    upload = page.upload(SCENE)
    kind, outputs = page.call("explain", [upload, "what color is the circle?", "", *CONTROLS])
    assert kind == "complete", outputs
    picture, _, explanation, status = outputs
    assert Image.open(picture["path"]).size[0] == 512  # enlarged, a legend strip below
    assert explanation["answer"] == "yellow" and explanation["method"] == "chefer"
    scores = [r["score"] for r in explanation["regions"]]
    assert min(scores) >= 0 and sum(scores) == pytest.approx(1.0, abs=1e-6)
    top = max(explanation["regions"], key=lambda r: r["score"])
    assert top["label"] == "yellow circle" and len(top["box"]) == 4
    assert iou(top["box"], [103.25, 169.75, 198.25, 264.75]) >= 0.5
    words = [w["word"] for w in explanation["words"]]
    assert words == ["what", "color", "is", "the", "circle", "?"]
    assert max(explanation["words"], key=lambda w: w["score"])["word"] == "circle"
    assert explanation["timing"]["detector_s"] is None  # the upload's regions were cached
    assert explanation["timing"]["explain_s"] > 0
    assert "time: detector cached, explanation " in status
    # Another answer of the model is explained as asked; one outside its answers is refused.
    kind, outputs = page.call("explain", [upload, "what color is the circle?", "red", *CONTROLS])
    assert kind == "complete" and outputs[2]["answer"] == "red"
    kind, error = page.call("explain", [upload, "what color is the circle?", "pizza", *CONTROLS])
    assert kind == "error"
    assert error.startswith("Answer must be one of shapes-lxmert's 22 answers")


def test_explain_refuses_models_not_offered_and_unbounded_numbers(page: Page) -> None:
    upload = page.upload(SCENE)
    question = [upload, "what color is the circle?", ""]
    kind, error = page.call("explain", [*question, "shapes-detector", "/etc", *CONTROLS[2:]])
    assert kind == "error" and error.startswith("Encoder must be one of the page's choices")
    kind, error = page.call("explain", [*question, *CONTROLS[:3], 100000, 36])
    assert kind == "error" and error.startswith("Box count must be a whole number")
    two = [upload, "what color is the circle?\nhow many squares?", "", *CONTROLS]
    assert page.call("explain", two) == ("error", "2 questions: ask at most 1 at a time.")


def iou(a: list[float], b: list[float]) -> float:
    """Intersection over union of two xyxy boxes."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


# -- item 4: --examples serves only its listed files ----------------------------------------


def test_examples_serve_only_the_listed_files(server: Served) -> None:
    page = server.page

    def served(path: Path) -> int:
        return page.status_of(f"gradio_api/file={path}")

    assert served(server.examples / "a.png") == 200
    assert served(server.examples / "b.png") == 200
    for unlisted in (".env", "notes.txt", "sub/c.png"):
        assert served(server.examples / unlisted) in (403, 404), unlisted
    config = json.load(urllib.request.urlopen(page.served.url + "config", timeout=60))
    samples = [
        sample[0]["orig_name"]
        for c in config["components"]
        if c["type"] == "dataset"
        for sample in c["props"]["samples"]
    ]
    assert samples == ["a.png", "b.png"]
    # Picking an example sends gradio's copy of it: answered like an upload.
    (dataset,) = [c for c in config["components"] if c["type"] == "dataset"]
    example = dataset["props"]["samples"][0][0]
    kind, outputs = page.call("detect", [file_data(example["path"]), *CONTROLS])
    assert kind == "complete" and outputs[2].startswith("a.png: 271x271")


# -- item 5: smaller page defects -------------------------------------------------------------


def test_a_lone_surrogate_in_a_question_is_a_page_error(page: Page) -> None:
    kind, error = page.call("ask", [page.upload(SCENE), "what \ud800 color?", *CONTROLS])
    assert kind == "error"
    assert error == "The question 1 is not valid text (a lone surrogate at character 6); retype it."
    kind, _ = page.call("ask", [page.upload(SCENE), "what color is the circle?", *CONTROLS])
    assert kind == "complete"  # and the page serves on


# -- the page in a real browser: headless Debian Chromium driven by Playwright ---------------
# Playwright is launched on the system's ``chromium`` executable; it never downloads a browser
# (no ``playwright install``).

OTHER = ROOT / "examples" / "scene_001.png"
#: The why view's question, chosen beforehand: scene_000 has one circle, and with the
#: shapes models its top-relevance region was measured to be the detector's "yellow circle"
#: (relevance 0.58, IoU 0.66 with the circle's true box; the next region 0.15).
WHY_QUESTION = "what color is the circle?"
#: Milliseconds for the page to show a result (the machine may be busy).
WAIT_MS = 120_000


def chromium_path() -> str:
    """The system's Chromium, or skip saying how to install it."""
    found = chromium_executable()
    if found is None:
        pytest.skip(f"no chromium executable: {INSTALL_CHROMIUM}")
    pytest.importorskip("playwright.sync_api", reason="pip install -r requirements-test.txt")
    return found


def test_page_answers_shows_boxes_and_survives_a_bad_upload(page: Page, tmp_path: Path) -> None:
    executable = chromium_path()
    from playwright.sync_api import expect, sync_playwright

    truth = json.loads((ROOT / "examples" / "scenes.json").read_text())["scenes"]
    objects = next(scene["objects"] for scene in truth if scene["file"] == SCENE.name)
    circle = next(o["color"] for o in objects if o["shape"] == "circle")
    circle_box = next(o["box"] for o in objects if o["shape"] == "circle")
    squares = str(sum(o["shape"] == "square" for o in objects))
    width, height = Image.open(SCENE).size
    fake = tmp_path / "notes.png"
    fake.write_text("this is a text file, not a picture\n")

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, executable)
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 1800})
            tab.goto(page.served.url, wait_until="domcontentloaded")

            def ask(image: Path, question: str) -> None:
                ask_on_page(tab, image, question)

            ask(SCENE, WHY_QUESTION)
            chart = tab.locator(".answer-chart").first
            expect(chart).to_contain_text(circle, timeout=WAIT_MS)
            expect(chart).to_contain_text(WHY_QUESTION)

            boxes = tab.locator("#boxes img").first
            expect(boxes).to_be_visible(timeout=WAIT_MS)
            size = boxes.evaluate("img => [img.complete, img.naturalWidth, img.naturalHeight]")
            factor = 512 / min(width, height)  # a small image is drawn enlarged
            assert size == [True, round(width * factor), round(height * factor)]

            # The why view explains the top answer by itself; its top region is the circle.
            why = tab.locator("#why")
            expect(why).to_contain_text(f"\u201c{circle}\u201d", timeout=WAIT_MS)
            top = why.locator(".top-region")
            expect(top).to_contain_text("circle")
            box = [float(v) for v in (top.get_attribute("data-box") or "").split(",")]
            assert iou(box, circle_box) >= 0.5, (box, circle_box)
            expect(tab.locator("#why-picture img").first).to_be_visible(timeout=WAIT_MS)
            expect(tab.locator("#status textarea")).to_have_value(
                re.compile("explanation [0-9.]+ s"), timeout=WAIT_MS
            )
            # Clicking another answer in the chart explains that answer.
            other = chart.locator("button.confidence-set").nth(1)
            name = (other.get_attribute("data-testid") or "").removesuffix("-confidence-set")
            assert name and name != circle
            other.click()
            expect(why).to_contain_text(f"\u201c{name}\u201d", timeout=WAIT_MS)
            expect(tab.locator("#why-answer textarea")).to_have_value(name)
            tab.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            assert Image.open(tmp_path / "page.png").size[0] > 0

            ask(fake, "what color is the circle?")
            expect(tab.get_by_text("not a recognised image format").first).to_be_visible(
                timeout=WAIT_MS
            )

            ask(SCENE, "how many squares?")
            expect(chart).to_contain_text("how many squares?", timeout=WAIT_MS)
            expect(chart.locator("h2").first).to_have_text(squares, timeout=WAIT_MS)

            # NLVR2: the verdict as a chart, and the why view on both images.
            tab.get_by_role("tab", name="NLVR2: two images, one statement").click()
            tab.locator("#left input[type=file]").set_input_files(str(SCENE))
            tab.locator("#right input[type=file]").set_input_files(str(OTHER))
            tab.locator("#statements textarea").fill("there is a yellow circle")
            tab.locator("#judge").click()
            verdict = tab.locator(".verdict-chart").first
            expect(verdict).to_contain_text("there is a yellow circle", timeout=WAIT_MS)
            expect(tab.locator("#pair-why .top-region")).to_have_count(2, timeout=WAIT_MS)
            expect(tab.locator("#pair-why-left img").first).to_be_visible(timeout=WAIT_MS)
            expect(tab.locator("#pair-why-right img").first).to_be_visible(timeout=WAIT_MS)
        finally:
            browser.close()


# -- last: Ctrl-C (issue 26, items 3 and 5) ----------------------------------------------------

#: Seconds for the server to finish once interrupted (it closes gradio, then removes files).
STOP_S = 120


def test_ctrl_c_exits_130_and_leaves_no_files(page: Page, tmp_path: Path) -> None:
    """Exit 130, as ``lxmert-demo --help`` says, and none of its uploads or outputs left in its
    temporary folder. Last in this module: it stops the module's server."""
    served = page.served
    # An image new to the server: gradio keeps files by their content's hash, and the tests
    # before this one uploaded the scene.
    pixels = np.array(Image.open(SCENE).convert("RGB"))
    pixels[0, 0] = (1, 2, 3)
    Image.fromarray(pixels).save(tmp_path / "unseen.png")
    before = {p for p in served.temp_dir.rglob("*") if p.is_file()}
    kind, _ = page.call("detect", [page.upload(tmp_path / "unseen.png"), *CONTROLS])
    assert kind == "complete"
    new = {p for p in served.temp_dir.rglob("*") if p.is_file()} - before
    assert len(new) >= 2  # the upload and the boxes picture, while it serves
    served.process.send_signal(signal.SIGINT)
    assert served.process.wait(timeout=STOP_S) == 130
    assert list(served.temp_dir.rglob("*")) == []
