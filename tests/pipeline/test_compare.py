"""extract_features compare: the parity report against a reference obj36 TSV (tiny preset, real
photos, CPU). References are written by our own extractor in each proposal mode, so the right
verdict is known; the figures are recomputed here with plain loops."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from pipeline_helpers import LXMERT_FIELDS, lxmert_read_tsv

from pipeline.commands.extract import main
from pipeline.compare import box_iou, match_boxes
from pipeline.compare.files import feature_rounding

IDS = ["astronaut", "cats/chelsea", "coffee", "gray/camera"]
MODES = ("caffe", "detectron2")


def run(*args: object) -> int:
    return main([str(arg) for arg in args])


def compare(
    reference: Path, photos: Path | str, checkpoint: Path, *flags: object
) -> tuple[int, dict | None]:
    """Run ``compare`` with a report beside the reference; (exit code, report or None)."""
    report = reference.with_name(reference.stem + ".report.json")
    report.unlink(missing_ok=True)
    code = run(
        "compare", reference, photos, "--detector", checkpoint, "--device", "cpu",
        "--report", report, "-q", *flags,
    )  # fmt: skip
    return code, json.loads(report.read_text()) if report.exists() else None


def write_lxmert_tsv(path: Path, items: list[dict]) -> None:
    """An obj36 TSV as LXMERT's extraction scripts write one (base64 of the raw arrays), from
    records as :func:`lxmert_read_tsv` returns them; written here without pipeline/."""
    lines = []
    for item in items:
        fields = []
        for name in LXMERT_FIELDS:
            value = item[name]
            fields.append(
                base64.b64encode(np.ascontiguousarray(value).tobytes()).decode("ascii")
                if isinstance(value, np.ndarray)
                else str(value)
            )
        lines.append("\t".join(fields) + "\n")
    path.write_text("".join(lines))


def plain_iou(box_a: np.ndarray, box_b: np.ndarray) -> float:
    """IoU of two xyxy boxes, continuous areas, as a plain formula in Python floats."""
    a, b = [float(v) for v in box_a], [float(v) for v in box_b]
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def plain_greedy(reference: np.ndarray, ours: np.ndarray) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching by repeated search of the best free pair (slow and plain)."""
    free_ref, free_ours, pairs = set(range(len(reference))), set(range(len(ours))), []
    while True:
        best = max(
            ((plain_iou(reference[r], ours[o]), -r, -o) for r in free_ref for o in free_ours),
            default=(0.0, 0, 0),
        )
        if best[0] <= 0:
            return pairs
        r, o = -best[1], -best[2]
        pairs.append((r, o, best[0]))
        free_ref.discard(r)
        free_ours.discard(o)


@pytest.fixture(scope="module")
def references(
    tmp_path_factory: pytest.TempPathFactory, photos: Path, tiny_checkpoint: Path
) -> dict[str, Path]:
    """Our own bottom-up runs over the photos in each proposal mode: {mode: obj36 TSV}."""
    folder = tmp_path_factory.mktemp("references")
    paths = {mode: folder / f"{mode}.tsv" for mode in MODES}
    for mode, path in paths.items():
        code = run(photos, "--out", path, "--detector", tiny_checkpoint, "--proposals", mode,
                   "--device", "cpu", "-q")  # fmt: skip
        assert code == 0
    # The test means something only if the two modes choose other boxes on every photo.
    caffe, detectron2 = (lxmert_read_tsv(paths[mode]) for mode in MODES)
    for a, b in zip(caffe, detectron2, strict=True):
        assert a["img_id"] == b["img_id"]
        assert a["num_boxes"] != b["num_boxes"] or not np.array_equal(a["boxes"], b["boxes"])
    return paths


