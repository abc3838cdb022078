"""How long each command takes to answer a usage error, and what it imported first.

Every case runs in fresh interpreters, ``--repeat`` times; the figure is the median wall time
beyond the median of ``python -c pass`` (and, for the checks that need torch: ``--device``,
``--precision`` against a device, beyond ``python -c "import torch"``). Each case also says
which of torch, transformers, gradio and ray were in ``sys.modules`` when the process exited
(recorded by an ``atexit`` hook of a small wrapper around the command's entry function), and
its exit code, which should be 2.

The models are looked for in empty caches (``HF_HOME``, ``XDG_CACHE_HOME`` in a temporary
folder, ``LXMERT_PIPELINE_WEIGHTS`` unset) with ``HF_HUB_OFFLINE=1``: "a model that is not on
this machine", without a network round trip in the figure.

Usage: ``python benchmarks/bench_usage_errors.py [--repeat 3] [--only answer,judge]
[--root DIR] [--markdown]``. ``--root`` runs the commands of another checkout (an export of an
older commit, for a before/after comparison). Never asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench_startup import cpu_model

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "gradio", "ray")
#: Prefix of the wrapper's line on stderr: the heavy modules imported when the process exits.
MARK = "HEAVY-MODULES:"
WRAPPER = f"""\
import atexit, importlib, json, sys
def _said():
    print({MARK!r} + json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)), file=sys.stderr)
