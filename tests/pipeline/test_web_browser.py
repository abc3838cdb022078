"""The web page in a real browser: headless Debian Chromium driven by Playwright.

The server is ``python -m pipeline.web.cli`` with the shapes models, started on a free port
and stopped at the end. Playwright is launched on the system's ``chromium`` executable; it
never downloads a browser (no ``playwright install``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENE = ROOT / "examples" / "scene_000.png"
#: Seconds for the server to start (imports torch and gradio, loads the shapes models).
START_S = 240
#: Milliseconds for the page to show a result (the machine may be busy).
WAIT_MS = 120_000


def chromium_path() -> str:
    """The system's Chromium, or skip saying how to install it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip(
            "no chromium executable: install Debian's browser with `apt-get update && "
            "apt-get install -y chromium` (python3 tasks.py test does this when run as root)"
        )
    pytest.importorskip("playwright.sync_api", reason="pip install -r requirements-test.txt")
    pytest.importorskip("gradio", reason="pip install 'lxmert-pipeline[web]'")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the server and everything it started (its own process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """The page's URL, served by a fresh ``lxmert-demo`` process with the shapes models."""
    port = free_port()
    env = {
        **os.environ,
        "GRADIO_TEMP_DIR": str(tmp_path / "gradio"),  # uploads stay in the test's folder
        "GRADIO_ANALYTICS_ENABLED": "False",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    log = (tmp_path / "server.log").open("wb")
    command = [sys.executable, "-m", "pipeline.web.cli", "--port", str(port), "--device", "cpu"]
    command += ["--detector", "shapes-detector", "--encoder", "shapes-lxmert"]
    command += ["--examples", str(tmp_path / "no-examples")]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited {process.returncode}:\n{read(tmp_path)}")
            try:
                with urllib.request.urlopen(url + "gradio_api/info", timeout=5) as answer:
                    json.load(answer)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the server did not answer in {START_S} s:\n{read(tmp_path)}")
                time.sleep(1)
        yield url
    finally:
        stop(process)
        log.close()
    assert process.poll() is not None


def read(tmp_path: Path) -> str:
    return (tmp_path / "server.log").read_text(errors="replace")[-4000:]


def test_page_answers_shows_boxes_and_survives_a_bad_upload(server: str, tmp_path: Path) -> None:
    from PIL import Image
    from playwright.sync_api import expect, sync_playwright

    truth = json.loads((ROOT / "examples" / "scenes.json").read_text())["scenes"]
    objects = next(scene["objects"] for scene in truth if scene["file"] == SCENE.name)
    circle = next(o["color"] for o in objects if o["shape"] == "circle")
    squares = str(sum(o["shape"] == "square" for o in objects))
    width, height = Image.open(SCENE).size
    fake = tmp_path / "notes.png"
    fake.write_text("this is a text file, not a picture\n")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(),
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(server, wait_until="domcontentloaded")

            def ask(image: Path, question: str) -> None:
                page.locator("#image input[type=file]").set_input_files(str(image))
                page.locator("#questions textarea").fill(question)
                page.locator("#ask").click()

            ask(SCENE, "what color is the circle?")
            chart = page.locator(".answer-chart").first
            expect(chart).to_contain_text(circle, timeout=WAIT_MS)
            expect(chart).to_contain_text("what color is the circle?")

            boxes = page.locator("#boxes img").first
            expect(boxes).to_be_visible(timeout=WAIT_MS)
            size = boxes.evaluate("img => [img.complete, img.naturalWidth, img.naturalHeight]")
            assert size == [True, width, height]
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            assert Image.open(tmp_path / "page.png").size[0] > 0

            ask(fake, "what color is the circle?")
            expect(page.get_by_text("not a recognised image format").first).to_be_visible(
                timeout=WAIT_MS
            )

            ask(SCENE, "how many squares?")
            expect(chart).to_contain_text("how many squares?", timeout=WAIT_MS)
            expect(chart.locator("h2").first).to_have_text(squares, timeout=WAIT_MS)
        finally:
            browser.close()
