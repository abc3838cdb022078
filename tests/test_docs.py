"""Docs that run: every shell and Python block of README.md and docs/*.md is executed, on the
shipped shapes-world models, and the output a page shows is what the block prints.

Conventions (docs/development.md, "Docs that run", says the same for writers):

- A block is fenced and names its language: ``bash`` (or ``sh``, ``shell``) and ``python`` are
  run; ``text`` is output or a drawing. Indented code blocks are not allowed (nothing could
  tell a command from a drawing), nor fences without a language.
- An italic line directly above a block (or, for a block that opens the page, directly below
  it) changes how it runs, and says why on the rendered page:
  ``*Not run by the tests: REASON.*`` skips it (real weights, a GPU, the network, Docker, a
  file of yours); ``*Slow (REASON): ...*`` runs it only under ``pytest -m slow`` (training);
  ``*Runs until Ctrl-C ...*`` (a server) runs it in the background, waits until its port
  answers, runs the page's further blocks against it and stops it with SIGINT after the page's
  last block (it must then exit 130).
- A ``text`` block right after a command block (only blank lines between) is the output the
  command prints on stdout, compared after stripping trailing spaces: ``...`` stands for any
  text, and a number written with a decimal point or an exponent matches within one unit of
  its last written digit or 1e-4 relative (the last digits of features and probabilities vary
  by CPU). ``*Example output (...)*`` between the two shows an output that is not compared.
- In Python, ``expression  # -> VALUE`` (or ``# -> VALUE`` on the line after the expression)
  compares ``repr(expression)`` with VALUE by the same rule; text after two spaces is a remark.

How they run: each page runs once, its blocks in page order, in one fresh process
(``sys.executable``) whose working directory is a new temporary folder holding a copy of
``examples/``, so the relative paths of the docs (``examples/``, ``out/``) work and nothing is
written into the checkout. Shell blocks run one after another with ``bash -e -o pipefail``;
Python blocks share one namespace per page (later blocks use names of earlier ones), as when
pasted one after another into one interpreter. ``.venv/bin`` (the running Python's folder) is
first on ``PATH``; ``HF_HOME`` and ``XDG_CACHE_HOME`` point into the temporary folder, so only
the shipped models can be found. Where ``unshare`` can make a user and network namespace, the
page runs in it: no network at all (the "offline" the docs promise) and a loopback of its own,
so its servers cannot clash with another process's port. Each block is one test, named by page
and line (``docs/extract.md:12``); a failure shows the block's exit status, output and error.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")))
#: Each page's text as collected: a page edited while the tests run keeps its block lines.
TEXTS = MappingProxyType({page: (ROOT / page).read_text() for page in PAGES})

SHELL = frozenset({"bash", "sh", "shell"})
PYTHON = frozenset({"python"})
TEXT = frozenset({"text"})
SKIP_MARK = "*Not run by the tests:"
SLOW_MARK = "*Slow"
SERVER_MARK = "*Runs until Ctrl-C"
EXAMPLE_MARK = "*Example output"
MARKS = (SKIP_MARK, SLOW_MARK, SERVER_MARK)

#: Seconds one shell block may run, and a whole page (a hang is a failure, not a stuck suite).
BLOCK_TIMEOUT_S = MappingProxyType({False: 300, True: 4 * 3600})
PAGE_TIMEOUT_S = MappingProxyType({False: 1200, True: 8 * 3600})
#: Seconds a server block may take to answer, and to exit after SIGINT.
SERVER_START_S = 180
SERVER_STOP_S = 60


@dataclass(frozen=True)
class Block:
    """One fenced block of a page; ``line`` is its opening fence (1-based)."""

    page: str
    line: int
    lang: str
    code: str
    mark: str = ""  # the italic marker line, "" when none
    expected: str | None = None  # the text block right after it
    expected_is_example: bool = False

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def kind(self) -> str:
        """``skip``, ``slow``, ``server`` or ``run``."""
        for mark, kind in ((SKIP_MARK, "skip"), (SLOW_MARK, "slow"), (SERVER_MARK, "server")):
            if self.mark.startswith(mark):
                return kind
        return "run"


@dataclass(frozen=True)
class Fence:
    """A fenced block as written: line numbers are 0-based indices into the page's lines."""

    start: int
    end: int  # the closing fence
    lang: str
    code: str


_FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)\s*$")


