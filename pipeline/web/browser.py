"""Drive the page in a real browser: the server as a process, headless Chromium through
Playwright on the system's ``chromium`` (never ``playwright install``).

Used by the browser test and by ``python3 tasks.py screenshot``, which runs
``python -m pipeline.web.browser docs/demo.png``. Playwright is a test requirement; it is
imported only inside the functions that need it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright

#: Seconds for the server to answer (it imports torch and gradio, then loads the models).
START_S = 240
#: What to do when there is no browser.
INSTALL_CHROMIUM = (
    "install Debian's browser: apt-get update && apt-get install -y chromium "
    "(python3 tasks.py test does this when run as root)"
)
#: The shapes-world pair, named explicitly.
SHAPES_ARGS = ("--detector", "shapes-detector", "--encoder", "shapes-lxmert", "--device", "cpu")


def chromium_executable() -> str | None:
    """The system's Chromium (``chromium`` or ``chromium-browser`` on PATH), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Served:
    """A running ``lxmert-demo`` process.

    Attributes:
        url: the page, ``http://127.0.0.1:PORT/``.
        process: the server (its own process group).
        temp_dir: its ``GRADIO_TEMP_DIR``; the server keeps its uploads in a folder of its
            own inside it.
    """

    url: str
    process: subprocess.Popen[bytes]
    temp_dir: Path


@contextmanager
def serve_demo(
    *, log: Path, args: Sequence[str] = SHAPES_ARGS, cwd: Path | None = None
) -> Iterator[Served]:
    """Run ``lxmert-demo`` on a free port in its own process group until it answers, and
    yield it; the process group is stopped on exit (SIGTERM, then SIGKILL). Its
    ``GRADIO_TEMP_DIR`` is a temporary folder removed afterwards.

    Raises:
        RuntimeError: the server exited or did not answer within :data:`START_S`; the
            message ends with its log.
    """
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="lxmert-demo-") as uploads, log.open("wb") as sink:
        env = {
            **os.environ,
            "GRADIO_TEMP_DIR": uploads,
            "GRADIO_ANALYTICS_ENABLED": "False",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        }
        command = [sys.executable, "-m", "pipeline.commands.demo", "--port", str(port), *args]
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
        url = f"http://127.0.0.1:{port}/"
        try:
            _wait_until_serving(process, url, log)
            yield Served(url=url, process=process, temp_dir=Path(uploads))
        finally:
            _stop(process)


@contextmanager
def demo_server(*, log: Path, args: Sequence[str] = SHAPES_ARGS) -> Iterator[str]:
    """:func:`serve_demo`, yielding only the page's URL."""
    with serve_demo(log=log, args=args) as served:
        yield served.url


def _wait_until_serving(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + START_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"lxmert-demo exited {process.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url + "gradio_api/info", timeout=5) as answer:
                json.load(answer)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"lxmert-demo did not answer in {START_S} s:\n{_tail(log)}"
                ) from None
            time.sleep(1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the server and anything it started (its own process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:] if log.exists() else ""


def launch_chromium(playwright: Playwright, executable: str) -> Browser:
    """Headless Chromium from ``executable``; ``--no-sandbox`` because it may run as root."""
    return playwright.chromium.launch(
        executable_path=executable,
        args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
    )


def ask_on_page(page: Page, image: Path, questions: str) -> None:
    """Upload ``image`` on the "Ask" tab, type ``questions`` (one per line), press Ask."""
    page.locator("#image input[type=file]").set_input_files(str(image))
    page.locator("#questions textarea").fill(questions)
    page.locator("#ask").click()


def screenshot(out: Path, *, image: Path, questions: str, timeout_ms: int = 120_000) -> None:
    """Serve the page with the shapes models, ask ``questions`` about ``image``, and save a
    full-page screenshot to ``out`` once every answer chart and the why view (the first
    question's top answer) are shown."""
    from playwright.sync_api import expect, sync_playwright

    executable = chromium_executable()
    if executable is None:
        raise RuntimeError(f"no chromium executable: {INSTALL_CHROMIUM}")
    asked = [line for line in questions.splitlines() if line.strip()]
    with (
        tempfile.TemporaryDirectory() as scratch,
        demo_server(log=Path(scratch) / "server.log") as url,
        sync_playwright() as driver,
    ):
        browser = launch_chromium(driver, executable)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(url, wait_until="domcontentloaded")
            ask_on_page(page, image, questions)
            charts = page.locator(".answer-chart")
            expect(charts.nth(len(asked) - 1)).to_contain_text(asked[-1], timeout=timeout_ms)
            expect(page.locator("#boxes img").first).to_be_visible(timeout=timeout_ms)
            # The why view of the first question's top answer, filled in after the answers.
            expect(page.locator("#why .top-region")).to_be_visible(timeout=timeout_ms)
            expect(page.locator("#why-picture img").first).to_be_visible(timeout=timeout_ms)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipeline.web.browser OUT.png``: the README's screenshot."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if len(arguments) != 1:
        print("usage: python -m pipeline.web.browser OUT.png", file=sys.stderr)
        return 2
    screenshot(
        Path(arguments[0]),
        image=Path("examples/scene_000.png"),
        questions="what color is the circle?\nhow many squares?\nwhat shape is green?",
    )
    print(f"wrote {arguments[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
