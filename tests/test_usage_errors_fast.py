"""Usage errors are said before torch, transformers, gradio or Ray is imported (issue 29).

"Fast" is checked without a clock: each command runs in a fresh interpreter through a small
wrapper whose ``atexit`` hook prints which heavy modules are in ``sys.modules`` when the
process ends, after the error was printed. None may be there. The models are looked for in
empty caches, offline (a model "not on this machine"). ``benchmarks/bench_usage_errors.py``
gives the times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGE = str(ROOT / "examples" / "scene_000.png")
HEAVY = ("torch", "transformers", "gradio", "ray")
MARK = "HEAVY-MODULES:"
WRAPPER = f"""\
import atexit, importlib, json, sys
atexit.register(lambda: print({MARK!r} + json.dumps(
    sorted(m for m in {HEAVY!r} if m in sys.modules)), file=sys.stderr))
module, function = sys.argv[1].split(":")
sys.exit(getattr(importlib.import_module(module), function)(sys.argv[2:]))
"""
SHAPES = ["--detector", "shapes-detector", "--encoder", "shapes-lxmert"]


def run_entry(entry: str, argv: list[str], tmp: Path) -> tuple[int, str, list[str]]:
    """Exit code, stderr (without the wrapper's line) and the heavy modules imported by
    ``entry`` (``module:function``) run on ``argv`` in a fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.pop("LXMERT_PIPELINE_WEIGHTS", None)
    env.update(HF_HOME=str(tmp / "hf"), XDG_CACHE_HOME=str(tmp / "cache"), HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, entry, *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = done.stderr.splitlines()
    marked = [line for line in lines if line.startswith(MARK)]
    assert len(marked) == 1, done.stderr
    said = "\n".join(line for line in lines if not line.startswith(MARK))
    return done.returncode, said, json.loads(marked[0][len(MARK) :])


CASES = [
    (
        "pipeline.commands.extract:main",
        [IMAGE, "-o", "{tmp}/o.tsv", "--bogus"],
        "unrecognized arguments",
    ),
    (
        "pipeline.commands.extract:main",
        [IMAGE, "-o", "{tmp}/o.tsv", "--boxes", "x"],
        "invalid positive_int",
    ),
    ("pipeline.commands.answer:main", [IMAGE, "q?", "--bogus"], "unrecognized arguments: --bogus"),
    ("pipeline.commands.answer:main", [IMAGE, "q?", "-k", "x"], "invalid int value: 'x'"),
    ("pipeline.commands.answer:main", ["{tmp}/none.png", "q?", *SHAPES], "none.png: no such file"),
    (
        "pipeline.commands.answer:main",
        [IMAGE, "q?", "--detector", "shapes-detector"],
        "--encoder lxmert-vqa: checkpoint 'lxmert-vqa' (encoder) was not found",
    ),
    (
        "pipeline.commands.answer:main",
        ["--questions", "{tmp}/none.jsonl", *SHAPES],
        "none.jsonl: no such file",
    ),
    (
        "pipeline.commands.judge:main",
        [
            IMAGE,
            "{tmp}/none.png",
            "s",
            "--detector",
            "shapes-detector",
            "--encoder",
            "shapes-nlvr2",
        ],
        "none.png: no such file (right image)",
    ),
    ("pipeline.commands.judge:main", [IMAGE, IMAGE, "s", "--top-k", "3"], "--top-k must be 1"),
    (
        "pipeline.commands.judge:main",
        [IMAGE, IMAGE, "s", "--detector", "shapes-detector", "--encoder", "no-such-model"],
        "'no-such-model' is neither an existing file or directory nor a registered",
    ),
    ("pipeline.commands.demo:main", ["--port", "x"], "invalid positive_int value: 'x'"),
    ("pipeline.commands.demo:main", ["--examples", "{tmp}/none"], "none: not a folder"),
    (
        "pipeline.commands.demo:main",
        ["--encoder", "lxmert-gqa"],
        "--encoder lxmert-gqa: checkpoint 'lxmert-gqa' (encoder) was not found",
    ),
    (
        "weights.__main__:main",
        ["path", "vg-r101-c4-attr"],
        "checkpoint 'vg-r101-c4-attr' (detector) was not found",
    ),
    ("weights.__main__:main", ["path", "no-such-model"], "no-such-model"),
    # extract_features: flags, then inputs, then the model; --device/--precision need torch.
    (
        "pipeline.commands.extract:main",
        ["{tmp}/none.png", "-o", "{tmp}/o.tsv"],
        "input {tmp}/none.png does",
    ),
    (
        "pipeline.commands.extract:main",
        ["@{tmp}/none.txt", "-o", "{tmp}/o.tsv"],
        "none.txt does not exist",
    ),
    (
        "pipeline.commands.extract:main",
        [IMAGE, "-o", "{tmp}/o.tsv"],
        "--detector vg-r101-c4-attr: checkpoint 'vg-r101-c4-attr' (detector) was not found",
    ),
    (
        "pipeline.commands.extract:main",
        [IMAGE, "-o", "{tmp}/o.tsv", "--detector", "{tmp}/none.safetensors"],
        "none.safetensors' is neither an existing file",
    ),
    (
        "pipeline.commands.extract:main",
        [IMAGE, "-o", "{tmp}/o.txt"],
        "unknown format; name it *.tsv",
    ),
    (
        "pipeline.commands.extract:main",
        [IMAGE, "-o", "{tmp}/o.tsv", "--no-clip"],
        "only with --boxes-from",
    ),
    (
        "pipeline.commands.extract:main",
        [IMAGE, "-o", "{tmp}/o.tsv", "--actors", "2"],
        "only apply with",
    ),
    (
        "pipeline.commands.extract:main",
        [IMAGE, "-o", "{tmp}/o.tsv", "--detector", "shapes-detector", "--boxes", "500"],
        "it can give at most 100 boxes",
    ),
    (
        "pipeline.commands.extract:main",
        [IMAGE, "-o", "{tmp}/o.tsv", "--boxes-from", "{tmp}/none.json"],
        "cannot read the boxes file",
    ),
    (
        "pipeline.commands.extract:main",
        ["merge", "{tmp}/a.tsv", "-o", "{tmp}/m.tsv"],
        "a.tsv does not exist",
    ),
    (
        "pipeline.commands.extract:main",
        ["compare", "{tmp}/a.tsv", "--features", "{tmp}/b.tsv"],
        "cannot read the reference",
    ),
    (
        "pipeline.commands.extract:main",
        ["compare", "{tmp}/a.tsv", IMAGE, "--detector", "shapes-detector"],
        "cannot read the reference",
    ),
    (
        "pipeline.commands.extract:main",
        ["convert", "{tmp}/a.tsv", "--to", "h5", "-o", "{tmp}/b.h5"],
        "a.tsv does not exist",
    ),
    # lxmert-finetune: the recipe's defaults and the run folder's layout import no torch.
    (
        "pipeline.commands.finetune.command:main",
        ["train", "--bogus"],
        "the following arguments are required",
    ),
    ("pipeline.commands.finetune.command:main", ["train", "--epochs", "0"], "must be >= 1, got 0"),
    *(
        (
            "pipeline.commands.finetune.command:main",
            [
                "train",
                *("--task", task, "--from", "shapes-lxmert-pretrained", "--out", "{tmp}/run"),
                *("--train", "{tmp}/none.json", "--features", "{tmp}/none.tsv"),
            ],
            "--train {tmp}/none.json: no such file",
        )
        for task in ("vqa", "nlvr2")
    ),
    (
        "pipeline.commands.finetune.command:main",
        [
            "train",
            *("--task", "vqa", "--from", "shapes-lxmert-pretrained", "--out", IMAGE),
            *("--train", "{tmp}/none.json", "--features", "{tmp}/none.tsv"),
        ],
        "is a file; give a directory",
    ),
    (
        "pipeline.commands.finetune.command:main",
        [
            "train",
            *("--task", "vqa", "--from", "no-such-model", "--out", "{tmp}/run"),
            *("--train", IMAGE, "--features", IMAGE),
        ],
        "--from no-such-model: 'no-such-model' is neither an existing file",
    ),
    *(
        (
            "pipeline.commands.finetune.command:main",
            ["evaluate", "--model", "shapes-lxmert", *files],
            "{tmp}/none.json: no such file",
        )
        for files in (
            ("--questions", "{tmp}/none.json", "--features", IMAGE),
            ("--questions", IMAGE, "--features", IMAGE, "--annotations", "{tmp}/none.json"),
        )
    ),
]


@pytest.mark.parametrize(
    ("entry", "argv", "message"), CASES, ids=[f"{e.split(':')[0]}-{m[:24]}" for e, _, m in CASES]
)
def test_a_usage_error_is_said_before_any_heavy_import(
    tmp_path: Path, entry: str, argv: list[str], message: str
) -> None:
    code, said, heavy = run_entry(entry, [a.format(tmp=tmp_path) for a in argv], tmp_path)
    assert code == 2, said
    assert message.format(tmp=tmp_path) in said, said
    assert heavy == [], f"imported before the usage error: {heavy}"


def test_every_missing_model_is_named_in_one_message(tmp_path: Path) -> None:
    """answer with the default detector and encoder, neither on this machine: one error that
    names both, each with where it looked and how to get it, the shipped pair said once."""
    code, said, heavy = run_entry("pipeline.commands.answer:main", [IMAGE, "q?"], tmp_path)
    assert code == 2 and heavy == [], said
    assert said.count("answer: error:") == 1, said
    assert said.startswith("answer: error: 2 models are not on this machine:"), said
    for flag, name in (("--detector", "vg-r101-c4-attr"), ("--encoder", "lxmert-vqa")):
        assert f"{flag} {name}: checkpoint {name!r}" in said, said
        assert f"python -m weights fetch {name}" in said, said
    assert said.count(f"Hugging Face cache {tmp_path / 'hf' / 'hub'}") == 2, said
    assert said.count("--detector PATH") == 1 and said.count("--encoder PATH") == 1, said
    assert said.count("Or try the small shapes-world models") == 1, said


def test_judge_names_both_missing_models(tmp_path: Path) -> None:
    argv = [IMAGE, IMAGE, "s", "--encoder", "lxmert-gqa"]
    code, said, heavy = run_entry("pipeline.commands.judge:main", argv, tmp_path)
    assert code == 2 and heavy == [], said
    assert "--detector vg-r101-c4-attr:" in said and "--encoder lxmert-gqa:" in said, said


def test_extract_features_lists_its_sub_commands_as_they_describe_themselves() -> None:
    """The sub-commands' summaries are in ``pipeline.commands.extract`` twice, so that its --help
    imports none of them: the copies must stay the commands' own."""
    import pipeline.commands.extract

    commands = pipeline.commands.extract.COMMANDS  # imported here, on purpose
    assert {name: c.summary for name, c in commands.items()} == {
        name: summary for name, (_, summary) in pipeline.commands.extract.SUBCOMMANDS.items()
    }


def test_compare_names_a_missing_detector_before_torch(tmp_path: Path) -> None:
    """compare with images checks --detector like the other commands: before the reference is
    read (which needs torch), so a model that is not here is said at once."""
    reference = tmp_path / "ref.tsv"
    reference.write_text("")  # only its name and existence are checked first
    argv = ["compare", str(reference), IMAGE, "--detector", "no-such-detector"]
    code, said, heavy = run_entry("pipeline.commands.extract:main", argv, tmp_path)
    assert code == 2 and heavy == [], said
    assert "--detector no-such-detector: 'no-such-detector' is neither an existing file" in said