atexit.register(_said)
module, function = sys.argv[1].split(":")
sys.exit(getattr(importlib.import_module(module), function)(sys.argv[2:]))
"""


@dataclass(frozen=True)
class Case:
    """One usage error of one command.

    Attributes:
        command: the console script (``answer``), or ``extract_features merge`` for a sub-command.
        error: what is wrong, in words.
        entry: ``module:function`` taking the argument list (the console script's target).
        argv: the arguments; ``{img}`` stands for an existing image, ``{tmp}`` for a folder.
        needs_torch: a check that needs torch (a device): compared with ``import torch``.
    """

    command: str
    error: str
    entry: str
    argv: tuple[str, ...]
    needs_torch: bool = False


EXTRACT = "pipeline.commands.extract:main"
ANSWER = "pipeline.commands.answer:main"
JUDGE = "pipeline.commands.judge:main"
FINETUNE = "pipeline.commands.finetune.command:main"
DEMO = "pipeline.commands.demo:main"
WEIGHTS = "weights.__main__:main"
SHAPES = ("--detector", "shapes-detector", "--encoder", "shapes-lxmert")

CASES: tuple[Case, ...] = (
    Case("extract_features", "unknown flag", EXTRACT, ("{img}", "-o", "{tmp}/o.tsv", "--bogus")),
    Case("extract_features", "bad number", EXTRACT, ("{img}", "-o", "{tmp}/o.tsv", "--boxes", "x")),
    Case("extract_features", "missing input", EXTRACT, ("{tmp}/none.png", "-o", "{tmp}/o.tsv")),
    Case("extract_features", "model not here", EXTRACT, ("{img}", "-o", "{tmp}/o.tsv")),
    Case("extract_features", "bad --out suffix", EXTRACT, ("{img}", "-o", "{tmp}/o.txt")),
    Case(
        "extract_features",
        "--no-clip without --boxes-from",
        EXTRACT,
        ("{img}", "-o", "{tmp}/o.tsv", "--no-clip"),
    ),
    Case(
        "extract_features",
        "--device cuda:9",
        EXTRACT,
        ("{img}", "-o", "{tmp}/o.tsv", "--detector", "shapes-detector", "--device", "cuda:9"),
        needs_torch=True,
    ),
    Case(
        "extract_features merge",
        "missing input",
        EXTRACT,
        ("merge", "{tmp}/a.tsv", "-o", "{tmp}/m.tsv"),
    ),
    Case(
        "extract_features compare",
        "missing input",
        EXTRACT,
        ("compare", "{tmp}/a.tsv", "--features", "{tmp}/b.tsv"),
    ),
    Case(
        "extract_features convert",
        "missing input",
        EXTRACT,
        ("convert", "{tmp}/a.tsv", "--to", "h5", "-o", "{tmp}/b.h5"),
    ),
    Case("answer", "unknown flag", ANSWER, ("{img}", "q?", "--bogus")),
    Case("answer", "bad number", ANSWER, ("{img}", "q?", "-k", "x")),
    Case("answer", "missing image", ANSWER, ("{tmp}/none.png", "q?", *SHAPES)),
    Case("answer", "missing questions file", ANSWER, ("--questions", "{tmp}/none.jsonl", *SHAPES)),
    Case("answer", "two models not here", ANSWER, ("{img}", "q?")),
    Case("answer", "encoder not here", ANSWER, ("{img}", "q?", "--detector", "shapes-detector")),
    Case("answer", "--device cuda:9", ANSWER, ("{img}", "q?", *SHAPES, "--device", "cuda:9"), True),
    Case(
        "answer",
        "--precision fp16 on cpu",
        ANSWER,
        ("{img}", "q?", *SHAPES, "--device", "cpu", "--precision", "fp16"),
        True,
    ),
    Case("judge", "unknown flag", JUDGE, ("{img}", "{img}", "s", "--bogus")),
    Case("judge", "bad number", JUDGE, ("{img}", "{img}", "s", "--top-k", "3")),
    Case(
        "judge",
        "missing image",
        JUDGE,
        (
            "{img}",
            "{tmp}/none.png",
            "s",
            "--detector",
            "shapes-detector",
            "--encoder",
            "shapes-nlvr2",
        ),
    ),
    Case("judge", "two models not here", JUDGE, ("{img}", "{img}", "s", "--encoder", "lxmert-vqa")),
    Case(
        "judge",
        "--device cuda:9",
        JUDGE,
        (
            "{img}",
            "{img}",
            "s",
            "--detector",
            "shapes-detector",
            "--encoder",
            "shapes-nlvr2",
            "--device",
            "cuda:9",
        ),
        True,
    ),
    Case("lxmert-finetune", "required flags missing", FINETUNE, ("train", "--bogus")),
    Case(
        "lxmert-finetune",
        "missing input",
        FINETUNE,
        (
            "train",
            "--task",
            "vqa",
            "--from",
            "shapes-lxmert",
            "--train",
            "{tmp}/none.json",
            "--features",
            "{tmp}/none.tsv",
            "--out",
            "{tmp}/model",
        ),
    ),
    Case("lxmert-finetune", "bad number", FINETUNE, ("train", "--epochs", "x")),
    Case("lxmert-demo", "unknown flag", DEMO, ("--bogus",)),
    Case("lxmert-demo", "bad number", DEMO, ("--port", "x")),
    Case("lxmert-demo", "missing folder", DEMO, ("--examples", "{tmp}/none")),
    Case(
        "lxmert-demo",
        "two models not here",
        DEMO,
        ("--detector", "vg-r101-c4-attr", "--encoder", "lxmert-vqa"),
    ),
    Case(
        "lxmert-demo",
        "--device cuda:9",
        DEMO,
        ("--detector", "shapes-detector", "--encoder", "shapes-lxmert", "--device", "cuda:9"),
        True,
    ),
    Case("python -m weights", "unknown flag", WEIGHTS, ("list", "--bogus")),
    Case("python -m weights", "unknown name", WEIGHTS, ("path", "no-such-model")),
    Case("python -m weights", "model not here", WEIGHTS, ("path", "vg-r101-c4-attr")),
)


@dataclass(frozen=True)
class Result:
    """What :func:`measure` found for one case: median seconds, exit code, heavy modules
    imported, the error's first line."""

    case: Case
    seconds: float
    returncode: int
    heavy: tuple[str, ...]
    message: str


def wall_of(argv: list[str], *, cwd: Path, env: dict[str, str]) -> tuple[float, str, int]:
    """Seconds one process takes, its stderr and its exit code."""
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    return time.perf_counter() - start, done.stderr, done.returncode


def run_case(case: Case, *, root: Path, env: dict[str, str], tmp: Path, repeat: int) -> Result:
    """The median of ``repeat`` fresh runs of ``case``."""
    image = root / "examples" / "scene_000.png"
    argv = [arg.format(img=image, tmp=tmp) for arg in case.argv]
    command = [sys.executable, "-c", WRAPPER, case.entry, *argv]
    runs = [wall_of(command, cwd=root, env=env) for _ in range(repeat)]
    stderr, returncode = runs[-1][1], runs[-1][2]
    marked = [line for line in stderr.splitlines() if line.startswith(MARK)]
    heavy = tuple(json.loads(marked[-1][len(MARK) :])) if marked else ("?",)
    said = [line for line in stderr.splitlines() if "error" in line and not line.startswith(MARK)]
    return Result(
        case=case,
        seconds=statistics.median(seconds for seconds, _, _ in runs),
        returncode=returncode,
        heavy=heavy,
        message=(said[0] if said else stderr.strip().splitlines()[0] if stderr.strip() else "")[
            :110
        ],
    )


def clean_env(tmp: Path) -> dict[str, str]:
    """The environment of every run: empty caches, offline, no weights folder."""
    env = {k: v for k, v in os.environ.items() if k not in ("LXMERT_PIPELINE_WEIGHTS",)}
    env.update(
        HF_HOME=str(tmp / "hf"),
        XDG_CACHE_HOME=str(tmp / "cache"),
        HF_HUB_OFFLINE="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        env.pop(var, None)
    return env


def measure(root: Path, repeat: int, only: set[str]) -> dict[str, object]:
    """Both references and every selected case, as one JSON-ready record."""
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        env = clean_env(tmp)

        def reference(code: str) -> float:
            runs = [wall_of([sys.executable, "-c", code], cwd=root, env=env) for _ in range(repeat)]
            return statistics.median(seconds for seconds, _, _ in runs)

        python_s, torch_s = reference("pass"), reference("import torch")
        chosen = [c for c in CASES if not only or c.command.split()[0] in only]
        results = [run_case(c, root=root, env=env, tmp=tmp, repeat=repeat) for c in chosen]
    return {
        "root": str(root),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "repeat": repeat,
        "python_pass_s": round(python_s, 3),
        "import_torch_s": round(torch_s, 3),
        "cases": [
            {
                "command": r.case.command,
                "error": r.case.error,
                "needs_torch": r.case.needs_torch,
                "exit": r.returncode,
                "seconds": round(r.seconds, 3),
                "beyond_python_s": round(r.seconds - python_s, 3),
                "beyond_torch_s": round(r.seconds - torch_s, 3) if r.case.needs_torch else None,
                "heavy_imported": list(r.heavy),
                "message": r.message,
            }
            for r in results
        ],
    }


def markdown(record: dict[str, object]) -> str:
    """The record as a Markdown table (for RESULTS.md)."""
    lines = [
        f"CPU {record['cpu']}, {record['cores']} cores, load {record['load_before']} -> "
        f"{record['load_after']}; median of {record['repeat']}; `python -c pass` "
        f"{record['python_pass_s']} s, `import torch` {record['import_torch_s']} s.",
        "",
        "| command | usage error | exit | s beyond python | s beyond torch | heavy modules |",
        "|---|---|---|---|---|---|",
    ]
    for case in record["cases"]:  # type: ignore[attr-defined]
        beyond_torch = "" if case["beyond_torch_s"] is None else f"{case['beyond_torch_s']:.2f}"
        heavy = ", ".join(case["heavy_imported"]) or "none"
        lines.append(
            f"| {case['command']} | {case['error']} | {case['exit']} | "
            f"{case['beyond_python_s']:.2f} | {beyond_torch} | {heavy} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (default: 3)")
    parser.add_argument("--only", default="", help="comma list of commands (first word)")
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose code runs")
    parser.add_argument("--markdown", action="store_true", help="a Markdown table, not JSON")
    args = parser.parse_args()
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    record = measure(args.root.resolve(), args.repeat, only)
    print(markdown(record) if args.markdown else json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