def fences(lines: list[str]) -> list[Fence]:
    """Every fenced block of a page (fences may be indented, as inside list items)."""
    found = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, ticks, lang = opening.groups()
        end = i + 1
        while end < len(lines):
            closing = _FENCE.match(lines[end])
            if closing and closing.group(2).startswith(ticks) and not closing.group(3):
                break
            end += 1
        body = [
            line[len(indent) :] if line.startswith(indent) else line for line in lines[i + 1 : end]
        ]
        found.append(Fence(i, end, lang, "\n".join(body) + "\n"))
        i = end + 1
    return found


def _neighbour(lines: list[str], index: int, step: int) -> int | None:
    """The index of the nearest non-blank line from ``index`` in direction ``step``."""
    while 0 <= index < len(lines):
        if lines[index].strip():
            return index
        index += step
    return None


def _mark_above(lines: list[str], fence: Fence) -> str:
    """The marker paragraph right above a block (it may wrap over several lines)."""
    last = _neighbour(lines, fence.start - 1, -1)
    if last is None:
        return ""
    first = last
    while first > 0 and lines[first - 1].strip() and not _FENCE.match(lines[first - 1]):
        first -= 1
    text = " ".join(line.strip() for line in lines[first : last + 1])
    return text if text.startswith(MARKS) else ""


def _mark_below(lines: list[str], fence: Fence, starts: set[int]) -> str:
    """A marker below a block counts only when no block follows the marker (the README's
    opening block, which test_readme pins to lines 3-4, has no room above)."""
    below = _neighbour(lines, fence.end + 1, 1)
    if below is None or not lines[below].strip().startswith(MARKS):
        return ""
    last = below
    while last + 1 < len(lines) and lines[last + 1].strip() and not _FENCE.match(lines[last + 1]):
        last += 1
    after = _neighbour(lines, last + 1, 1)
    return "" if after in starts else " ".join(line.strip() for line in lines[below : last + 1])


def parse_page(page: str, text: str) -> list[Block]:
    """The command blocks of ``text``, the page named ``page``, with their markers and outputs."""
    lines = text.splitlines()
    found = fences(lines)
    starts = {f.start for f in found}
    blocks = []
    for n, fence in enumerate(found):
        if fence.lang not in SHELL | PYTHON:
            continue
        expected, example = None, False
        if n + 1 < len(found) and found[n + 1].lang in TEXT:
            between = [s.strip() for s in lines[fence.end + 1 : found[n + 1].start] if s.strip()]
            if not between or (len(between) == 1 and between[0].startswith(EXAMPLE_MARK)):
                expected, example = found[n + 1].code, bool(between)
        mark = _mark_above(lines, fence) or _mark_below(lines, fence, starts)
        blocks.append(Block(page, fence.start + 1, fence.lang, fence.code, mark, expected, example))
    return blocks


# --- comparing outputs --------------------------------------------------------------------

_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+)")
_ACTUAL_NUMBER = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf))"


def _last_digit_unit(written: str) -> float:
    """One unit of the last written digit: 0.001 for ``0.581``, 1e-8 for ``5.8e-07``."""
    mantissa, _, exponent = written.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


def _pattern(expected: str) -> tuple[str, list[str]]:
    """A regex for ``expected`` (``...`` = any text, numbers captured) and the written numbers."""
    parts, numbers = [], []
    pieces = re.split(r"(\.\.\.)", expected)
    for n, piece in enumerate(pieces):
        if piece == "...":
            parts.append(".*?")
            continue
        at = 0
        for number in _NUMBER.finditer(piece):
            parts.append(re.escape(piece[at : number.start()]))
            if number.end() == len(piece) and n + 1 < len(pieces):
                parts.append(re.escape(number.group()) + r"\d*")  # 0.99... is a prefix
            else:
                parts.append(_ACTUAL_NUMBER)
                numbers.append(number.group())
            at = number.end()
        parts.append(re.escape(piece[at:]))
    return "".join(parts), numbers


