"""Bottom-up-attention Faster R-CNN (ResNet-101 C4, Visual Genome) on torchvision ops.

Raw image in, :class:`RegionFeatures` out. Never imports transformers.
"""

from detector.checkpoint import detector_config, load_detector, save_detector
from detector.config import PRESETS, DetectorConfig, get_preset
from detector.model import Detector, build_detector
from detector.options import InferenceOptions, ResolvedOptions
from detector.structures import CheckpointInfo, RegionFeatures

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