@pytest.mark.parametrize("mode", MODES)
def test_a_reference_is_reproduced_by_its_own_proposal_mode_only(
    references: dict[str, Path], photos: Path, tiny_checkpoint: Path, capsys, mode: str
) -> None:
    other = next(m for m in MODES if m != mode)
    code, report = compare(references[mode], photos, tiny_checkpoint, "--box-count", "preset")
    out = capsys.readouterr().out
    assert code == 0 and report is not None
    assert report["full"][mode]["reproduces"] and not report["full"][other]["reproduces"]
    assert out.strip() == report["verdict"]
    assert report["verdict"].startswith(f"verdict: {mode} reproduces the reference")
    given = report["given_boxes"]
    assert given["passed"] and given["objects_agree"] == given["attrs_agree"] == 1.0
    assert given["worst_cosine"] > 1 - 1e-6 and given["worst_relative_difference"] < 1e-5
    # Independent figures: with the preset's box counts the other mode's run is the other
    # reference file, matched here by plain greedy search.
    ref, ours = lxmert_read_tsv(references[mode]), lxmert_read_tsv(references[other])
    total = sum(item["num_boxes"] for item in ref)
    pairs = [plain_greedy(r["boxes"], o["boxes"]) for r, o in zip(ref, ours, strict=True)]
    for level in ("0.99", "0.9", "0.5"):
        expected = sum(iou >= float(level) for image in pairs for _, _, iou in image) / total
        assert report["full"][other]["matched"][level] == pytest.approx(expected, abs=1e-12)
        assert report["full"][mode]["matched"][level] == 1.0
    agree = [
        r["objects_id"][i] == o["objects_id"][j]
        for r, o, image in zip(ref, ours, pairs, strict=True)
        for i, j, iou in image
        if iou >= 0.5
    ]
    assert report["full"][other]["matched_pairs"] == len(agree)
    assert report["full"][other]["objects_agree"] == pytest.approx(
        np.mean(agree) if agree else None
    )


def test_the_reference_box_count_keeps_each_images_count(
    references: dict[str, Path], photos: Path, tiny_checkpoint: Path, capsys
) -> None:
    """Default --box-count reference: the run keeps as many boxes as each record holds, which
    with bottom-up selection is the set the reference's own min/max rule kept."""
    code, report = compare(references["caffe"], photos, tiny_checkpoint)
    assert code == 0 and report is not None
    counts = {item["img_id"]: item["num_boxes"] for item in lxmert_read_tsv(references["caffe"])}
    for image in report["per_image"]:
        for mode in MODES:
            assert image["full"][mode]["our_boxes"] == counts[image["image_id"]]
    assert report["full"]["caffe"]["reproduces"] and not report["full"]["detectron2"]["reproduces"]
    assert "need median >= 0.999, worst >= 0.99" not in capsys.readouterr().out  # -q: verdict only


def test_the_printed_table_states_the_tolerances(
    references: dict[str, Path], photos: Path, tiny_checkpoint: Path, capsys
) -> None:
    code = run("compare", references["caffe"], photos / "coffee.jpg", "--detector",
               tiny_checkpoint, "--device", "cpu")  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert any("need median >= 0.999, worst >= 0.99" in line for line in lines)
    assert any("objects_id agree" in line and "need >= 98%" in line for line in lines)
    assert any("95% of reference boxes matched at IoU >= 0.9" in line for line in lines)
    assert lines[-1].startswith("verdict: caffe reproduces the reference")


def perturbed(source: Path, target: Path, *, scale: float, seed: int = 0) -> list[dict]:
    """``source`` with noise of ``scale`` x each feature's norm added to the features of the
    first image's boxes; written to ``target``; returns the records written."""
    items = lxmert_read_tsv(source)
    rng = np.random.default_rng(seed)
    features = items[0]["features"].astype(np.float64)
    noise = rng.standard_normal(features.shape)
    noise *= (
        scale
        * np.linalg.norm(features, axis=1, keepdims=True)
        / np.linalg.norm(noise, axis=1, keepdims=True)
    )
    items[0] = {**items[0], "features": (features + noise).astype(np.float32)}
    write_lxmert_tsv(target, items)
    return items


