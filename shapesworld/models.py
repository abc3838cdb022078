"""The shapes-world models as the training writes them and the evaluation reads them: their
folder and file names, the detector's settings, and a scene as the detector's input.

    <out>/shapes-detector/  model.safetensors (config in the metadata), objects_vocab.txt,
                            attributes_vocab.txt
    <out>/shapes-lxmert/    config.json, model.safetensors (``save_pretrained``), label2ans.json

Every file is replaced atomically (``weights.files``), so an interrupted run leaves each file
old or new, never half written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from detector.checkpoint import load_detector, save_detector
from detector.config import DetectorConfig, get_preset
from detector.model import Detector
from detector.preprocess import PreparedImage, preprocess_for
from detector.vocab import ATTRIBUTES_FILE, OBJECTS_FILE
from shapesworld.scenes import Scene
from shapesworld.vocab import ANSWERS, COLORS, SHAPES
from weights.files import atomic_path, atomic_write_text

if TYPE_CHECKING:
    from transformers import LxmertPreTrainedModel

DETECTOR_DIR = "shapes-detector"
LXMERT_DIR = "shapes-lxmert"
DETECTOR_FILE = "model.safetensors"
LABEL2ANS_FILE = "label2ans.json"


def shapes_detector_config() -> DetectorConfig:
    """The detector preset the shipped model was trained with (``detector.config`` "shapes").

    The same C4 Faster R-CNN code, tiny. Images resize to a short side of 288 (long side
    <= 480), so that even small objects (43..107 px squares, hence square anchors of 36..144 px)
    span several stride-16 cells: at 192 the classifier barely told the shapes apart. RoIs pool
    to 7x7 and res5 is undilated (dilated convs take PyTorch's slow CPU path in backward).
    Regions: bottom-up selection, 4..16 boxes.

    Raises:
        RuntimeError: the preset's class or attribute count differs from ``shapesworld.vocab``.
    """
    config = get_preset("shapes")
    if (config.num_classes, config.num_attributes) != (len(SHAPES), len(COLORS)):
        raise RuntimeError("detector preset 'shapes' does not match shapesworld.vocab")
    return config


def prepare_scene(scene: Scene, config: DetectorConfig) -> PreparedImage:
    """Preprocess a scene for a detector with ``config`` (image id ``seed-<seed>``)."""
    return preprocess_for(scene.image_bgr(), config, image_id=f"seed-{scene.seed}")


def write_detector(detector: Detector, directory: Path) -> Path:
    """``model.safetensors`` plus the two vocabulary files into ``directory``; returns the
    weights' path."""
    directory.mkdir(parents=True, exist_ok=True)
    # save_detector replaces its file atomically itself (weights.io.save_safetensors).
    path = save_detector(detector, directory / DETECTOR_FILE)
    atomic_write_text(directory / OBJECTS_FILE, "\n".join(SHAPES) + "\n")
    atomic_write_text(directory / ATTRIBUTES_FILE, "\n".join(COLORS) + "\n")
    return path


def write_lxmert(model: LxmertPreTrainedModel, directory: Path) -> Path:
    """``save_pretrained`` (config.json + model.safetensors) and ``label2ans.json`` into
    ``directory``; returns ``directory``.

    ``save_pretrained`` writes in place, so it writes into a scratch folder beside
    ``directory`` whose files then replace the old ones one by one, atomically.
    """
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=f".{directory.name}.") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for source in sorted(Path(tmp).iterdir()):
            with atomic_path(directory / source.name) as target:
                shutil.copyfile(source, target)
    atomic_write_text(directory / LABEL2ANS_FILE, json.dumps(list(ANSWERS)) + "\n")
    return directory


def load_trained_detector(directory: Path) -> Detector:
    """The detector written by :func:`write_detector` into ``directory``, ready for inference."""
    path = directory / DETECTOR_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; train it first: python -m shapesworld.train --stage detector "
            f"--out {directory.parent}"
        )
    return load_detector(path)
