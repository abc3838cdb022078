"""extract_features end to end with the tiny preset on real photos."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from gated_driver import gated_command
from PIL import Image
from pipeline_helpers import assert_same_region, lxmert_read_tsv, photo_bgr

from detector import load_detector
from pipeline.commands.extract import build_parser, main
from pipeline.extract.visualize import MIN_PICTURE_SIDE
from pipeline.features.manifest import manifest_path, read_manifest
from pipeline.features.output import journal_path, read_features

REPO = Path(__file__).resolve().parents[2]
IDS = ["astronaut", "cats/chelsea", "coffee", "gray/camera"]


def extract(*args: object) -> int:
    return main([str(arg) for arg in args])


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, photos: Path, tiny_checkpoint: Path):
    """One uninterrupted run over the photos: (tsv path, exit code)."""
    out = tmp_path_factory.mktemp("ref") / "ref.tsv"
    code = extract(photos, "--out", out, "--detector", tiny_checkpoint, "--workers", 0, "-q")
    return out, code


def test_tsv_is_lxmert_obj36_and_matches_the_detector(reference, photos, tiny_checkpoint) -> None:
    out, code = reference
    assert code == 0
    items = lxmert_read_tsv(out)
    assert [item["img_id"] for item in items] == IDS
    detector = load_detector(str(tiny_checkpoint))
    paths = [str(next(photos.glob(f"{image_id}.*"))) for image_id in IDS]
    direct = detector.regions(paths, IDS)
    for item, region in zip(items, direct, strict=True):
        assert (item["img_h"], item["img_w"]) == (region.image_h, region.image_w)
        assert item["num_boxes"] == region.num_boxes == item["boxes"].shape[0]
        assert 5 <= item["num_boxes"] <= 10  # the tiny preset's min/max boxes
        assert item["features"].shape == (region.num_boxes, detector.config.feature_dim)
        for name in ("boxes", "features", "objects_id", "objects_conf", "attrs_id", "attrs_conf"):
            np.testing.assert_array_equal(item[name], getattr(region, name), err_msg=name)
        boxes = item["boxes"]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= item["img_w"]).all()
    assert max(item["img_w"] for item in items) == 200


def test_manifest_describes_the_run(reference, tiny_checkpoint) -> None:
    out, _ = reference
    manifest = read_manifest(manifest_path(out))
    assert manifest["status"] == "finished"
    assert manifest["format"] == "tsv"
    assert (
        manifest["detector"]["sha256"] == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    )
    assert manifest["detector"]["config"]["name"] == "tiny"
    assert manifest["detector"]["config"]["min_boxes"] == 5
    assert manifest["counts"] == {
        "selected": 4,
        "already_done": 0,
        "written": 4,
        "failed": 0,
        "records_in_output": 4,
    }
    assert manifest["failures"] == []
    for name in ("python", "torch", "transformers", "numpy", "h5py"):
        assert name in manifest["versions"]
    seconds = manifest["seconds"]
    assert seconds["detector"] > 0 and seconds["waiting"] > 0  # --workers 0 decodes in line
    parts = seconds["detector"] + seconds["waiting"] + seconds["writing"]
    assert parts <= seconds["loop"] + 0.003  # each part is rounded to ms


@pytest.mark.parametrize(("workers", "batch_size"), [(2, 1), (3, 2)])
def test_decode_threads_write_the_same_bytes(
    reference, photos, tiny_checkpoint, tmp_path, workers: int, batch_size: int
) -> None:
    out = tmp_path / "threads.tsv"
    flags = ["--workers", workers, "--batch-size", batch_size, "-q"]
    assert extract(photos, "--out", out, "--detector", tiny_checkpoint, *flags) == 0
    assert out.read_bytes() == reference[0].read_bytes()


def test_stopping_early_ends_the_decode_threads(photos) -> None:
    import threading

    from detector import get_preset
    from pipeline.extract.decode import PrepareImage
    from pipeline.extract.engines.local import prepared_batches
    from pipeline.extract.inputs import gather_inputs

    items = gather_inputs([str(photos)])
    cv2_threads = cv2.getNumThreads()
    prepare_one = PrepareImage(items=items, config=get_preset("tiny"), max_pixels=10**8)
    batches = prepared_batches(prepare_one, count=len(items), workers=2, batch_size=1)
    first = next(batches)
    assert [image.image_id for image in first] == [items[0].image_id]
    batches.close()  # as when the run is interrupted: queued decodes cancelled, threads joined
    assert not [t for t in threading.enumerate() if t.name.startswith("decode")]
    assert cv2.getNumThreads() == cv2_threads  # OpenCV's own pool restored


def test_existing_output_is_not_clobbered(reference, photos, tiny_checkpoint, capsys) -> None:
    out, _ = reference
    before = out.read_bytes()
    code = extract(photos, "--out", out, "--detector", tiny_checkpoint, "--workers", 0, "-q")
    assert code == 2
    assert "--resume" in capsys.readouterr().err and out.read_bytes() == before
    # Resuming a finished run does nothing and succeeds.
    assert extract(photos, "--out", out, "--detector", tiny_checkpoint, "--resume", "-q") == 0
    assert out.read_bytes() == before


def test_shards_to_hdf5_then_merge_equal_the_single_run(
    reference, photos, tiny_checkpoint, tmp_path
) -> None:
    ref_tsv, _ = reference
    out = tmp_path / "feats.h5"
    for k in (1, 2):
        shard = ["--shard", f"{k}/2", "-q", "--workers", "0"]
        code = extract(photos, "--out", out, "--detector", tiny_checkpoint, *shard)
        assert code == 0
    shards = [tmp_path / "feats.shard-1-of-2.h5", tmp_path / "feats.shard-2-of-2.h5"]
    assert [r.image_id for r in read_features(shards[0])] == IDS[0::2]
    assert not out.exists()
    merged = tmp_path / "merged.tsv"
    assert main(["merge", *map(str, shards), "--out", str(merged), "-q"]) == 0
    assert merged.read_bytes() == ref_tsv.read_bytes()
    assert read_manifest(manifest_path(merged))["counts"]["records_in_output"] == 4
    # HDF5 round trip: the merged HDF5 holds exactly the single run's records.
    merged_h5 = tmp_path / "merged.h5"
    assert subprocess_free_merge(shards, merged_h5) == 0
    for got, want in zip(read_features(merged_h5), read_features(ref_tsv), strict=True):
        assert_same_region(got, want)


def subprocess_free_merge(shards: list[Path], out: Path) -> int:
    from pipeline.commands.merge import main as merge_main

    return merge_main([*map(str, shards), "--out", str(out), "-q"])


def _kill_after_first_record(procs: dict[str, subprocess.Popen], watch: dict[str, Path]) -> None:
    """SIGKILL each process once its file holds one complete record (each is held there by
    its gate, ``gated_driver.py``, so it cannot have finished)."""
    deadline = time.monotonic() + 300
    running = dict(procs)
    while running and time.monotonic() < deadline:
        for name, proc in list(running.items()):
            if watch[name].exists() and b"\n" in watch[name].read_bytes():
                proc.kill()
                proc.wait()
                del running[name]
            elif proc.poll() is not None:
                pytest.fail(f"{name}: ended (code {proc.returncode}) before its first record")
        time.sleep(0.005)
    if running:
        pytest.fail(f"no record appeared in time: {sorted(running)}")


def test_sigkill_then_resume_gives_the_uninterrupted_records(
    reference, photos, tiny_checkpoint, tmp_path
) -> None:
    # 16 inputs: copies of the 4 photos, so the expected records are the reference's. (Copies,
    # not links: one real file under two ids is listed once, pipeline/extract/inputs.py.)
    copies = tmp_path / "copies"
    expected = {}
    for copy in range(4):
        for image_id in IDS:
            source = next(photos.glob(f"{image_id}.*"))
            link = copies / f"c{copy}" / source.relative_to(photos)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.write_bytes(source.read_bytes())
            expected[f"c{copy}/{image_id}"] = image_id
    ref = {r.image_id: r for r in read_features(reference[0])}
    outs = {"tsv": tmp_path / "k.tsv", "h5": tmp_path / "k.h5"}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [copies, "--detector", tiny_checkpoint, "--batch-size", "1", "--workers", "0", "-q"]
    procs = {
        fmt: subprocess.Popen(
            gated_command(tmp_path / f"gate-{fmt}", 1, *args, "--out", out),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fmt, out in outs.items()
    }
    _kill_after_first_record(procs, {"tsv": outs["tsv"], "h5": journal_path(outs["h5"])})
    # Killed mid-run: whatever is there is valid (complete records only) and not finished.
    partial = lxmert_read_tsv(outs["tsv"]) if outs["tsv"].read_bytes().endswith(b"\n") else []
    assert 1 <= len(partial) < 16
    assert read_manifest(manifest_path(outs["tsv"]))["status"] == "running"
    for out in outs.values():
        code = extract(
            copies, "--out", out, "--detector", tiny_checkpoint, "--resume", "--workers", 0, "-q"
        )
        assert code == 0
        got = list(read_features(out))
        assert [r.image_id for r in got] == sorted(expected)
        for region in got:
            want = ref[expected[region.image_id]]
            assert_same_region(region, type(want)(**{**vars(want), "image_id": region.image_id}))
        manifest = read_manifest(manifest_path(out))
        assert manifest["counts"]["records_in_output"] == 16
        assert manifest["counts"]["already_done"] >= 1
    assert not journal_path(outs["h5"]).exists()


@pytest.fixture
def awkward_inputs(tmp_path: Path, png_header_only) -> Path:
    root = tmp_path / "awkward"
    root.mkdir()
    photo = photo_bgr("chelsea")
    jpeg = cv2.imencode(".jpg", photo)[1].tobytes()
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "text.jpg").write_text("this is not an image\n")
    (root / "empty.jpg").write_bytes(b"")
    (root / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    cv2.imwrite(str(root / "one_pixel.png"), np.full((1, 1, 3), 128, np.uint8))
    deep = (photo.astype(np.uint16) * 257)[:, :, 0]
    cv2.imwrite(str(root / "sixteen_bit.png"), deep)
    rgb = Image.fromarray(cv2.cvtColor(photo, cv2.COLOR_BGR2RGB))
    rgb.convert("CMYK").save(root / "cmyk.jpg", "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    rgb.save(root / "rotated.jpg", "JPEG", exif=exif)
    return root


def test_bad_inputs_are_reported_and_skipped(
    awkward_inputs: Path, tiny_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "awkward.h5"
    vis = tmp_path / "vis"
    flags = ["--workers", "1", "--batch-size", "3", "--visualize", vis]
    code = extract(awkward_inputs, "--out", out, "--detector", tiny_checkpoint, *flags)
    assert code == 1  # some inputs failed, the others were written
    err = capsys.readouterr().err
    bad = ["bomb", "empty", "text", "truncated"]
    for name in bad:
        assert f"{name}.{'png' if name == 'bomb' else 'jpg'}:" in err
    manifest = read_manifest(manifest_path(out))
    reasons = {f["image_id"]: f["reason"] for f in manifest["failures"]}
    assert sorted(reasons) == bad
    assert "pixels" in reasons["bomb"]
    assert all(reasons.values())
    records = {r.image_id: r for r in read_features(out)}
    assert sorted(records) == ["cmyk", "one_pixel", "rotated", "sixteen_bit"]
    h, w = photo_bgr("chelsea").shape[:2]
    assert (records["rotated"].image_h, records["rotated"].image_w) == (w, h)  # EXIF applied
    assert (records["cmyk"].image_h, records["cmyk"].image_w) == (h, w)
    assert (records["one_pixel"].image_h, records["one_pixel"].image_w) == (1, 1)
    for image_id, region in records.items():
        drawn = cv2.imread(str(vis / f"{image_id}.png"))
        # A small image is drawn enlarged to a short side of 512, its aspect kept.
        factor = max(1.0, MIN_PICTURE_SIDE / min(region.image_h, region.image_w))
        expected = (round(region.image_h * factor), round(region.image_w * factor))
        assert drawn.shape[:2] == expected
    # Every input failing is its own exit code.
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "text.jpg").write_text("nope")
    code = extract(only_bad, "--out", tmp_path / "none.tsv", "--detector", tiny_checkpoint, "-q")
    assert code == 3


def test_duplicate_ids_stop_before_any_work(tmp_path: Path, capsys, monkeypatch) -> None:
    import pipeline.extract.steps

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the detector was loaded")

    monkeypatch.setattr(pipeline.extract.steps, "load_model", refuse)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "same.jpg").write_bytes(b"x")
    out = tmp_path / "dup.tsv"
    code = extract(
        tmp_path / "a" / "same.jpg", tmp_path / "b", "--out", out, "--detector", "shapes-detector"
    )
    assert code == 2
    assert "'same'" in capsys.readouterr().err
    assert not out.exists() and not manifest_path(out).exists()


def test_selection_flags_reach_the_detector(photos, tiny_checkpoint, tmp_path) -> None:
    out = tmp_path / "mc.tsv"
    flags = "--limit 2 --boxes 4 --selection max-class --nms-thresh 0.3,0.5 --min-size 64 -q"
    code = extract(photos, "--out", out, "--detector", tiny_checkpoint, *flags.split())
    assert code == 0
    items = lxmert_read_tsv(out)
    assert [item["img_id"] for item in items] == IDS[:2]
    assert all(item["num_boxes"] == 4 for item in items)
    config = read_manifest(manifest_path(out))["detector"]["config"]
    assert config["selection"] == "max-class"
    assert config["max_class_nms_thresholds"] == [0.3, 0.5]
    assert config["min_size"] == 64
    flags = ["--nms-thresh", "0.3,0.5", "-q"]
    code = extract(photos, "--out", tmp_path / "bu.tsv", "--detector", tiny_checkpoint, *flags)
    assert code == 2


def test_help_lists_every_flag() -> None:
    text = build_parser().format_help()
    for flag in (
        "--out",
        "--detector",
        "--preset",
        "--selection",
        "--boxes",
        "--min-boxes",
        "--max-boxes",
        "--conf-thresh",
        "--nms-thresh",
        "--min-size",
        "--max-size",
        "--batch-size",
        "--workers",
        "--device",
        "--resume",
        "--overwrite",
        "--shard",
        "--visualize",
        "--limit",
        "--quiet",
        "--verbose",
        "exit codes",
        "merge",
    ):
        assert flag in text, flag


def test_auto_device_without_cuda_is_quiet_and_says_cpu_once_under_v(
    photos, tiny_checkpoint, tmp_path, capsys
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    flags = ("--detector", tiny_checkpoint, "--workers", 0, "--limit", 1)
    assert extract(photos, "--out", tmp_path / "auto.tsv", *flags) == 0
    assert "no CUDA device visible" not in capsys.readouterr().err
    assert extract(photos, "--out", tmp_path / "v.tsv", *flags, "-v") == 0
    assert capsys.readouterr().err.count("no CUDA device visible") == 1