@pytest.mark.parametrize(("scale", "passes"), [(1e-3, True), (0.5, False)])
def test_perturbed_features_fail_the_given_box_check(
    references: dict[str, Path], photos: Path, tiny_checkpoint: Path, tmp_path: Path,
    scale: float, passes: bool,
) -> None:  # fmt: skip
    target = tmp_path / "perturbed.tsv"
    items = perturbed(references["caffe"], target, scale=scale)
    code, report = compare(target, photos, tiny_checkpoint, "--limit", "2")
    assert report is not None and report["images"]["compared"] == 2
    assert (code, report["given_boxes"]["passed"], report["exit_code"]) == (
        (0, True, 0) if passes else (1, False, 1)
    )
    # The worst cosine is the worst of the perturbed image, computed here from the files.
    clean = lxmert_read_tsv(references["caffe"])[0]["features"].astype(np.float64)
    noisy = items[0]["features"].astype(np.float64)
    cosine = (clean * noisy).sum(1) / np.linalg.norm(clean, axis=1) / np.linalg.norm(noisy, axis=1)
    assert report["given_boxes"]["worst_cosine"] == pytest.approx(cosine.min(), abs=1e-6)
    assert report["per_image"][0]["image_id"] == items[0]["img_id"]


def test_an_image_of_another_size_is_named_and_fails(
    references: dict[str, Path], photos: Path, tiny_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    image = cv2.imread(str(folder / "coffee.jpg"))
    cv2.imwrite(str(folder / "coffee.jpg"), cv2.resize(image, (50, 40)))
    code, report = compare(references["caffe"], folder, tiny_checkpoint)
    assert code == 1 and report is not None
    assert [f["image_id"] for f in report["failures"]] == ["coffee"]
    assert "40x50 (h x w)" in report["failures"][0]["reason"]
    assert report["images"]["compared"] == 3 and report["given_boxes"]["passed"]


def test_a_reference_with_no_image_in_common_is_a_usage_error(
    references: dict[str, Path], photos: Path, tiny_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    items = lxmert_read_tsv(references["caffe"])
    target = tmp_path / "elsewhere.tsv"
    write_lxmert_tsv(
        target, [{**item, "img_id": "COCO_val2014_" + item["img_id"]} for item in items]
    )
    code, report = compare(target, photos, tiny_checkpoint)
    err = capsys.readouterr().err
    assert (code, report) == (2, None)
    assert "no image in common" in err and "'COCO_val2014_astronaut'" in err and "'coffee'" in err


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (b"not an obj36 record\nnor this\n", "garbage.tsv", "not a complete obj36 TSV record"),
        (None, "missing.tsv", "No such file"),
        (b"{}", "features.json", "give a feature file: an obj36 .tsv"),
    ],
)
def test_an_unreadable_reference_is_a_usage_error(
    photos: Path, tiny_checkpoint: Path, tmp_path: Path, capsys,
    content: bytes | None, name: str, message: str,
) -> None:  # fmt: skip
    reference = tmp_path / name
    if content is not None:
        reference.write_bytes(content)
    code, report = compare(reference, photos, tiny_checkpoint)
    err = capsys.readouterr().err
    assert (code, report) == (2, None)
    assert str(reference) in err and message in err


