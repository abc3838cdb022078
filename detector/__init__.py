"""Bottom-up-attention Faster R-CNN (ResNet-101 C4, Visual Genome) on torchvision ops.

Raw image in, :class:`RegionFeatures` out. Never imports transformers.

The names below are imported when first asked for (PEP 562), so that ``import detector.vocab``
or ``detector.config`` does not import torch: the commands check their arguments, files and
model names with those before torch is loaded (issue 29).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from weights.lazy import lazy_exports

if TYPE_CHECKING:
    from detector.checkpoint import load_detector, save_detector
    from detector.checkpoint_config import detector_config
    from detector.config import PRESETS, DetectorConfig, get_preset
    from detector.model import Detector, build_detector
    from detector.options import InferenceOptions, ResolvedOptions
    from detector.structures import CheckpointInfo, RegionFeatures

#: Each exported name and the submodule that defines it.
_EXPORTS = {
    "PRESETS": "detector.config",
    "CheckpointInfo": "detector.structures",
    "Detector": "detector.model",
    "DetectorConfig": "detector.config",
    "InferenceOptions": "detector.options",
    "RegionFeatures": "detector.structures",
    "ResolvedOptions": "detector.options",
    "build_detector": "detector.model",
    "detector_config": "detector.checkpoint_config",
    "get_preset": "detector.config",
    "load_detector": "detector.checkpoint",
    "save_detector": "detector.checkpoint",
}

__all__ = [
    "PRESETS",
    "CheckpointInfo",
    "Detector",
    "DetectorConfig",
    "InferenceOptions",
    "RegionFeatures",
    "ResolvedOptions",
    "build_detector",
    "detector_config",
    "get_preset",
    "load_detector",
    "save_detector",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
