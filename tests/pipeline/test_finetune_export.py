"""``lxmert-finetune export --format lxmert-original``: a model written in the original
LXMERT's layout loads back to the same logits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.structures import RegionFeatures
from encoder.build import load_encoder
from encoder.original import original_layout
from pipeline.commands.finetune.export import EXPORT_COMMAND
from weights.command import run_command


def _regions(seed: int) -> RegionFeatures:
    rng = np.random.default_rng(seed)
    x1, y1 = rng.uniform(0, 200, 6), rng.uniform(0, 150, 6)
    return RegionFeatures(
        image_id=str(seed),
        image_h=300,
        image_w=400,
        boxes=np.stack([x1, y1, x1 + 50, y1 + 40], axis=1).astype(np.float32),
        features=rng.normal(size=(6, 256)).astype(np.float32),
        objects_id=np.zeros(6, dtype=np.int64),
        objects_conf=np.ones(6, dtype=np.float32),
        attrs_id=np.zeros(6, dtype=np.int64),
        attrs_conf=np.ones(6, dtype=np.float32),
    )


def test_export_of_the_shapes_model_loads_back_to_the_same_logits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "BEST.pth"
    argv = ["shapes-lxmert", "--format", "lxmert-original", str(out), "--data-parallel"]
    assert run_command(EXPORT_COMMAND, argv) == 0
    err = capsys.readouterr().err
    assert "22 answers" in err and "BEST.config.json" in err
    state = torch.load(out, weights_only=True)
    assert "lxrt_encoder.model.module.bert.pooler.dense.weight" in state
    assert original_layout({k.replace("module.", ""): v for k, v in state.items()}) == "qa"
    answers = out.with_suffix(".label2ans.json")
    ours = load_encoder("shapes-lxmert", device="cpu")
    assert ours.answers is not None
    assert tuple(json.loads(answers.read_text())) == ours.answers.answers
    # The name alone: the answers and the head count come from the files beside it.
    back = load_encoder(str(out), device="cpu")
    assert back.model.config.num_attention_heads == 4
    regions = [_regions(1), _regions(2)]
    questions = ["what color is the circle?", "how many squares are there?"]
    with torch.no_grad():
        a = ours.model(**ours.model_inputs(regions, questions)).question_answering_score
        b = back.model(**back.model_inputs(regions, questions)).question_answering_score
    assert torch.equal(a, b)
    # Nothing is replaced: a second export to the same path is refused.
    assert run_command(EXPORT_COMMAND, argv) == 2
    assert "exists" in capsys.readouterr().err


def test_export_of_an_nlvr2_model_and_a_bad_name(tmp_path: Path) -> None:
    out = tmp_path / "nlvr2.pth"
    assert (
        run_command(EXPORT_COMMAND, ["shapes-nlvr2", "--format", "lxmert-original", str(out)]) == 0
    )
    assert original_layout(torch.load(out, weights_only=True)) == "nlvr2"
    assert not out.with_suffix(".label2ans.json").exists()
    assert (
        run_command(
            EXPORT_COMMAND,
            [str(tmp_path / "none"), "--format", "lxmert-original", str(tmp_path / "x.pth")],
        )
        == 2
    )
    assert (
        run_command(
            EXPORT_COMMAND, ["shapes-nlvr2", "--format", "lxmert-original", str(tmp_path / "x.bin")]
        )
        == 2
    )
