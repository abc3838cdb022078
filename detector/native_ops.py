"""torchvision's compiled NMS and RoIPool, without importing the torchvision package for inference.

``import torchvision`` imports all of torchvision (models, datasets, transforms) and, through
``torchvision.ops.roi_align``, all of ``torch._dynamo``: about 2 s of every start-up, for two
kernels. The kernels live in torchvision's compiled library (``_C_stable``); loading that file
registers them as ``torch.ops.torchvision.nms`` / ``roi_pool``, the very ops that
``torchvision.ops.nms`` / ``roi_pool`` call after checking their arguments. So the results are
bit-identical to torchvision's.

What the Python package adds on top (autograd formulas, autocast wrappers, meta kernels for
``torch.compile``) inference here does not use: pooling runs in fp32 with no gradient, and the
compiled modules (trunk, res5) hold no torchvision op. Where a caller needs one of those (a
gradient through RoIPool, a call inside an autocast region, or torchvision already imported),
these functions hand over to the package itself, so every path keeps torchvision's behaviour.
"""

import functools
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import torch


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """``torchvision.ops.nms``: int64 indices of the kept boxes, by decreasing score.

    Args:
        boxes: ``Tensor[N, 4]`` xyxy, any frame (IoU is frame-free); float.
        scores: ``Tensor[N]``.
        iou_threshold: suppress boxes whose IoU with a kept box is > this.
    """
    if _needs_package(boxes, needs_grad=False):
        from torchvision.ops import nms as package_nms

        return package_nms(boxes, scores, iou_threshold)
    _load_library()
    return torch.ops.torchvision.nms(boxes, scores, iou_threshold)


def roi_pool(
    features: torch.Tensor, rois: torch.Tensor, output_size: int, spatial_scale: float
) -> torch.Tensor:
    """``torchvision.ops.roi_pool`` (Caffe rounding, max pool) of each region.

    Args:
        features: ``Tensor[N, C, H, W]``.
        rois: ``Tensor[R, 5]`` (image index, x1, y1, x2, y2), in the pixels of the input that
            ``features`` was computed from (``spatial_scale`` maps them onto ``features``).
        output_size: bins per side ``S``.
        spatial_scale: feature pixels per input pixel (1/16 for res4).

    Returns:
        ``Tensor[R, C, S, S]``.
    """
    if _needs_package(features, needs_grad=features.requires_grad):
        from torchvision.ops import roi_pool as package_roi_pool

        return package_roi_pool(features, rois, output_size, spatial_scale)
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be Tensor[R, 5], got shape {tuple(rois.shape)}")
    _load_library()
    output, _argmax = torch.ops.torchvision.roi_pool(
        features, rois, spatial_scale, output_size, output_size
    )
    return output


def _needs_package(tensor: torch.Tensor, *, needs_grad: bool) -> bool:
    """Whether this call needs what only the Python package registers (see the module's
    docstring), or the package is loaded anyway and costs nothing more."""
    device = tensor.device.type
    autocast = device in ("cpu", "cuda") and torch.is_autocast_enabled(device)
    grad = needs_grad and torch.is_grad_enabled()
    return grad or autocast or "torchvision" in sys.modules


@functools.cache
def _load_library() -> None:
    """Load torchvision's compiled ops into ``torch.ops.torchvision`` once per process (the
    same file, by the same call, that ``import torchvision`` loads)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("torchvision is not installed")
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    loader = (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES)
    library = importlib.machinery.FileFinder(str(package_dir), loader).find_spec("_C_stable")
    if library is None or library.origin is None:
        raise ImportError(f"torchvision's compiled ops (_C_stable) not found in {package_dir}")
    torch.ops.load_library(library.origin)
