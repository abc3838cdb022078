"""The module paths that moved when pipeline/ was split by concern (issue 28) still work for
one release: each old path is the moved module itself (so private names and monkeypatching
reach the real module), and the old console-script modules still run with ``python -m``."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Old path -> where it lives now.
MOVED = {
    "pipeline.cli": "pipeline.commands.extract",
    "pipeline.answer_cli": "pipeline.commands.answer",
    "pipeline.judge_cli": "pipeline.commands.judge",
    "pipeline.finetune_cli": "pipeline.commands.finetune.command",
    "pipeline.web.cli": "pipeline.commands.demo",
    "pipeline.store": "pipeline.features.store",
    "pipeline.writers": "pipeline.features.output",
    "pipeline.manifest": "pipeline.features.manifest",
    "pipeline.exits": "pipeline.errors",
}


@pytest.mark.parametrize(("old", "new"), sorted(MOVED.items()))
def test_an_old_path_is_the_moved_module(old: str, new: str) -> None:
    assert importlib.import_module(old) is importlib.import_module(new)


def test_each_alias_says_where_the_module_went() -> None:
    for old, new in MOVED.items():
        text = " ".join((ROOT / (old.replace(".", "/") + ".py")).read_text().split())
        assert f"Moved to :mod:`{new}`" in text, old
        assert "keeps the old import path for one release" in text, old


@pytest.mark.parametrize(
    ("module", "prog"),
    [("pipeline.cli", "extract_features"), ("pipeline.answer_cli", "answer")],
)
def test_python_dash_m_of_an_old_console_module_still_runs(module: str, prog: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {prog} ")


def test_the_public_imports_are_unchanged() -> None:
    from pipeline import FeatureStore, Pipeline, answer, judge
    from pipeline.api import Pipeline as ApiPipeline
    from pipeline.features.store import FeatureStore as StoreClass

    assert Pipeline is ApiPipeline and FeatureStore is StoreClass
    assert callable(answer) and callable(judge)
