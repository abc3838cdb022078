"""Proposals, selection and extract_features give the same bytes with numpy's and torch's SIMD
kernels switched off as with them on.

Each case runs tests/detector/simd_child.py twice: once unlimited, once with
``NPY_DISABLE_CPU_FEATURES`` naming every dispatch group this CPU has (numpy 2.4 names:
``X86_V3`` for AVX2, ``X86_V4``/``AVX512_*`` for AVX-512) and ``ATEN_CPU_CAPABILITY=default``.
The child asserts the limits hold before computing anything. Where the CPU has no group beyond
numpy's baseline there is nothing to switch off, and the tests skip: they can only fail on a
CPU with AVX2 or better (on today's numpy, float32 sorts and ``exp`` differ there).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("simd_child.py")
#: numpy's SIMD groups beyond its baseline that this CPU has (and numpy would use).
GROUPS = [group for group in __cpu_dispatch__ if __cpu_features__.get(group)]
#: Example scenes whose boxes tie: with numpy 2.4's AVX2 sorts on and off, the code before the
#: reference sort chose other boxes (or the same in another order) on each of these.
TIED_SCENES = ("scene_001.png", "scene_002.png", "scene_003.png", "scene_005.png")

pytestmark = pytest.mark.skipif(
    not GROUPS, reason="no numpy SIMD group beyond the baseline on this CPU: nothing to switch off"
)


def run_child(*args: str, limited: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NPY_DISABLE_CPU_FEATURES",)}
    env.pop("ATEN_CPU_CAPABILITY", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if limited:
        env["NPY_DISABLE_CPU_FEATURES"] = " ".join(GROUPS)
        env["ATEN_CPU_CAPABILITY"] = "default"
    result = subprocess.run(
        [sys.executable, str(CHILD), *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_proposals_and_selection_do_not_depend_on_simd(tmp_path: Path) -> None:
    """caffe_proposals, select_bottom_up and the attribute softmax on tie-heavy inputs, and
    apply_deltas (Detectron2's proposals, max-class boxes)."""
    outputs = {}
    for limited in (False, True):
        path = tmp_path / f"limited_{limited}.npz"
        run_child("synthetic", str(path), limited=limited)
        outputs[limited] = dict(np.load(path))
    assert outputs[False].keys() == outputs[True].keys()
    assert (outputs[False]["proposal_logits_0"] > 16.6).sum() > 50  # ties are really there
    for name, unlimited in outputs[False].items():
        limited = outputs[True][name]
        assert unlimited.dtype == limited.dtype and unlimited.tobytes() == limited.tobytes(), name


def test_extract_features_does_not_depend_on_simd(tmp_path: Path) -> None:
    """extract_features with the shapes detector (bottom-up selection) on scenes whose boxes
    tie: the TSV is byte-identical."""
    images = [str(ROOT / "examples" / name) for name in TIED_SCENES]
    written = {}
    for limited in (False, True):
        path = tmp_path / f"limited_{limited}.tsv"
        run_child("extract", str(path), *images, limited=limited)
        written[limited] = path.read_bytes()
    assert written[False].count(b"\n") == len(TIED_SCENES)
    assert written[False] == written[True]
