"""A model load says what it left unused in one line; transformers' LOAD REPORT only at debug."""

from __future__ import annotations

import logging

import pytest

from encoder.model import build_model, load_summary

PRETRAINING_HEADS = [f"cls.predictions.w{i}" for i in range(8)] + [
    f"obj_predict_head.w{i}" for i in range(9)
]


def test_unused_pretraining_heads_are_one_info_line() -> None:
    info = {
        "unexpected_keys": set(PRETRAINING_HEADS),
        "missing_keys": set(),
        "mismatched_keys": set(),
    }
    assert load_summary(info, source="m", head="LxmertForQuestionAnswering") == (
        logging.INFO,
        "m: 17 pretraining-head weights not used by LxmertForQuestionAnswering",
    )
    assert load_summary({"unexpected_keys": set()}, source="m", head="H") is None


def test_other_differences_are_a_warning_naming_them() -> None:
    info = {
        "unexpected_keys": {"cls.x", "lxmert.extra.a", "lxmert.extra.b"},
        "missing_keys": {"answer_head.logit_fc.0.weight"},
        "mismatched_keys": {("lxmert.pooler.dense.weight", (4, 4), (8, 8))},
    }
    level, line = load_summary(info, source="m", head="H") or (0, "")
    assert level == logging.WARNING
    assert line == (
        "m as H: weights 2 unused (lxmert.extra.a, lxmert.extra.b); 1 newly initialised "
        "(answer_head.logit_fc.0.weight); 1 reshaped (lxmert.pooler.dense.weight)"
    )


@pytest.mark.parametrize("debug", [False, True])
def test_a_qa_model_from_the_pretrained_one_says_one_line(
    debug: bool, caplog: pytest.LogCaptureFixture
) -> None:
    reports: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: reports.append(record.getMessage())  # type: ignore[method-assign]
    transformers_log = logging.getLogger("transformers.modeling_utils")
    transformers_log.addHandler(handler)
    try:
        with caplog.at_level(logging.DEBUG if debug else logging.INFO, logger="encoder"):
            build_model("shapes-lxmert-pretrained", head="qa")
    finally:
        transformers_log.removeHandler(handler)
    lines = [r.getMessage() for r in caplog.records if r.name == "encoder.model"]
    assert lines == [
        "shapes-lxmert-pretrained: 17 pretraining-head weights not used by "
        "LxmertForQuestionAnswering"
    ]
    assert any("LOAD REPORT" in report for report in reports) is debug
