"""RegionFeatures of a batch of images to LXMERT's visual inputs.

LXMERT's ``visual_pos`` is xyxy normalised by the raw image size, in [0, 1]; that conversion is
``RegionFeatures.normalized_boxes`` and lives there only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from detector.structures import RegionFeatures


@dataclass(frozen=True)
class VisualInputs:
    """Visual inputs of a batch, padded to the image with the most boxes.

    Attributes:
        visual_feats: float32 ``[B, N, D]`` region features; zeros at padding.
        visual_pos: float32 ``[B, N, 4]`` xyxy normalised by (w, h, w, h), in [0, 1]; zeros at
            padding.
        visual_attention_mask: int64 ``[B, N]``, 1 for real boxes, 0 for padding.
    """

    visual_feats: torch.Tensor
    visual_pos: torch.Tensor
    visual_attention_mask: torch.Tensor

    def to(self, device: torch.device | str) -> VisualInputs:
        """A copy on ``device``."""
        return VisualInputs(
            visual_feats=self.visual_feats.to(device),
            visual_pos=self.visual_pos.to(device),
            visual_attention_mask=self.visual_attention_mask.to(device),
        )


def build_visual_inputs(regions: Sequence[RegionFeatures]) -> VisualInputs:
    """Stack and pad the regions of B images (adaptive mode gives different box counts).

    Raises ``ValueError`` naming the image for a box outside its image, an image without boxes,
    or a feature size that differs from the first image's.
    """
    if len(regions) == 0:
        raise ValueError("build_visual_inputs needs at least one RegionFeatures")
    for item in regions:
        if not isinstance(item, RegionFeatures):
            raise TypeError(f"expected RegionFeatures, got {type(item).__name__}")
    dim = regions[0].features.shape[1]
    for item in regions:
        if item.num_boxes == 0:
            raise ValueError(f"image {item.image_id!r} has no boxes; LXMERT needs at least one")
        if item.features.shape[1] != dim:
            raise ValueError(
                f"image {item.image_id!r} has {item.features.shape[1]}-d features but image "
                f"{regions[0].image_id!r} has {dim}-d; all images of a batch need one size"
            )
    batch, longest = len(regions), max(item.num_boxes for item in regions)
    feats = np.zeros((batch, longest, dim), np.float32)
    pos = np.zeros((batch, longest, 4), np.float32)
    mask = np.zeros((batch, longest), np.int64)
    for row, item in enumerate(regions):
        n = item.num_boxes
        pos[row, :n] = item.normalized_boxes
        feats[row, :n] = item.features
        mask[row, :n] = 1
    return VisualInputs(
        visual_feats=torch.from_numpy(feats),
        visual_pos=torch.from_numpy(pos),
        visual_attention_mask=torch.from_numpy(mask),
    )
