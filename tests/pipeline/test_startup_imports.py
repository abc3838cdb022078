"""Start-up stays cheap: the command modules do not import heavy packages they do not need yet.

Each check runs in a fresh interpreter and looks at ``sys.modules``; nothing here times anything.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Never imported by the extract_features path: the encoder's stack, the compiler stack
#: (pulled by the torchvision package through torchvision.ops.roi_align), FLOP counting.
NOT_FOR_EXTRACTION = ("transformers", "torch._dynamo", "torchvision", "fvcore", "encoder")


def modules_after(statement: str, names: tuple[str, ...]) -> set[str]:
    """Which of ``names`` are in ``sys.modules`` after running ``statement`` in a fresh
    interpreter."""
    code = f"import sys\n{statement}\nprint(','.join(n for n in {names!r} if n in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return set(filter(None, done.stdout.strip().split(",")))


def test_extract_features_command_imports_no_encoder_or_compiler_stack() -> None:
    assert modules_after("import pipeline.commands.extract", NOT_FOR_EXTRACTION) == set()


@pytest.mark.parametrize(
    "module",
    [
        "pipeline",
        "pipeline.commands.extract",
        "pipeline.commands.answer",
        "pipeline.commands.judge",
        "pipeline.commands.demo",
        "weights",
        "weights.__main__",
        # What the commands check their flags, inputs and model names with (issue 29).
        "detector",
        "detector.config",
        "detector.checkpoint_config",
        "pipeline.extract.settings",
        "pipeline.merge",
        "pipeline.convert",
        "pipeline.compare",
        "pipeline.commands.finetune.command",
        "encoder",
        "encoder.finetune",
        "encoder.finetune.config",
        "encoder.finetune.layout",
    ],
)
def test_light_modules_do_not_import_torch(module: str) -> None:
    assert modules_after(f"import {module}", ("torch", "transformers")) == set()


def test_lazy_package_exports_are_the_submodules_own() -> None:
    """detector, encoder and encoder.finetune export their names when first asked for (so
    that their torch-free submodules import without torch): each resolves to its own
    submodule's object, and ``__all__`` names exactly what can be asked for."""
    import importlib

    for name in ("detector", "encoder", "encoder.finetune"):
        package = importlib.import_module(name)
        assert sorted(package.__all__) == sorted(package._EXPORTS), name
        for exported, module in package._EXPORTS.items():
            own = getattr(importlib.import_module(module), exported)
            assert getattr(package, exported) is own, f"{name}.{exported}"
        assert not hasattr(package, "no_such_name"), name


def test_detector_runs_without_the_torchvision_package() -> None:
    # Loading and running the shipped detector uses torchvision's compiled ops only.
    statement = (
        "import numpy as np\n"
        "from detector import load_detector\n"
        "from detector.preprocess import preprocess_for\n"
        "d = load_detector('shapes-detector', device='cpu')\n"
        "image = np.full((64, 80, 3), 128, dtype=np.uint8)\n"
        "assert d.detect([preprocess_for(image, d.config)])[0].num_boxes > 0"
    )
    loaded = modules_after(statement, ("torchvision", "torch._dynamo", "transformers"))
    assert loaded == set()


def test_the_ray_decode_stage_decodes_without_torch(tmp_path: Path) -> None:
    """A Ray decode task imports its stage, decodes and pickles its outcomes (as Ray does to
    send them on) without loading torch; the pixels are those the local engine prepares."""
    import pickle

    from detector.config import get_preset
    from detector.preprocess import prepare

    image, bad = ROOT / "examples" / "scene_000.png", tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    sent = tmp_path / "outcomes.pickle"
    statement = (
        "import pickle\n"
        "import numpy as np\n"
        "from detector.config import get_preset\n"
        "from pipeline.extract.engines.ray_decode import DecodeImages\n"
        "decode = DecodeImages(config=get_preset('shapes'), max_pixels=10**8, "
        "max_bytes=10**8, boxes=None)\n"
        "files = np.array([" + repr(str(image)) + ", " + repr(str(bad)) + "], dtype=object)\n"
        "batch = {'index': np.arange(2), 'image_id': np.array(['a', 'b'], dtype=object), "
        "'path': files, 'file': files}\n"
        f"open({str(sent)!r}, 'wb').write(pickle.dumps(decode(batch)['outcome']))"
    )
    assert modules_after(statement, ("torch",)) == set()
    decoded, failed = pickle.loads(sent.read_bytes())
    local = prepare(str(image), config=get_preset("shapes"), image_id="a")
    assert (decoded.image_id, decoded.scale) == (local.image_id, local.scale)
    assert decoded.pixels.tobytes() == local.pixels.tobytes()
    assert (failed.image_id, failed.path) == ("b", str(bad))