def _tidy(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


def output_matches(expected: str, actual: str) -> bool:
    """Whether ``actual`` is what ``expected`` shows (rules in the module docstring)."""
    pattern, written = _pattern(_tidy(expected))
    found = re.fullmatch(pattern, _tidy(actual), flags=re.DOTALL)
    if not found:
        return False
    for text, value in zip(written, found.groups(), strict=True):
        want, got = float(text), float(value)
        if not math.isclose(got, want, rel_tol=1e-4, abs_tol=_last_digit_unit(text) * 1.0001):
            return False
    return True


# --- running one page (in its own process) ------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What became of one block: ``passed``, ``failed``, ``skipped`` or ``not run``."""

    status: str
    message: str = ""
    seconds: float = 0.0  # wall time of the block (for a server: its start)


def _check_output(block: Block, printed: str) -> Outcome:
    if (
        block.expected is None
        or block.expected_is_example
        or output_matches(block.expected, printed)
    ):
        return Outcome("passed")
    return Outcome("failed", f"printed:\n{printed}\n--- but the page shows:\n{block.expected}")


def _run_shell(block: Block, env: dict[str, str], slow: bool) -> Outcome:
    try:
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", block.code],
            env=env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S[slow],
        )
    except subprocess.TimeoutExpired as stopped:
        return Outcome("failed", f"still running after {stopped.timeout} s")
    if done.returncode != 0:
        return Outcome(
            "failed",
            f"exit status {done.returncode}\n--- stdout:\n{done.stdout}\n--- stderr:\n"
            f"{done.stderr[-6000:]}",
        )
    return _check_output(block, done.stdout)


_ARROW = re.compile(r"#\s*->\s*(.*)$")


def _arrow(lines: list[str], end: int) -> str | None:
    """The ``# -> VALUE`` of a statement ending on (0-based) line ``end``, if any."""
    for index in (end, end + 1):
        if index >= len(lines):
            return None
        line = lines[index]
        if index == end + 1 and not line.lstrip().startswith("#"):
            return None
        found = _ARROW.search(line)
        if found:
            return re.split(r"\s{2,}", found.group(1).strip())[0]
    return None


def _run_python(block: Block, namespace: dict[str, Any]) -> Outcome:
    """Runs the block statement by statement; checks each ``# -> VALUE``."""
    lines = block.code.splitlines()
    name = block.id
    printed = io.StringIO()
    try:
        tree = ast.parse(block.code, filename=name)
        ast.increment_lineno(tree, block.line)
        for statement in tree.body:
            want = _arrow(lines, statement.end_lineno - block.line - 1)
            with contextlib.redirect_stdout(printed):
                if isinstance(statement, ast.Expr):
                    code = compile(ast.Expression(statement.value), name, "eval")
                    value = eval(code, namespace)
                else:
                    exec(compile(ast.Module([statement], []), name, "exec"), namespace)
                    value = None
            if want is not None and not output_matches(want, repr(value)):
                return Outcome(
                    "failed", f"line {statement.end_lineno}: gives {value!r}, the page says {want}"
                )
    except BaseException:  # any failure of a snippet, SystemExit included, is its test's
        return Outcome("failed", traceback.format_exc(limit=-8))
    return _check_output(block, printed.getvalue())


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@dataclass(frozen=True)
class Server:
    """A server block running in the background, its log and how its start went."""

    block: Block
    process: subprocess.Popen[bytes]
    log: Any  # the temporary file holding its stdout and stderr
    started: Outcome


def _start_server(block: Block, env: dict[str, str]) -> Server:
    """Starts the block in its own process group; waits until its port answers or it exits."""
    found = re.search(r"--port (\d+)", block.code)
    port = int(found.group(1)) if found else 7860  # lxmert-demo's default
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by _stop_server
    process = subprocess.Popen(
        ["bash", "-c", block.code],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + SERVER_START_S
    while process.poll() is None and time.monotonic() < deadline and not _answers(port):
        time.sleep(0.5)
    if process.poll() is None and _answers(port):
        return Server(block, process, log, Outcome("passed"))
    why = f"exited with {process.returncode}" if process.poll() is not None else "never answered"
    return Server(block, process, log, Outcome("failed", f"the server {why} on port {port}"))


def _stop_server(server: Server) -> Outcome:
    """Ctrl-C to the server's process group; it must exit 130. Its log goes with a failure."""
    outcome = server.started
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGINT)
        try:
            server.process.wait(SERVER_STOP_S)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()
            outcome = Outcome("failed", f"still running {SERVER_STOP_S} s after Ctrl-C")
    if outcome.status == "passed" and server.process.returncode != 130:
        outcome = Outcome("failed", f"exit status {server.process.returncode} after Ctrl-C")
    server.log.seek(0)
    said = server.log.read().decode(errors="replace")[-6000:]
    server.log.close()
    if outcome.status == "passed":
        return outcome
    return Outcome("failed", f"{outcome.message}; it said:\n{said}")


