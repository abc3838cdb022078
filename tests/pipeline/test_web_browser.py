"""The web page in a real browser: headless Debian Chromium driven by Playwright.

The server is ``python -m pipeline.commands.demo`` with the shapes models, started on a free port
and stopped at the end. Playwright is launched on the system's ``chromium`` executable; it
never downloads a browser (no ``playwright install``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.web.browser import (
    INSTALL_CHROMIUM,
    ask_on_page,
    chromium_executable,
    demo_server,
    launch_chromium,
)

ROOT = Path(__file__).resolve().parents[2]
SCENE = ROOT / "examples" / "scene_000.png"
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
    pytest.importorskip("gradio", reason="pip install 'lxmert-pipeline[web]'")
    return found


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """The page's URL, served by a fresh ``lxmert-demo`` process with the shapes models,
    stopped (with its process group) at the end."""
    chromium_path()
    try:
        with demo_server(log=tmp_path / "server.log", cwd=ROOT) as url:
            yield url
    except RuntimeError as error:
        pytest.fail(str(error))


def test_page_answers_shows_boxes_and_survives_a_bad_upload(server: str, tmp_path: Path) -> None:
    from PIL import Image
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
        browser = launch_chromium(playwright, chromium_path())
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(server, wait_until="domcontentloaded")

            def ask(image: Path, question: str) -> None:
                ask_on_page(page, image, question)

            ask(SCENE, WHY_QUESTION)
            chart = page.locator(".answer-chart").first
            expect(chart).to_contain_text(circle, timeout=WAIT_MS)
            expect(chart).to_contain_text(WHY_QUESTION)

            boxes = page.locator("#boxes img").first
            expect(boxes).to_be_visible(timeout=WAIT_MS)
            size = boxes.evaluate("img => [img.complete, img.naturalWidth, img.naturalHeight]")
            factor = 512 / min(width, height)  # a small image is drawn enlarged
            assert size == [True, round(width * factor), round(height * factor)]

            # The why view explains the top answer by itself; its top region is the circle.
            why = page.locator("#why")
            expect(why).to_contain_text(f"\u201c{circle}\u201d", timeout=WAIT_MS)
            top = why.locator(".top-region")
            expect(top).to_contain_text("circle")
            box = [float(v) for v in (top.get_attribute("data-box") or "").split(",")]
            assert iou(box, circle_box) >= 0.5, (box, circle_box)
            expect(page.locator("#why-picture img").first).to_be_visible(timeout=WAIT_MS)
            expect(page.locator("#status textarea")).to_have_value(
                re.compile("explanation [0-9.]+ s"), timeout=WAIT_MS
            )
            # Clicking another answer in the chart explains that answer.
            other = chart.locator("button.confidence-set").nth(1)
            name = (other.get_attribute("data-testid") or "").removesuffix("-confidence-set")
            assert name and name != circle
            other.click()
            expect(why).to_contain_text(f"\u201c{name}\u201d", timeout=WAIT_MS)
            expect(page.locator("#why-answer textarea")).to_have_value(name)
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            assert Image.open(tmp_path / "page.png").size[0] > 0

            ask(fake, "what color is the circle?")
            expect(page.get_by_text("not a recognised image format").first).to_be_visible(
                timeout=WAIT_MS
            )

            ask(SCENE, "how many squares?")
            expect(chart).to_contain_text("how many squares?", timeout=WAIT_MS)
            expect(chart.locator("h2").first).to_have_text(squares, timeout=WAIT_MS)

            # NLVR2: the verdict as a chart, and the why view on both images.
            page.get_by_role("tab", name="NLVR2: two images, one statement").click()
            page.locator("#left input[type=file]").set_input_files(str(SCENE))
            page.locator("#right input[type=file]").set_input_files(str(OTHER))
            page.locator("#statements textarea").fill("there is a yellow circle")
            page.locator("#judge").click()
            verdict = page.locator(".verdict-chart").first
            expect(verdict).to_contain_text("there is a yellow circle", timeout=WAIT_MS)
            expect(page.locator("#pair-why .top-region")).to_have_count(2, timeout=WAIT_MS)
            expect(page.locator("#pair-why-left img").first).to_be_visible(timeout=WAIT_MS)
            expect(page.locator("#pair-why-right img").first).to_be_visible(timeout=WAIT_MS)
        finally:
            browser.close()


def iou(a: list[float], b: list[float]) -> float:
    """Intersection over union of two xyxy boxes."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
