"""``lxmert-finetune --task nlvr2``: train and evaluate on tiny pair data over a feature
store whose images have different box counts, judge with the output, and bad data refused
with exit 2 before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pipeline_helpers import make_region
from transformers import LxmertConfig, LxmertForPreTraining

from detector.structures import RegionFeatures
from encoder.build import load_encoder
from pipeline.commands.finetune.command import main
from pipeline.features.output import encode_tsv_line

VOCAB = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "left", "image", "is", "bright")


def _image(image_id: str, *, kind: int, boxes: int, seed: int) -> RegionFeatures:
    """Random boxes whose features say the image's kind: +1 or -1 everywhere, plus noise."""
    region = make_region(image_id, n=boxes, seed=seed)
    features = (1.0 if kind else -1.0) + 0.1 * region.features
    return RegionFeatures(**{**vars(region), "features": features})


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Twelve images (box counts 3..7) in one TSV, statement files with groups, and a tiny
    pretrained LXMERT (LxmertForPreTraining) to start from."""
    folder = tmp_path_factory.mktemp("nlvr2-cli")
    images = [_image(f"img-{i}", kind=i % 2, boxes=3 + i % 5, seed=i) for i in range(12)]
    (folder / "features.tsv").write_bytes(b"".join(encode_tsv_line(r) for r in images))
    rng = np.random.default_rng(0)
    for name, count in (("train", 64), ("valid", 16)):
        entries = []
        for k in range(count):
            left, right = (int(i) for i in rng.integers(0, 12, 2))
            entries.append(
                {
                    "identifier": f"{name}-{k // 2}-0-{k % 2}",
                    "img0": f"img-{left}",
                    "img1": f"img-{right}",
                    "sent": "the left image is bright",
                    "label": left % 2,
                    "type": "bright",
                }
            )
        (folder / f"{name}.json").write_text(json.dumps(entries), encoding="utf-8")
    torch.manual_seed(0)
    config = LxmertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        l_layers=1,
        x_layers=1,
        r_layers=1,
        visual_feat_dim=16,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    start = folder / "start"
    LxmertForPreTraining(config).save_pretrained(start, safe_serialization=True)
    (start / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return {
        "train": folder / "train.json",
        "valid": folder / "valid.json",
        "features": folder / "features.tsv",
        "start": start,
    }


def _train_argv(data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "train", "--task", "nlvr2", "--train", str(data["train"]), "--valid", str(data["valid"]),
        "--features", str(data["features"]), "--from", str(data["start"]), "--out", str(out),
        "--epochs", "6", "--batch-size", "8", "--lr", "2e-3", "--max-length", "8", "-q", *extra,
    ]  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_train_evaluate_and_load(tmp_path: Path, data: dict[str, Path]) -> None:
    out = tmp_path / "model"
    assert main(_train_argv(data, out)) == 0
    best = out / "best"
    assert (best / "config.json").is_file() and not (best / "label2ans.json").exists()
    record = json.loads((out / "finetune.json").read_text())
    assert record["task"] == "nlvr2" and record["command"].startswith(
        "lxmert-finetune train --task nlvr2 --train "
    )
    assert record["history"][-1]["valid_accuracy"] >= 0.9
    encoder = load_encoder(out)
    assert encoder.config.head == "nlvr2"

    csv_path, report = tmp_path / "predictions.csv", tmp_path / "report.json"
    argv = [
        "evaluate", "--model", str(out), "--questions", str(data["valid"]),
        "--features", str(data["features"]), "--predictions", str(csv_path),
        "--report", str(report),
    ]  # fmt: skip
    assert main(argv) == 0  # the task comes from the model's finetune.json
    lines = csv_path.read_text().splitlines()
    statements = json.loads(data["valid"].read_text())
    assert lines[0] == "identifier,prediction"
    assert [line.split(",")[0] for line in lines[1:]] == [s["identifier"] for s in statements]
    verdicts = [line.split(",")[1] == "True" for line in lines[1:]]
    assert {line.split(",")[1] for line in lines[1:]} <= {"True", "False"}
    scores = json.loads(report.read_text())
    right = [v == bool(s["label"]) for v, s in zip(verdicts, statements, strict=True)]
    assert scores["accuracy"]["overall"] == pytest.approx(sum(right) / len(right))
    groups: dict[str, bool] = {}
    for statement, ok in zip(statements, right, strict=True):
        group = statement["identifier"].rsplit("-", 1)[0]
        groups[group] = groups.get(group, True) and ok
    assert scores["consistency"] == pytest.approx(sum(groups.values()) / len(groups))
    assert scores["accuracy"]["per_type"] == {
        "pair_type": {"bright": pytest.approx(sum(right) / 16)}
    }
    assert main([*argv[:-4], "--predictions", str(tmp_path / "p.json")]) == 2


def test_bad_pair_data_is_exit_2_before_any_model_loads(
    tmp_path: Path, data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    entries = json.loads(data["train"].read_text())
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps([*entries[:3], {**entries[3], "img1": "img-gone"}]))
    argv = _train_argv(data, tmp_path / "a")
    argv[argv.index("--train") + 1] = str(missing)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{missing}: entry 3" in err and "'img-gone' is not in the feature store" in err
    assert not (tmp_path / "a").exists()

    unlabelled = tmp_path / "unlabelled.json"
    unlabelled.write_text(
        json.dumps([{k: v for k, v in e.items() if k != "label"} for e in entries])
    )
    argv[argv.index("--train") + 1] = str(unlabelled)
    assert main(argv) == 2
    assert "entry 0 (identifier 'train-0-0-0'): no 'label'" in capsys.readouterr().err
    assert main(_train_argv(data, tmp_path / "b", "--answers", str(data["train"]))) == 2
    assert "--answers is for vqa/gqa" in capsys.readouterr().err