def run_page(page: str, text: str, slow: bool) -> dict[str, Outcome]:
    """Runs the blocks of ``text`` (the page named ``page``) in order in the current directory;
    slow blocks only if ``slow``."""
    env = dict(os.environ)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    outcomes: dict[str, Outcome] = {}
    servers: list[Server] = []
    seconds: dict[str, float] = {}
    try:
        for block in parse_page(page, text):
            start = time.monotonic()
            if block.kind == "skip" or (block.kind == "slow" and not slow):
                outcomes[block.id] = Outcome("not run", block.mark)
            elif block.kind == "server":
                servers.append(_start_server(block, env))
            elif block.lang in PYTHON:
                outcomes[block.id] = _run_python(block, namespace)
            else:
                outcomes[block.id] = _run_shell(block, env, slow)
            seconds[block.id] = round(time.monotonic() - start, 2)
    finally:
        for server in servers:
            outcomes[server.block.id] = _stop_server(server)
    return {key: replace(value, seconds=seconds.get(key, 0.0)) for key, value in outcomes.items()}


def _runner_main(page: str, text: Path, slow: bool, results: Path) -> None:
    outcomes = run_page(page, text.read_text(), slow)
    results.write_text(json.dumps({key: vars(value) for key, value in outcomes.items()}))


# --- the tests ---------------------------------------------------------------------------

#: Loads this file as ``__main__`` in the page's process (``python tests/test_docs.py`` would put
#: tests/ first on sys.path, where tests/pipeline would shadow the pipeline package).
RUNNER = "import runpy, sys; runpy.run_path(sys.argv.pop(1), run_name='__main__')"


def _isolated() -> list[str]:
    """``unshare`` words for a private network namespace with loopback up, or [] where the
    machine cannot make one (then the page runs on the host's network)."""
    words = ["unshare", "--user", "--map-root-user", "--net"]
    up = ["sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    if not shutil.which("unshare") or not shutil.which("ip"):
        return []
    probe = subprocess.run([*words, *up, "true"], capture_output=True, check=False)
    return [*words, *up] if probe.returncode == 0 else []


def _run_page_process(page: str, slow: bool, tmp: Path, isolate: list[str]) -> dict[str, Outcome]:
    work = tmp / "work"
    shutil.copytree(ROOT / "examples", work / "examples")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HOME": str(tmp / "hf"),
        "XDG_CACHE_HOME": str(tmp / "cache"),
    }
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "LXMERT_PIPELINE_WEIGHTS", "PYTHONPATH"):
        env.pop(name, None)
    results, text = tmp / "results.json", tmp / "page.md"
    text.write_text(TEXTS[page])  # the text the tests were collected from, though it may change
    command = [*isolate, sys.executable, "-c", RUNNER, __file__, page, str(text)]
    try:
        done = subprocess.run(
            [*command, "slow" if slow else "fast", str(results)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=PAGE_TIMEOUT_S[slow],
        )
        said = f"exit status {done.returncode}:\n{done.stderr[-6000:]}"
    except subprocess.TimeoutExpired as stopped:
        said = f"still running after {stopped.timeout} s"
    if not results.exists():  # every block of the page fails with the page's process
        failed = Outcome("failed", f"{page}: the page's process failed, {said}")
        return {block.id: failed for block in parse_page(page, TEXTS[page])}
    return {key: Outcome(**value) for key, value in json.loads(results.read_text()).items()}


PageRuns = Callable[[str, bool], dict[str, Outcome]]


@pytest.fixture(scope="session")
def page_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PageRuns]:
    """``(page, slow) -> outcomes``: each page runs once per session, when first asked."""
    done: dict[tuple[str, bool], dict[str, Outcome]] = {}
    isolate = _isolated()

    def run(page: str, slow: bool) -> dict[str, Outcome]:
        if (page, slow) not in done:
            tmp = tmp_path_factory.mktemp(re.sub(r"\W", "-", page))
            done[page, slow] = _run_page_process(page, slow, tmp, isolate)
        return done[page, slow]

    yield run


def _params() -> list[Any]:
    params = []
    for page in PAGES:
        for block in parse_page(page, TEXTS[page]):
            marks = [pytest.mark.slow] if block.kind == "slow" else []
            params.append(pytest.param(block, id=block.id, marks=marks))
    return params


@pytest.mark.parametrize("block", _params())
def test_block(block: Block, page_runs: PageRuns) -> None:
    if block.kind == "skip":
        pytest.skip(block.mark.strip("*"))
    outcome = page_runs(block.page, block.kind == "slow")[block.id]
    assert outcome.status == "passed", f"{block.id}:\n{block.code}\n{outcome.message}"


