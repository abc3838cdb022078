"""judge() and Pipeline.judge (NLVR2) with a tiny detector and a tiny random NLVR2 LXMERT."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import LxmertConfig

from detector import Detector, build_detector, get_preset
from detector.image import ImageError
from encoder.build import Encoder, load_encoder
from encoder.config import EncoderConfig
from encoder.model import build_model
from encoder.nlvr2 import LxmertForNLVR2
from encoder.tokenizer import load_tokenizer
from pipeline import Pipeline, judge
from pipeline.api import default_pipeline
from pipeline.commands.judge import main as judge_main

STATEMENTS = ["there is a cat in the left image", "both images show a cup"]


@pytest.fixture(scope="module")
def nlvr2_encoder() -> Encoder:
    torch.manual_seed(0)
    config = LxmertConfig(
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        l_layers=1,
        x_layers=1,
        r_layers=1,
        visual_feat_dim=get_preset("tiny").feature_dim,
        initializer_range=0.5,  # wide, so that verdicts differ between images
    )
    return Encoder(
        config=EncoderConfig(checkpoint="tiny-nlvr2", head="nlvr2"),
        model=LxmertForNLVR2(config).eval(),
        tokenizer=load_tokenizer(),
        answers=None,
    )


@pytest.fixture(scope="module")
def tiny_detector() -> Detector:
    return build_detector(get_preset("tiny"), seed=0).optimize_for_inference().eval()


@pytest.fixture
def counted(tiny_detector: Detector, nlvr2_encoder: Encoder, monkeypatch: pytest.MonkeyPatch):
    """A pipeline whose detector records the number of images of each detect() call."""
    calls: list[int] = []
    original = tiny_detector.detect

    def detect(images, **kwargs):
        calls.append(len(images))
        return original(images, **kwargs)

    monkeypatch.setattr(tiny_detector, "detect", detect)
    return Pipeline(detector=tiny_detector, encoder=nlvr2_encoder), calls


def _photo(photos: Path, name: str) -> Path:
    return photos / {"cat": "cats/chelsea.png", "cup": "coffee.jpg", "man": "astronaut.jpg"}[name]


def test_the_detector_runs_once_per_distinct_image(counted, photos: Path) -> None:
    pipe, calls = counted
    cat, cup, man = (_photo(photos, n) for n in ("cat", "cup", "man"))
    cup_bytes = cup.read_bytes()
    lefts = [cat, str(cat), cup_bytes, man]  # cat twice (Path and str), cup as bytes
    rights = [cup, man, cup_bytes, cat]
    got = pipe.judge(lefts, rights, [STATEMENTS, STATEMENTS[0], STATEMENTS[1], STATEMENTS[0]])
    # Four distinct images (cat, cup file, man, cup bytes), in one detector call.
    assert calls == [4]
    assert [len(g) if isinstance(g, list) else 1 for g in got] == [2, 1, 1, 1]
    # The same verdicts as the encoder on regions detected one image at a time.
    regions = {n: pipe.regions([str(_photo(photos, n))])[0] for n in ("cat", "cup", "man")}
    reference = pipe.encoder.judge(
        [regions["cat"], regions["cat"], regions["cat"], regions["cup"], regions["man"]],
        [regions["cup"], regions["cup"], regions["man"], regions["cup"], regions["cat"]],
        [*STATEMENTS, STATEMENTS[0], STATEMENTS[1], STATEMENTS[0]],
    )
    flat = [*got[0], got[1], got[2], got[3]]
    assert flat == [p > 0.5 for p in reference]


def test_top_k_two_gives_both_verdicts_best_first(counted, photos: Path) -> None:
    pipe, _ = counted
    cat, cup = _photo(photos, "cat"), _photo(photos, "cup")
    ranked = judge(cat, cup, STATEMENTS[0], top_k=2, pipeline=pipe)
    assert isinstance(ranked, list) and [type(v) for v, _ in ranked] == [bool, bool]
    (best, p_best), (other, p_other) = ranked
    assert best is not other and p_best >= p_other and p_best + p_other == pytest.approx(1.0)
    assert best == judge(cat, cup, STATEMENTS[0], pipeline=pipe)
    [probability] = pipe.encoder.judge(
        pipe.regions([str(cat)]), pipe.regions([str(cup)]), [STATEMENTS[0]]
    )
    assert dict(ranked)[True] == pytest.approx(probability, abs=1e-6)
    with pytest.raises(ValueError, match="top_k must be 1"):
        judge(cat, cup, STATEMENTS[0], top_k=3, pipeline=pipe)


def test_two_identical_images_give_one_consistent_answer(
    counted, photos: Path, tmp_path: Path
) -> None:
    pipe, calls = counted
    cat = _photo(photos, "cat")
    copy = tmp_path / "copy.png"
    shutil.copyfile(cat, copy)
    statement = "both images show the same cat"
    same = pipe.judge([cat], [cat], [statement], top_k=2)[0]
    assert calls == [1]  # the same file twice: one detection
    copied = pipe.judge([cat], [copy], [statement], top_k=2)[0]
    swapped = pipe.judge([copy], [cat], [statement], top_k=2)[0]
    assert calls == [1, 2, 2]  # a copy is another file: detected, with the same regions
    assert copied == same and swapped == same


def test_a_missing_image_is_a_clear_error_before_any_model_loads(
    counted, photos: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere.png"
    default_pipeline.cache_clear()
    with pytest.raises(ImageError, match=r"nowhere\.png: no such file \(right image\)"):
        judge(_photo(photos, "cat"), missing, "a cat", encoder="no-such-model")
    assert default_pipeline.cache_info().misses == 0  # nothing was loaded
    pipe, calls = counted
    with pytest.raises(ImageError, match=r"nowhere\.png: no such file"):
        pipe.judge([missing], [_photo(photos, "cat")], ["a cat"])
    assert calls == []


def test_without_an_nlvr2_encoder_the_error_names_shapes_nlvr2(
    photos: Path, tiny_detector: Detector
) -> None:
    cat = _photo(photos, "cat")
    with pytest.raises(ValueError, match=r"released no NLVR2 checkpoint.*shapes-nlvr2"):
        judge(cat, cat, "a cat")
    qa = Encoder(
        config=EncoderConfig(checkpoint="qa-model"),
        model=build_model(
            LxmertConfig(hidden_size=32, num_attention_heads=2, num_qa_labels=2), head="qa"
        ),
        tokenizer=load_tokenizer(),
        answers=None,
    )
    with pytest.raises(ValueError, match=r"'qa-model' is not an NLVR2 model.*shapes-nlvr2"):
        Pipeline(detector=tiny_detector, encoder=qa).judge([cat], [cat], ["a cat"])
    with pytest.raises(ValueError, match=r"^statement 2 is empty \(only whitespace\)"):
        judge(cat, cat, ["a cat", " "], encoder="no-such-model")


def test_judge_command(
    photos: Path, tmp_path: Path, tiny_checkpoint: Path, nlvr2_encoder: Encoder, capsys
) -> None:
    model_dir = tmp_path / "nlvr2"
    nlvr2_encoder.model.save_pretrained(model_dir)
    loaded = load_encoder(model_dir)  # its config.json says LxmertForNLVR2: head nlvr2
    assert loaded.config.head == "nlvr2" and isinstance(loaded.model, LxmertForNLVR2)
    cat, cup = str(_photo(photos, "cat")), str(_photo(photos, "cup"))
    assert judge_main([cat, cup, "a cat"]) == 2
    assert "released no NLVR2 checkpoint" in capsys.readouterr().err
    models = ["--detector", str(tiny_checkpoint), "--encoder", str(model_dir)]
    default_pipeline.cache_clear()
    try:
        assert judge_main([cat, cup, *STATEMENTS, "--top-k", "2", "--json", *models]) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [line["statement"] for line in lines] == STATEMENTS
        assert {v["verdict"] for v in lines[0]["verdicts"]} == {True, False}
        assert judge_main([cat, str(tmp_path / "gone.png"), "a cat", *models]) == 2
        assert "gone.png: no such file" in capsys.readouterr().err
    finally:
        default_pipeline.cache_clear()


def test_judge_takes_the_detectors_precision(
    photos: Path, tmp_path: Path, tiny_checkpoint: Path, nlvr2_encoder: Encoder, capsys
) -> None:
    """--precision reaches the detector as in answer: fp16 on the CPU is refused by name
    before any model loads; fp32 judges as without the flag."""
    model_dir = tmp_path / "nlvr2"
    nlvr2_encoder.model.save_pretrained(model_dir)
    cat, cup = str(_photo(photos, "cat")), str(_photo(photos, "cup"))
    models = ["--detector", str(tiny_checkpoint), "--encoder", str(model_dir), "--device", "cpu"]
    default_pipeline.cache_clear()
    try:
        assert judge_main([cat, cup, "a cat", *models, "--precision", "fp16"]) == 2
        assert "--precision fp16: precision fp16 runs on CUDA only" in capsys.readouterr().err
        with pytest.raises(ValueError, match="fp16 runs on CUDA only"):
            judge(
                cat,
                cup,
                "a cat",
                detector=str(tiny_checkpoint),
                encoder=str(model_dir),
                device="cpu",
                precision="fp16",
            )
        assert judge_main([cat, cup, "a cat", *models, "--top-k", "2", "--json"]) == 0
        plain = capsys.readouterr().out
        assert (
            judge_main(
                [cat, cup, "a cat", *models, "--top-k", "2", "--json", "--precision", "fp32"]
            )
            == 0
        )
        assert capsys.readouterr().out == plain
    finally:
        default_pipeline.cache_clear()
