"""``lxmert-finetune``: train and evaluate on a tiny shapes dataset, answer() with the output,
and bad data refused with exit 2 (naming the file and the entry) before any model loads."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest
import torch
from transformers import LxmertConfig, LxmertForQuestionAnswering

from pipeline.api import answer
from pipeline.finetune_cli import main
from pipeline.writers import encode_tsv_line
from shapesworld.dataset import question_entries
from shapesworld.models import load_trained_detector, prepare_scene
from shapesworld.scenes import make_split
from shapesworld.vocab import ANSWERS, QUESTION_WORDS
from weights import resolve_checkpoint

VOCAB = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "?", *sorted(QUESTION_WORDS | set(ANSWERS)))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Eight train and four held-out scenes: PNGs, LXMERT JSON, one TSV of their regions, and
    a tiny random QA model (hidden 32, 256-d features as the shapes detector gives)."""
    folder = tmp_path_factory.mktemp("finetune-cli")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core machine: more threads are far slower
    detector = load_trained_detector(resolve_checkpoint("shapes-detector").parent)
    lines = []
    for split, count in (("train", 8), ("heldout", 4)):
        entries = []
        for scene in make_split(split, count):
            regions = detector.detect([prepare_scene(scene, detector.config)])[0]
            lines.append(encode_tsv_line(regions))
            cv2.imwrite(str(folder / f"{regions.image_id}.png"), scene.image_bgr())
            entries.extend(question_entries(scene))
        (folder / f"{split}.json").write_text(json.dumps(entries), encoding="utf-8")
    (folder / "features.tsv").write_bytes(b"".join(lines))
    torch.manual_seed(0)
    config = LxmertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        l_layers=1,
        x_layers=1,
        r_layers=1,
        visual_feat_dim=256,
        num_qa_labels=2,
        max_position_embeddings=32,
    )
    start = folder / "start"
    LxmertForQuestionAnswering(config).save_pretrained(start, safe_serialization=True)
    (start / "label2ans.json").write_text(json.dumps(["yes", "no"]), encoding="utf-8")
    (start / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    torch.set_num_threads(threads)
    yield {
        "train": folder / "train.json",
        "test": folder / "heldout.json",
        "features": folder / "features.tsv",
        "start": start,
        "image": folder / f"seed-{make_split('heldout', 1)[0].seed}.png",
    }


def _train_argv(data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--task",
        "vqa",
        "--train",
        str(data["train"]),
        "--valid",
        str(data["test"]),
        "--features",
        str(data["features"]),
        "--from",
        str(data["start"]),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--lr",
        "1e-3",
        "-q",
        *extra,
    ]


def test_train_evaluate_and_answer(
    tmp_path: Path, data: dict[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model"
    assert main(_train_argv(data, out)) == 0
    # Our progress lines only: transformers' bars would break them (saved each epoch).
    assert "Writing model shards" not in capfd.readouterr().err
    for name in ("config.json", "model.safetensors", "label2ans.json", "vocab.txt"):
        assert (out / name).is_file(), name
    record = json.loads((out / "finetune.json").read_text())
    assert record["command"].startswith("lxmert-finetune train --task vqa --train ")
    assert record["config"]["epochs"] == 2 and record["config"]["lr"] == 1e-3
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    labels = json.loads((out / "label2ans.json").read_text())
    assert labels == sorted({a for e in json.loads(data["train"].read_text()) for a in e["label"]})

    predictions, table, report = tmp_path / "p.json", tmp_path / "p.csv", tmp_path / "r.json"
    argv = [
        "evaluate",
        "--model",
        str(out),
        "--questions",
        str(data["test"]),
        "--features",
        str(data["features"]),
        "--predictions",
        str(predictions),
        "--report",
        str(report),
    ]
    assert main(argv) == 0
    records = json.loads(predictions.read_text())
    questions = json.loads(data["test"].read_text())
    assert [r["question_id"] for r in records] == [q["question_id"] for q in questions]
    assert all(r["answer"] in labels for r in records)
    scores = json.loads(report.read_text())
    expected = sum(
        q["label"].get(r["answer"], 0.0) for q, r in zip(questions, records, strict=True)
    ) / len(questions)
    assert scores["overall"] == pytest.approx(expected)
    assert set(scores["per_type"]["question_type"]) <= {
        "color",
        "shape",
        "count",
        "exist",
        "spatial",
    }
    assert main([*argv[:-4], "--predictions", str(table), "--task", "gqa"]) == 0
    rows = list(csv.reader(table.read_text().splitlines()))
    assert rows[0] == ["questionId", "prediction"] and len(rows) == len(questions) + 1

    said = answer(
        data["image"],
        questions[0]["sent"],
        detector="shapes-detector",
        encoder=str(out),
        device="cpu",
    )
    assert said in labels


def test_bad_data_is_exit_2_naming_file_and_entry(
    tmp_path: Path, data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    entries = json.loads(data["train"].read_text())
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps([*entries[:3], {**entries[3], "img_id": "seed-gone"}]))
    argv = _train_argv(data, tmp_path / "a")
    argv[argv.index("--train") + 1] = str(missing)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{missing}: entry 3" in err and "'seed-gone' is not in the feature store" in err
    assert not (tmp_path / "a").exists()  # refused before any model load or output

    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    argv[argv.index("--train") + 1] = str(broken)
    assert main(argv) == 2
    assert f"{broken}: not valid JSON" in capsys.readouterr().err

    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps([{**e, "label": {}} for e in entries[:3]]))
    argv[argv.index("--train") + 1] = str(empty)
    assert main(argv) == 2
    assert "answer table would be empty" in capsys.readouterr().err


def test_skip_missing_counts_and_refusals(
    tmp_path: Path, data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    entries = json.loads(data["train"].read_text())
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps([*entries, {**entries[0], "question_id": "x", "img_id": "gone"}]))
    out = tmp_path / "b"
    argv = _train_argv(data, out, "--skip-missing", "--epochs", "1")
    argv[argv.index("--train") + 1] = str(missing)
    assert main(argv) == 0
    assert "--train: skipped 1 question(s)" in capsys.readouterr().err
    assert main(argv) == 2  # a finished run in --out: --resume or another --out
    assert "pass --resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0  # nothing left to do: the epochs are done
    assert main(_train_argv(data, tmp_path / "c", "--from", "no-such-model")) == 2
    assert main([]) == 2 and main(["--help"]) == 0


def test_out_must_be_new_empty_or_ours(
    tmp_path: Path, data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    someone = tmp_path / "someones-model"
    someone.mkdir()
    (someone / "config.json").write_text('{"mine": true}')
    assert main(_train_argv(data, someone, "--epochs", "1")) == 2
    assert "did not write" in capsys.readouterr().err
    assert (someone / "config.json").read_text() == '{"mine": true}'
    argv = _train_argv(data, someone, "--epochs", "1")
    argv[argv.index("--from") + 1] = str(someone)
    assert main(argv) == 2
    assert "is the starting model" in capsys.readouterr().err