def test_the_report_replaces_only_a_report(
    references: dict[str, Path], photos: Path, tiny_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    report = tmp_path / "notes.json"
    report.write_text('{"mine": 1}')
    args = ("compare", references["caffe"], photos / "coffee.jpg", "--detector", tiny_checkpoint,
            "--device", "cpu", "-q", "--report")  # fmt: skip
    assert run(*args, report) == 2
    assert report.read_text() == '{"mine": 1}' and "not a report" in capsys.readouterr().err
    assert run(*args, tmp_path / "report.txt") == 2
    report.unlink()
    assert run(*args, report) == 0 and run(*args, report) == 0  # a report is replaced
    assert json.loads(report.read_text())["kind"] == "extract_features compare report"


def test_greedy_matching_takes_the_best_pair_first_not_the_best_total() -> None:
    # Intervals on a unit-height strip: IoU(A, X) = 9/10, IoU(A, Y) = 8/10, IoU(B, X) = 2/9.2,
    # IoU(B, Y) = 0. Greedy pairs A with X and leaves B alone; the matching of highest total
    # IoU (Hungarian: A-Y, B-X = 1.017) would pair both.
    reference = np.array([[0, 0, 10, 1], [8, 0, 10.2, 1]], dtype=np.float32)  # A, B
    ours = np.array([[1, 0, 10, 1], [0, 0, 8, 1]], dtype=np.float32)  # X, Y
    np.testing.assert_allclose(box_iou(reference, ours), [[0.9, 0.8], [2 / 9.2, 0.0]], rtol=1e-6)
    match = match_boxes(reference, ours)
    assert match.reference.tolist() == [0] and match.ours.tolist() == [0]
    np.testing.assert_allclose(match.iou, [0.9], rtol=1e-6)


def test_greedy_matching_equals_a_plain_search_on_random_boxes() -> None:
    rng = np.random.default_rng(3)
    for n, m in [(7, 5), (5, 9), (12, 12)]:
        xy = rng.uniform(0, 50, (n + m, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(2, 40, (n + m, 2))], axis=1)
        reference, ours = boxes[:n], boxes[n:]
        match = match_boxes(reference, ours)
        expected = plain_greedy(reference, ours)
        assert list(zip(match.reference.tolist(), match.ours.tolist(), strict=True)) == [
            (r, o) for r, o, _ in expected
        ]
        np.testing.assert_allclose(match.iou, [iou for _, _, iou in expected], rtol=1e-12)


def test_help_lists_compare_and_states_the_rules(capsys) -> None:
    with pytest.raises(SystemExit):
        run("--help")
    assert "compare" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        run("compare", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "median feature cosine is >= 0.999, the worst >= 0.99" in text
    assert ">= 95% of reference boxes are matched at IoU >= 0.9" in text


# --- the given-box check sees scale and offset; the verdict says what the exit code covers ------


def transformed(source: Path, target: Path, how: str) -> list[dict]:
    """``source`` with every feature changed: ``scaled`` x7, ``normalised`` to unit L2 norm,
    or ``offset`` by a constant, 5% of the record's mean value; written to ``target``."""
    items = lxmert_read_tsv(source)
    for index, item in enumerate(items):
        features = item["features"].astype(np.float64)
        if how == "scaled":
            features = features * 7
        elif how == "normalised":
            features = features / np.linalg.norm(features, axis=1, keepdims=True)
        else:
            features = features + 0.05 * features.mean()
        items[index] = {**item, "features": features.astype(np.float32)}
    write_lxmert_tsv(target, items)
    return items


@pytest.mark.parametrize("how", ["scaled", "normalised", "offset"])
def test_scaled_normalised_or_offset_features_fail_the_given_box_check(
    references: dict[str, Path], photos: Path, tiny_checkpoint: Path, tmp_path: Path, how: str
) -> None:
    target = tmp_path / f"{how}.tsv"
    changed = transformed(references["caffe"], target, how)
    code, report = compare(target, photos, tiny_checkpoint, "--limit", "2")
    assert report is not None and report["images"]["compared"] == 2
    # Independent figures from the two files: cosine alone cannot see the change.
    clean = [i["features"].astype(np.float64) for i in lxmert_read_tsv(references["caffe"])[:2]]
    ref = [i["features"].astype(np.float64) for i in changed[:2]]
    ours, theirs = np.concatenate(clean), np.concatenate(ref)
    norms = np.linalg.norm(ours, axis=1), np.linalg.norm(theirs, axis=1)
    cosine = (ours * theirs).sum(1) / norms[0] / norms[1]
    assert np.median(cosine) >= 0.999 and cosine.min() >= 0.99
    scale = np.median(np.abs(norms[0] / norms[1] - 1))
    relative = np.median(np.linalg.norm(ours - theirs, axis=1) / norms[1])
    # Scale catches all three; the offset, whose relative difference is ~0.03, only by scale.
    assert scale > 0.01 and bool(relative > 0.05) is (how != "offset")
    given = report["given_boxes"]
    assert given["median_scale_difference"] == pytest.approx(scale, rel=1e-4)
    assert given["median_relative_difference"] == pytest.approx(relative, rel=1e-4)
    assert (code, given["passed"], report["exit_code"]) == (1, False, 1)
    assert report["verdict"].endswith("exit code 1 covers the given-box check (failed), not "
                                      "the full check (--require full adds it)")  # fmt: skip


def test_the_printed_table_has_the_scale_and_relative_limits_and_the_worst_box(
    references: dict[str, Path], photos: Path, tiny_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    target = tmp_path / "one-bad-box.tsv"
    items = lxmert_read_tsv(references["caffe"])
    features = items[1]["features"].copy()
    features[4] = features[4][::-1]  # one box of the second image, its feature reversed
    items[1] = {**items[1], "features": features}
    write_lxmert_tsv(target, items)
    code = run("compare", target, photos, "--detector", tiny_checkpoint, "--device", "cpu")
    lines = capsys.readouterr().out.splitlines()
    assert code == 1  # the minimum stays the tolerance: one outlier fails the run
    assert any("|norm ratio - 1|" in line and "need median <= 0.01" in line for line in lines)
    assert any("relative difference" in line and "need median <= 0.05" in line for line in lines)
    worst = next(line for line in lines if "cosine 1st percentile" in line)
    assert worst.endswith(f"worst at image {items[1]['img_id']!r} box 4")
    # Every other box has cosine 1 (our own run): the 1st percentile is that of [cosine, 1...].
    reference = lxmert_read_tsv(references["caffe"])[1]["features"][4].astype(np.float64)
    cosine = reference @ features[4] / np.linalg.norm(reference) ** 2
    assert f"worst {cosine:10.6f}" in next(line for line in lines if "feature cosine" in line)
    boxes = sum(item["num_boxes"] for item in items)
    expected = np.percentile([cosine] + [1.0] * (boxes - 1), 1)
    assert float(worst.split()[3]) == pytest.approx(expected, abs=2e-6) and expected > cosine
    assert lines[-1].endswith("exit code 1 covers the given-box check (failed), not the full "
                              "check (--require full adds it)")  # fmt: skip


def test_require_full_also_demands_a_reproducing_proposal_layer(
    references: dict[str, Path], photos: Path, tiny_checkpoint: Path, capsys
) -> None:
    # Max-class selection keeps other boxes than the bottom-up reference, so no proposal layer
    # reproduces it; its given-box check, which never selects, still passes.
    args = ("--selection", "max-class", "--limit", "2")
    code, report = compare(references["caffe"], photos, tiny_checkpoint, *args)
    assert report is not None and report["given_boxes"]["passed"]
    assert not any(report["full"][mode]["reproduces"] for mode in MODES)
    assert code == 0 and report["require"] == "given"
    assert (
        "exit code 0 covers the given-box check (passed), not the full check" in report["verdict"]
    )
    code, report = compare(references["caffe"], photos, tiny_checkpoint, *args, "--require",
                           "full")  # fmt: skip
    assert report is not None and (code, report["exit_code"], report["require"]) == (1, 1, "full")
    assert report["verdict"].endswith(
        "exit code 1 covers the given-box check (passed), the full check (failed: a proposal "
        "layer must reproduce)"
    )
    code, report = compare(references["caffe"], photos, tiny_checkpoint, "--limit", "2",
                           "--require", "full")  # fmt: skip
    assert report is not None and code == 0 and report["full"]["caffe"]["reproduces"]
    assert report["verdict"].endswith("the full check (passed: a proposal layer must reproduce)")


@pytest.mark.parametrize(("flags", "deterministic"), [((), True), (("--no-deterministic",), False)])
def test_compare_loads_the_detector_deterministic_unless_told_not_to(
    references: dict[str, Path], photos: Path, tiny_checkpoint: Path, monkeypatch,
    flags: tuple[str, ...], deterministic: bool,
) -> None:  # fmt: skip
    import detector

    asked = []
    real = detector.load_detector

    def spy(*args, **kwargs):
        asked.append(kwargs.get("options"))
        return real(*args, **kwargs)

    monkeypatch.setattr(detector, "load_detector", spy)
    code, report = compare(references["caffe"], photos / "coffee.jpg", tiny_checkpoint, *flags)
    assert code == 0 and report is not None and report["deterministic"] is deterministic
    assert len(asked) == 2 and all(
        o is not None and o.deterministic is deterministic for o in asked
    )


# --- two feature files: compare REFERENCE --features CANDIDATE ---------------------------------


def compare_files(reference: Path, candidate: Path, *flags: object) -> tuple[int, dict | None]:
    """``compare REFERENCE --features CANDIDATE`` with a report beside the candidate."""
    report = candidate.with_name(candidate.stem + ".files.json")
    report.unlink(missing_ok=True)
    code = run("compare", reference, "--features", candidate, "--report", report, "-q", *flags)
    return code, json.loads(report.read_text()) if report.exists() else None


@pytest.fixture(scope="module")
def caffe_h5(tmp_path_factory: pytest.TempPathFactory, photos: Path, tiny_checkpoint: Path) -> Path:
    """The caffe reference's run again, written as HDF5."""
    path = tmp_path_factory.mktemp("h5") / "caffe.h5"
    code = run(photos, "--out", path, "--detector", tiny_checkpoint, "--proposals", "caffe",
               "--device", "cpu", "-q")  # fmt: skip
    assert code == 0
    return path


def test_a_run_against_its_rerun_in_another_format_is_exact(
    references: dict[str, Path], caffe_h5: Path, capsys
) -> None:
    code, report = compare_files(references["caffe"], caffe_h5, "--exact", "--same-images")
    assert report is not None and (code, report["exit_code"]) == (0, 0)
    assert report["mode"] == "files" and report["first_difference"] is None
    assert report["images"]["in_both"] == len(IDS) and report["boxes"]["matched"]["0.99"] == 1.0
    assert report["same_boxes"]["boxes"] == sum(
        item["num_boxes"] for item in lxmert_read_tsv(references["caffe"])
    )
    assert report["same_boxes"]["worst_cosine"] == pytest.approx(1.0, abs=1e-12)
    assert capsys.readouterr().out.strip() == report["verdict"]
    assert report["feature_rounding"] == "equal"
    assert report["verdict"].startswith("verdict: the candidate matches the reference")
    assert report["verdict"].endswith(
        "exit code 0 covers the same-box feature check (passed), the box matching (passed), "
        "byte-equal records (passed), the same images (passed)"
    )


def test_scaled_candidate_features_fail_and_exact_names_the_first_record(
    references: dict[str, Path], tmp_path: Path
) -> None:
    candidate = tmp_path / "scaled.tsv"
    changed = transformed(references["caffe"], candidate, "scaled")
    code, report = compare_files(references["caffe"], candidate, "--exact")
    assert report is not None and (code, report["exit_code"]) == (1, 1)
    assert report["boxes"]["reproduces"] and not report["same_boxes"]["passed"]
    assert report["same_boxes"]["median_scale_difference"] == pytest.approx(6.0, rel=1e-5)
    assert report["feature_rounding"] == "other"
    first = sorted(item["img_id"] for item in changed)[0]
    assert report["first_difference"] == {"image_id": first, "field": "features"}
    assert f"first difference: image {first!r} field features" in report["verdict"]
    assert "the same-box feature check (failed), the box matching (passed), byte-equal " \
        "records (failed)" in report["verdict"]  # fmt: skip


def test_other_boxes_fail_the_box_matching_with_the_full_checks_figures(
    references: dict[str, Path], capsys
) -> None:
    code, report = compare_files(references["caffe"], references["detectron2"])
    assert report is not None and code == 1 and not report["boxes"]["reproduces"]
    ref, cand = lxmert_read_tsv(references["caffe"]), lxmert_read_tsv(references["detectron2"])
    total = sum(item["num_boxes"] for item in ref)
    pairs = [plain_greedy(r["boxes"], c["boxes"]) for r, c in zip(ref, cand, strict=True)]
    for level in ("0.99", "0.9", "0.5"):
        expected = sum(iou >= float(level) for image in pairs for _, _, iou in image) / total
        assert report["boxes"]["matched"][level] == pytest.approx(expected, abs=1e-12)
    same = sum(iou >= 0.99 for image in pairs for _, _, iou in image)
    assert report["same_boxes"]["boxes"] == same
    assert "the box matching (failed)" in report["verdict"]


def test_images_in_one_file_only_are_listed_and_fail_only_with_same_images(
    references: dict[str, Path], tmp_path: Path, capsys
) -> None:
    items = lxmert_read_tsv(references["caffe"])
    candidate = tmp_path / "fewer.tsv"
    extra = {**items[0], "img_id": "elsewhere/extra"}
    write_lxmert_tsv(candidate, [*items[1:], extra])
    code, report = compare_files(references["caffe"], candidate)
    assert report is not None and code == 0
    assert report["images"]["only_reference"] == [items[0]["img_id"]]
    assert report["images"]["only_candidate"] == ["elsewhere/extra"]
    assert report["images"]["compared"] == len(items) - 1
    run("compare", references["caffe"], "--features", candidate)
    out = capsys.readouterr().out
    assert f"only in the reference (1): {items[0]['img_id']!r}" in out
    assert "only in the candidate (1): 'elsewhere/extra'" in out
    code, report = compare_files(references["caffe"], candidate, "--same-images")
    assert report is not None and code == 1
    assert report["verdict"].endswith("the same images (failed)")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("photo.jpg", "--features", "CANDIDATE"), "give no IMAGES with it"),
        (("--exact",), "--exact applies to --features CANDIDATE only"),
        (("--features", "CANDIDATE", "--require", "full"), "--require full needs IMAGES"),
        ((), "give IMAGES to check our detector, or --features CANDIDATE"),
        (("--features", "missing.tsv"), "cannot read the candidate (--features)"),
        (("--features", "notes.json"), "--features notes.json: give a feature file"),
    ],
)
def test_file_comparison_usage_errors_name_the_flag(
    references: dict[str, Path], tmp_path: Path, capsys, flags: tuple[str, ...], message: str
) -> None:
    candidate = str(references["detectron2"])
    args = [candidate if f == "CANDIDATE" else f for f in flags]
    code = run("compare", references["caffe"], *args)
    assert code == 2 and message in capsys.readouterr().err


