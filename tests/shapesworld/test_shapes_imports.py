"""Which shapes-world modules load which: scenes are data (no questions), evaluation never loads
the training code, and neither loads transformers before it is needed."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _loaded_after(module: str) -> set[str]:
    """The module names in ``sys.modules`` after importing ``module`` in a fresh interpreter."""
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("shapesworld.scenes", {"shapesworld.questions", "shapesworld.records"}),
        ("shapesworld.evaluate", {"shapesworld.train", "transformers"}),
        ("shapesworld.train", {"transformers", "encoder"}),
    ],
)
def test_import_does_not_load(module: str, absent: set[str]) -> None:
    loaded = _loaded_after(module)
    assert module in loaded
    assert not absent & loaded
