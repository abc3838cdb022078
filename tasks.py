#!/usr/bin/env python3
"""Set up .venv and run the project's jobs; needs only Python 3.10+ and pip.

    python3 tasks.py demo    # main job on the shipped shapes-world models (examples/)
    python3 tasks.py test    # ruff, mypy, pylint's duplicate-code check and the test suite (CI)
    python3 tasks.py duplicates  # only the duplicate-code check (pylint R0801)
    python3 tasks.py bench   # quick detector benchmark (prints JSON)
    python3 tasks.py screenshot  # docs/demo.png: the web page in headless Chromium
    python3 tasks.py wheel   # build the wheel, install it into another environment, run it
    python3 tasks.py setup   # only create/refresh .venv

The venv is reinstalled when requirements*.txt or setup.py change (a stamp file records a hash).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import venv
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".lxmert-pipeline-installed"
INSTALL_INPUTS = (
    "requirements.txt",
    "requirements-ray.txt",
    "requirements-web.txt",
    "requirements-test.txt",
    "requirements-formats.txt",
    "setup.py",
)
#: Packages mypy checks in `test` (settings in pyproject.toml), and pylint's duplicate check.
TYPED_PACKAGES = ("detector", "encoder", "pipeline", "weights", "shapesworld")
#: What mypy checks besides: the benchmark scripts, which no test runs (an API change broke
#: one unseen).
TYPED_SCRIPTS = ("benchmarks",)


def run(*command: str | os.PathLike[str]) -> None:
    print(f"+ {printable(command)}", flush=True)
    result = subprocess.run([str(part) for part in command], cwd=ROOT)
    if result.returncode != 0:
        sys.exit(result.returncode)


def install_hash() -> str:
    digest = hashlib.sha256()
    for name in INSTALL_INPUTS:
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def setup() -> None:
    python = BIN / "python"
    if not python.exists():
        print(f"+ creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = install_hash()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    run(python, "-m", "pip", "install", "--quiet", "--upgrade", "pip", "setuptools")
    # Every requirement file in ONE pip call: the resolver sees all pins together, and no later
    # call can silently downgrade what an earlier one installed.
    run(
        python,
        "-m",
        "pip",
        "install",
        "--quiet",
        "-r",
        "requirements.txt",
        "-r",
        "requirements-ray.txt",
        "-r",
        "requirements-web.txt",
        "-r",
        "requirements-test.txt",
        "-r",
        "requirements-formats.txt",
    )
    run(python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "-e", ".")
    STAMP.write_text(wanted)


def demo() -> None:
    setup()
    (ROOT / "out").mkdir(exist_ok=True)
    run(
        BIN / "extract_features",
        "examples/",
        "--out",
        "out/examples.h5",
        "--detector",
        "shapes-detector",
        "--overwrite",
    )
    run(
        BIN / "answer",
        "examples/scene_000.png",
        "what color is the circle?",
        "--top-k",
        "3",
        "--detector",
        "shapes-detector",
        "--encoder",
        "shapes-lxmert",
    )


def ensure_chromium() -> None:
    """Install Debian's chromium for the browser test when missing and we may (root + apt).

    Elsewhere the browser test skips with a reason that says how to install it.
    """
    if shutil.which("chromium") or shutil.which("chromium-browser"):
        return
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("apt-get"):
        print("+ no chromium, and not root with apt-get: the browser test skips", flush=True)
        return
    run("apt-get", "update", "-qq")
    run("apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium")


def test() -> None:
    setup()
    ensure_chromium()
    run(BIN / "ruff", "check", ".")
    run(BIN / "ruff", "format", "--check", ".")
    # mypy (a minute of one core on a fresh clone) and pylint's duplicate check (10 s) run
    # beside pytest, whose workers use the cores they leave, and say their results after it.
    beside: dict[str, list[Path | str]] = {
        "mypy": [BIN / "mypy", *TYPED_PACKAGES, *TYPED_SCRIPTS],
        "duplicates": [BIN / "python", __file__, "duplicates"],
    }
    # One worker per core, at most 4 (each imports torch: about 1 GB). Whole files per worker
    # (loadfile): a file's module fixtures are made once, and the docs pages, two of which start
    # a server on the same default port, run one after another. (xdist's loadgroup cannot mark
    # groups under pytest 9, whose node ids xdist 3.8 no longer rewrites.)
    workers = min(os.cpu_count() or 1, 4)
    parallel = ["-n", str(workers), "--dist", "loadfile", "--no-loadscope-reorder"]
    # ... in the order tests/conftest.py gives: the files of 10 s or more first.
    pytest: list[Path | str] = [
        BIN / "python",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--durations=25",
    ]
    failed = run_beside(beside, [*pytest, *(parallel if workers > 1 else [])])
    if failed:
        print(f"+ failed: {', '.join(failed)}", flush=True)
        sys.exit(failed.get("pytest") or next(iter(failed.values())))


def run_beside(beside: dict[str, list[Path | str]], main: list[Path | str]) -> dict[str, int]:
    """Run ``main`` with the commands of ``beside`` started first: ``main``'s output goes to
    the terminal as it comes, theirs after it, each under its command line. Returns the exit
    status of each that failed, by name (``main`` as ``pytest``); Ctrl-C or an error stops
    them all, with the processes they started."""
    import contextlib
    import tempfile

    started: dict[str, subprocess.Popen[bytes]] = {}
    with contextlib.ExitStack() as files:
        logs = {name: files.enter_context(tempfile.TemporaryFile("w+")) for name in beside}
        try:
            for name, command in beside.items():
                # A session of its own: stopped with what it started (duplicates -> pylint).
                started[name] = subprocess.Popen(
                    command, cwd=ROOT, stdout=logs[name], stderr=logs[name], start_new_session=True
                )
            print(f"+ {printable(main)}  (beside it: {', '.join(beside)})", flush=True)
            status = subprocess.run(main, cwd=ROOT).returncode
            failed = {"pytest": status} if status != 0 else {}
            for name, process in started.items():
                print(f"+ {printable(beside[name])}", flush=True)
                process.wait()
                logs[name].seek(0)
                print(logs[name].read(), end="", flush=True)
                if process.returncode != 0:
                    failed[name] = process.returncode
            return failed
        finally:
            for process in started.values():  # still running only after Ctrl-C or an error
                if process.poll() is None:
                    if os.name == "posix":
                        os.killpg(process.pid, signal.SIGKILL)  # pylint's child with it
                    else:
                        process.kill()
                    process.wait()


def printable(command: Sequence[object]) -> str:
    return " ".join(str(part) for part in command)


def duplicates() -> None:
    """pylint's duplicate-code check (R0801) over the packages: 8 similar lines or more,
    imports and docstrings ignored ([tool.pylint.similarities] in pyproject.toml). Fails on
    any pair of modules not listed, with its reason, in [tool.lxmert-pipeline.duplicate-code];
    runs in .venv's Python, whose TOML reader it needs."""
    setup()
    if Path(sys.executable).resolve() != (BIN / "python").resolve():
        run(BIN / "python", __file__, "duplicates")
        return
    import json

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pytest's own dependency reads TOML there
        import tomli as tomllib  # type: ignore[no-redef]

    print(f"+ pylint duplicate-code over {' '.join(TYPED_PACKAGES)}", flush=True)
    found = subprocess.run(
        [
            BIN / "pylint",
            "--disable=all",
            "--enable=duplicate-code",
            "--output-format=json2",
            # The check compares lines; astroid's inference into the modules the packages
            # import (gradio, torch, ...) only costs time: 3.5 of 3.7 minutes, same findings.
            f"--ignored-modules={','.join(imported_from_outside())}",
            *TYPED_PACKAGES,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    # pylint's exit status is a bit field: 1 fatal, 32 usage error; 8 is a finding (R0801).
    if found.returncode & (1 | 32) or not found.stdout.strip():
        sys.exit(f"pylint failed (exit {found.returncode}):\n{found.stderr}")
    messages = json.loads(found.stdout)["messages"]
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    accepted = {
        tuple(sorted(entry["modules"])): entry["reason"]
        for entry in config["tool"]["lxmert-pipeline"]["duplicate-code"]["accepted"]
    }
    seen: set[tuple[str, ...]] = set()
    refused = []
    for message in messages:
        modules = sorted(set(re.findall(r"^==([\w.]+):\[", message["message"], re.MULTILINE)))
        pairs = set(itertools.combinations(modules, 2))
        seen |= pairs
        if pairs - accepted.keys():
            refused.append(message["message"])
    for pair in sorted(accepted.keys() - seen):
        print(f"+ note: {' and '.join(pair)} are no longer similar; remove their entry", flush=True)
    if refused:
        print("\n\n".join(refused))
        sys.exit(
            f"{len(refused)} duplicate-code finding(s) above: put the shared lines in one place, "
            "or list the pair with its reason under [tool.lxmert-pipeline.duplicate-code] in "
            "pyproject.toml"
        )
    print(f"+ duplicate-code: {len(messages)} finding(s), all accepted", flush=True)


def imported_from_outside() -> list[str]:
    """Every module (dotted, and each package above it) that the packages import by absolute
    name from outside themselves: the standard library's and the dependencies'."""
    import ast

    names: set[str] = set()
    for package in TYPED_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names.add(node.module)
    parents = {name.rsplit(".", up)[0] for name in names for up in range(1, name.count(".") + 1)}
    return sorted(name for name in names | parents if name.partition(".")[0] not in TYPED_PACKAGES)


def screenshot() -> None:
    """docs/demo.png: the web page (lxmert-demo, shapes models) in headless Chromium."""
    setup()
    ensure_chromium()
    run(BIN / "python", "-m", "pipeline.web.browser", "docs/demo.png")


def bench() -> None:
    setup()
    run(BIN / "python", "benchmarks/bench_detector.py", "--quick")


def wheel() -> None:
    """The README's second way to install: a built wheel into an environment that already
    has torch. The wheel goes with --no-deps into a new venv that sees .venv's packages (the
    tested lock, pip and setuptools included: the venv has none of its own) and nothing of
    this checkout; answer and extract_features then run on the shipped shapes models from
    another folder, and pip check must be clean there."""
    import tempfile

    setup()
    work = Path(tempfile.mkdtemp(prefix="lxmert-wheel-"))
    try:
        _install_wheel_and_run(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _install_wheel_and_run(work: Path) -> None:
    python = BIN / "python"
    # setuptools builds in ./build and would reuse what an older build left there.
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    run(
        python,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        work / "dist",
        ".",
    )
    built = sorted((work / "dist").glob("lxmert_pipeline-*.whl"))
    env = work / "env"
    venv.EnvBuilder(with_pip=False).create(env)
    env_bin = env / BIN.name
    lock_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    env_site = subprocess.run(
        [env_bin / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # The existing environment: .venv's packages (torch & co) behind the new venv's own.
    Path(env_site, "lock-environment.pth").write_text(lock_site + "\n")
    run(
        python,
        "-m",
        "pip",
        "--python",
        env_bin / "python",
        "install",
        "--quiet",
        "--no-deps",
        *built,
    )
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    image = elsewhere / "scene.png"
    shutil.copyfile(ROOT / "examples" / "scene_000.png", image)
    shapes = ("--detector", "shapes-detector", "--device", "cpu")
    for command in (
        [
            env_bin / "answer",
            image,
            "what color is the circle?",
            *shapes,
            "--encoder",
            "shapes-lxmert",
        ],
        [env_bin / "extract_features", image, "--out", elsewhere / "x.tsv", "-q", *shapes],
        [env_bin / "python", "-m", "pip", "check"],
    ):
        printable = " ".join(str(part) for part in command)
        print(f"+ (in {elsewhere}) {printable}", flush=True)
        done = subprocess.run([str(part) for part in command], cwd=elsewhere)
        if done.returncode != 0:
            sys.exit(done.returncode)
    where = subprocess.run(
        [env_bin / "python", "-c", "import pipeline; print(pipeline.__file__)"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        check=True,
    ).stdout.strip()
    if not where.startswith(env_site):
        sys.exit(f"the wheel's pipeline was not the one imported: {where}")
    print(f"+ the installed wheel ran from {where}", flush=True)


JOBS = {
    "setup": setup,
    "demo": demo,
    "test": test,
    "duplicates": duplicates,
    "bench": bench,
    "screenshot": screenshot,
    "wheel": wheel,
}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in JOBS:
        sys.exit(f"usage: python3 tasks.py {{{'|'.join(JOBS)}}}")
    JOBS[sys.argv[1]]()