def test_a_float16_round_trip_is_reported_as_such(
    references: dict[str, Path], tmp_path: Path, capsys
) -> None:
    """convert --feature-dtype float16 and back: features are the reference's rounded to
    float16, and the report says so (the issue's "compare reports it as such")."""
    half = tmp_path / "half.parquet"
    code = run("convert", references["caffe"], "--to", "parquet", half, "--feature-dtype",
               "float16", "-q")  # fmt: skip
    assert code == 0
    code, report = compare_files(references["caffe"], half, "--exact")
    assert report is not None and code == 1  # --exact: float16 is not the reference's bytes
    assert report["feature_rounding"] == "float16"
    assert {image["feature_rounding"] for image in report["per_image"]} == {"float16"}
    assert "; values within float16 rounding" in report["verdict"]
    assert report["first_difference"]["field"] == "features"
    run("compare", references["caffe"], "--features", half)
    assert "within float16 rounding on every same box" in capsys.readouterr().out


def test_feature_rounding_tells_equal_float16_and_other() -> None:
    values = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32) * 3
    half = values.astype(np.float16)
    assert feature_rounding(values, values.copy()) == "equal"
    assert feature_rounding(values, half) == "float16"
    assert feature_rounding(half, values) == "float16"  # whichever file holds the float16
    assert feature_rounding(values, half.astype(np.float32)) == "float16"
    off = half.copy()
    off[2, 3] = np.nextafter(off[2, 3], np.float16(np.inf))  # one float16 step away
    assert feature_rounding(values, off) == "other"
