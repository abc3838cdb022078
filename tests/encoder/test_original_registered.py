"""Original LXMERT checkpoints registered by name (``python -m weights register``: a local
file, or a URL with its sha256 served here by a real HTTP server) load wherever a model is
named: ``encoder=NAME`` (load_encoder), ``--from NAME`` (prepare_encoder) and
``answer --encoder NAME``, exactly as the file named by its path."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from encoder_fixtures import FEAT_DIM, make_regions
from original_fixtures import key_file, scaled_state, with_data_parallel

from encoder.answers import AnswerTable
from encoder.build import Encoder, load_encoder
from encoder.finetune import FinetuneConfig
from encoder.finetune.model import prepare_encoder
from encoder.model import build_model
from encoder.original import save_original, write_sidecars
from pipeline.commands.answer import main as answer_main
from weights.__main__ import main as weights_main
from weights.registered import register

ROOT = Path(__file__).resolve().parents[2]
#: Real vocabulary (the shipped tokenizer's), hidden 64 (one head by BERT's rule).
REAL_VOCAB = {"hidden": 64, "vocab": 30522, "feat": FEAT_DIM, "positions": 40}


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Registrations and downloads in <tmp>; the network allowed (only 127.0.0.1 is asked)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    for name in (
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "LXMERT_PIPELINE_WEIGHTS",
    ):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server (a thread) serving <tmp>/www; yields its base URL and the folder."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _logits(encoder: Encoder) -> torch.Tensor:
    regions = [make_regions("a", 5, seed=1), make_regions("b", 7, seed=2)]
    questions = ["what color is the cube?", "how many spheres?"]
    with torch.no_grad():
        output = encoder.model(**encoder.model_inputs(regions, questions))
    return output.question_answering_score


def test_the_state_dict_has_the_key_file_s_names_and_shapes() -> None:
    state = scaled_state("vqa", answers=3129, **REAL_VOCAB)
    assert list(state) == list(key_file("vqa"))
    small = {768: 64, 3072: 256, 1536: 128, 30522: 30522, 2048: FEAT_DIM, 512: 40}
    for key, shape in key_file("vqa").items():
        assert tuple(state[key].shape) == tuple(small.get(d, d) for d in shape), key


def test_a_local_file_registered_by_name_loads_as_by_path(tmp_path: Path) -> None:
    path = tmp_path / "BEST.pth"
    torch.save(scaled_state("vqa", answers=3129, **REAL_VOCAB), path)
    assert weights_main(["register", "my-vqa", str(path)]) == 0  # the kind read: vqa
    by_name, by_path = load_encoder("my-vqa", device="cpu"), load_encoder(str(path), device="cpu")
    assert by_name.answers is not None and by_name.answers.name == "vqa"
    assert by_name.config.checkpoint == "my-vqa"
    assert torch.equal(_logits(by_name), _logits(by_path))
    with pytest.raises(ValueError, match="names an original LXMERT checkpoint file"):
        build_model("my-vqa")


def test_a_url_registered_with_its_sha256_downloads_and_loads_as_by_path(
    served: tuple[str, Path], isolated: Path
) -> None:
    base, root = served
    path = root / "BEST.pth"
    torch.save(with_data_parallel(scaled_state("gqa", answers=1842, **REAL_VOCAB)), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    register("my-gqa", f"{base}/BEST.pth", sha256=digest, kind="gqa")
    by_name = load_encoder("my-gqa", device="cpu")
    cached = isolated / "hf-home" / "hub" / "lxmert-pipeline-downloads" / digest / "BEST.pth"
    assert cached.read_bytes() == path.read_bytes()
    assert torch.equal(_logits(by_name), _logits(load_encoder(str(path), device="cpu")))


def test_from_a_registered_model_lxrt_uses_lxmert_s_rule_as_by_path(tmp_path: Path) -> None:
    path = tmp_path / "model_LXRT.pth"
    torch.save(scaled_state("pretraining", **REAL_VOCAB), path)
    register("my-lxrt", str(path))
    task = AnswerTable(name="task", answers=("Two", "grey", "The dog", "not-an-answer-xyz"))
    config = FinetuneConfig()
    by_name, kept = prepare_encoder("my-lxrt", answers=task, config=config, device="cpu")
    by_path, kept_by_path = prepare_encoder(str(path), answers=task, config=config, device="cpu")
    assert kept == kept_by_path == 3  # "2", "gray", "dog" by convert_ans; the last row zero
    for name, tensor in by_path.model.state_dict().items():
        assert torch.equal(by_name.model.state_dict()[name], tensor), name


def test_answer_with_a_registered_name_answers_as_with_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ours = load_encoder("shapes-lxmert", device="cpu")
    assert ours.answers is not None
    path = save_original(ours.model, tmp_path / "BEST.pth", head="qa")
    write_sidecars(ours.model, path, answers=ours.answers.answers)  # heads and answers beside
    assert weights_main(["register", "shapes-original", str(path), "--kind", "vqa"]) == 0
    capsys.readouterr()
    image, question = str(ROOT / "examples" / "scene_000.png"), "what color is the circle?"
    common = [image, question, "-k", "3", "--json", "--detector", "shapes-detector"]
    printed = []
    for encoder in ("shapes-original", str(path)):
        assert answer_main([*common, "--encoder", encoder, "--device", "cpu"]) == 0
        printed.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    assert printed[0] == printed[1] and len(printed[0][0]["answers"]) == 3
    assert answer_main([*common, "--encoder", "not-registered", "--device", "cpu"]) == 2
    assert "not-registered" in capsys.readouterr().err