def indented_code(lines: list[str]) -> list[int]:
    """0-based lines that open an indented code block: after a blank line, four spaces more
    than the text of the list item they are in (fenced blocks' own lines excluded)."""
    inside = {n for f in fences(lines) for n in range(f.start, f.end + 1)}
    found, item_indent, blank = [], 0, True
    for n, line in enumerate(lines):
        if n in inside or not line.strip():
            blank = blank or not line.strip()
            continue
        indent = len(line) - len(line.lstrip(" "))
        item = re.match(r"( *)(?:[-*+]|\d+[.)]) +", line)
        if blank and indent >= item_indent + 4 and not (item and indent < item_indent + 4):
            found.append(n)
        elif item:
            item_indent = len(item.group(0))
        elif indent == 0:
            item_indent = 0
        blank = False
    return found


@pytest.mark.parametrize("page", PAGES)
def test_every_block_is_fenced_with_a_known_language(page: str) -> None:
    lines = TEXTS[page].splitlines()
    unnamed = [f"{page}:{f.start + 1} ({f.lang or 'no language'})" for f in fences(lines)]
    unnamed = [
        u
        for u, f in zip(unnamed, fences(lines), strict=True)
        if f.lang not in SHELL | PYTHON | TEXT
    ]
    indented = [f"{page}:{n + 1} (indented code block)" for n in indented_code(lines)]
    assert not unnamed + indented


#: A skip marker that names where the same block runs: ``[text](PAGE) runs this same block``.
_RUN_THERE = re.compile(r"\]\(([\w./-]+\.md)[^)]*\) runs this\s+same block")


def test_a_block_run_on_another_page_runs_there() -> None:
    """A block skipped because another page runs it (README's demo server, run and used by
    docs/web.md) is there, the same code, run by these tests."""
    checked = []
    for page in PAGES:
        for block in parse_page(page, TEXTS[page]):
            there = _RUN_THERE.search(block.mark)
            if block.kind != "skip" or there is None:
                continue
            other = os.path.normpath(os.path.join(os.path.dirname(page), there.group(1)))
            assert other in TEXTS, f"{block.id}: no page {other}"
            runs = [b for b in parse_page(other, TEXTS[other]) if b.code == block.code]
            assert any(b.kind in ("run", "server") for b in runs), f"{block.id}: not run in {other}"
            checked.append(block.id)
    assert checked, "no block is marked as run on another page; README's demo server was"


def test_the_parser_reads_markers_and_outputs() -> None:
    """A marker above, a marker below an opening block, an output and an example output."""
    page = (
        "# t\n```bash\necho a\n```\n*Not run by the tests: it is\nan example.*\n\n"
        "Text.\n\n*Slow (trains for\nminutes): run by `pytest -m slow`.*\n```python\nx = 1\n```\n\n"
        "```bash\necho b\n```\n```text\nb\n```\n\n```bash\necho c\n```\n"
        "*Example output (varies by CPU).*\n```text\nc\n```\n"
    )
    blocks = parse_page("p.md", page)
    assert [(b.line, b.kind, b.expected, b.expected_is_example) for b in blocks] == [
        (2, "skip", None, False),
        (12, "slow", None, False),
        (16, "run", "b\n", False),
        (23, "run", "c\n", True),
    ]
    assert blocks[0].mark == "*Not run by the tests: it is an example.*"


def test_outputs_match_within_the_last_written_digit() -> None:
    assert output_matches("yellow (1.000), no (0.000)", "yellow (0.9996), no (0.0004)")
    assert not output_matches("yellow (1.000), no (0.000)", "yellow (0.998), no (0.002)")
    assert output_matches("[('no', 5.8e-07)]", "[('no', 5.84e-07)]")
    assert not output_matches("[('no', 5.8e-07)]", "[('no', 5.95e-07)]")
    assert output_matches("('circle', 0.99...)", "('circle', 0.99731)")
    assert not output_matches("('circle', 0.99...)", "('circle', 0.98731)")
    assert output_matches("region 0  [63, 211]\n...\nend", "region 0  [63, 211]  \nx\ny\nend")
    assert not output_matches("region 0  [63, 211]", "region 0  [63, 212]")


if __name__ == "__main__":
    _runner_main(sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "slow", Path(sys.argv[4]))
