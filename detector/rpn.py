"""Region proposal network on res4: Detectron2's anchors and head layout, and either proposal
layer of :mod:`detector.proposals` (Detectron2's or the original Caffe model's)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from detector.proposals import (
    RPN_BOX_WEIGHTS,
    caffe_cell_anchors,
    caffe_proposals,
    detectron2_proposals,
)

if TYPE_CHECKING:
    from detector.config import ProposalMode

__all__ = ["RPN", "RPN_BOX_WEIGHTS", "AnchorGenerator", "RPNHead", "RPNOutput", "cell_anchors"]


def cell_anchors(sizes: Sequence[float], ratios: Sequence[float]) -> torch.Tensor:
    """Anchors centred on (0, 0), size-major (Detectron2 order).

    Returns:
        ``Tensor[len(sizes) * len(ratios), 4]`` xyxy, resized-image pixels. Ratio is h / w and
        each anchor has area size**2.
    """
    anchors = []
    for size in sizes:
        area = float(size) ** 2.0
        for ratio in ratios:
            w = math.sqrt(area / ratio)
            h = ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors, dtype=torch.float32)


class AnchorGenerator(nn.Module):
    """Tiles the cell anchors over a feature map of stride ``stride`` (offset 0, Detectron2)."""

    def __init__(self, *, sizes: Sequence[float], ratios: Sequence[float], stride: int) -> None:
        super().__init__()
        self.stride = stride
        # A child module holding buffer "0" gives the key "cell_anchors.0" of Detectron2's
        # BufferList, so real checkpoints carry the anchors they were trained with.
        self.cell_anchors = nn.Module()
        self.cell_anchors.register_buffer("0", cell_anchors(sizes, ratios))

    @property
    def base_anchors(self) -> torch.Tensor:
        """``Tensor[A, 4]`` the cell anchors."""
        return getattr(self.cell_anchors, "0")

    def forward(self, height: int, width: int, *, cell: torch.Tensor | None = None) -> torch.Tensor:
        """All anchors of an ``height x width`` map: ``Tensor[H * W * A, 4]`` xyxy, resized pixels.

        Order: row-major over locations, then the A cell anchors at each location. ``cell``
        (``Tensor[A, 4]``) replaces :attr:`base_anchors` (the Caffe rule's anchors).
        """
        base = self.base_anchors if cell is None else cell
        device = base.device
        shifts_x = torch.arange(0, width * self.stride, step=self.stride, device=device)
        shifts_y = torch.arange(0, height * self.stride, step=self.stride, device=device)
        shift_y, shift_x = torch.meshgrid(shifts_y.float(), shifts_x.float(), indexing="ij")
        shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
        return (shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4)


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then 1x1 convs for A objectness logits and 4A anchor deltas."""

    def __init__(self, *, in_channels: int, hidden_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden_channels, kernel_size=3, padding=1)
        self.objectness_logits = nn.Conv2d(hidden_channels, num_anchors, kernel_size=1)
        self.anchor_deltas = nn.Conv2d(hidden_channels, num_anchors * 4, kernel_size=1)
        for layer in (self.conv, self.objectness_logits, self.anchor_deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)  # type: ignore[arg-type]

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """res4 ``[B, C, H, W]`` -> (logits ``[B, H*W*A]``, deltas ``[B, H*W*A, 4]``)."""
        hidden = F.relu(self.conv(features))
        logits = self.objectness_logits(hidden)
        deltas = self.anchor_deltas(hidden)
        batch, num_anchors, height, width = logits.shape
        logits = logits.permute(0, 2, 3, 1).reshape(batch, -1)
        deltas = (
            deltas.view(batch, num_anchors, 4, height, width)
            .permute(0, 3, 4, 1, 2)
            .reshape(batch, -1, 4)
        )
        return logits, deltas


@dataclass(frozen=True, eq=False)
class RPNOutput:
    """Raw RPN predictions for a batch (kept for training) and the proposals per image.

    Attributes:
        anchors: ``Tensor[H*W*A, 4]`` xyxy, resized pixels (shared by the batch).
        logits: ``Tensor[B, H*W*A]`` objectness logits.
        deltas: ``Tensor[B, H*W*A, 4]`` anchor deltas.
        proposals: per image ``Tensor[R_i, 4]`` xyxy, resized pixels, by objectness descending.
        proposal_logits: per image ``Tensor[R_i]`` their objectness logits.
    """

    anchors: torch.Tensor
    logits: torch.Tensor
    deltas: torch.Tensor
    proposals: list[torch.Tensor]
    proposal_logits: list[torch.Tensor]


class RPN(nn.Module):
    """Anchors + head + a test-time proposal layer for one feature level.

    ``proposal_mode="detectron2"``: the cell anchors of :attr:`anchor_generator` (the preset's, or
    the checkpoint's stored ``cell_anchors.0`` once loaded) and
    :func:`~detector.proposals.detectron2_proposals`. ``"caffe"``: the anchors of
    :func:`~detector.proposals.caffe_cell_anchors` for the same sizes and ratios (a buffer
    outside the state dict; stored anchors stay loaded but unused) and
    :func:`~detector.proposals.caffe_proposals`, which needs each image's ``im_scale``.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        hidden_channels: int,
        anchor_sizes: Sequence[float],
        anchor_ratios: Sequence[float],
        stride: int,
        pre_nms_topk: int,
        post_nms_topk: int,
        nms_thresh: float,
        min_box_size: float,
        proposal_mode: ProposalMode = "detectron2",
        anchor_base_size: int = 16,
    ) -> None:
        super().__init__()
        if proposal_mode not in ("detectron2", "caffe"):
            raise ValueError(
                f"proposal_mode must be 'detectron2' or 'caffe', got {proposal_mode!r}"
            )
        self.proposal_mode: ProposalMode = proposal_mode
        self.num_sizes, self.num_ratios = len(anchor_sizes), len(anchor_ratios)
        self.anchor_generator = AnchorGenerator(
            sizes=anchor_sizes, ratios=anchor_ratios, stride=stride
        )
        self.rpn_head = RPNHead(
            in_channels=in_channels,
            hidden_channels=hidden_channels,
            num_anchors=len(anchor_sizes) * len(anchor_ratios),
        )
        self.pre_nms_topk = pre_nms_topk
        self.post_nms_topk = post_nms_topk
        self.nms_thresh = nms_thresh
        self.min_box_size = min_box_size
        if proposal_mode == "caffe":
            # Not persistent: the checkpoint's keys stay Detectron2's; moves with .to().
            caffe = caffe_cell_anchors(
                base_size=anchor_base_size, sizes=anchor_sizes, ratios=anchor_ratios
            )
            self.register_buffer("caffe_cell_anchors", caffe, persistent=False)

    def forward(
        self,
        features: torch.Tensor,
        image_size: tuple[int, int],
        *,
        image_scales: Sequence[float] | None = None,
    ) -> RPNOutput:
        """Proposals for a batch of images that share one resized ``image_size`` (h, w).

        ``image_scales``: each image's ``im_scale`` (resized / raw, ``PreparedImage.scale``),
        which the caffe layer's minimum size depends on; default 1.0 each (the tensor is the
        raw image). The detectron2 layer ignores it.
        """
        logits, deltas = self.rpn_head(features)
        batch = logits.shape[0]
        scales = [1.0] * batch if image_scales is None else [float(s) for s in image_scales]
        if len(scales) != batch:
            raise ValueError(f"got {len(scales)} image_scales for a batch of {batch} images")
        caffe = self.proposal_mode == "caffe"
        cell = self.get_buffer("caffe_cell_anchors") if caffe else None
        anchors = self.anchor_generator(features.shape[2], features.shape[3], cell=cell)
        proposals, proposal_logits = [], []
        # Decoding and NMS in fp32 whatever the convs ran in (autocast on CUDA).
        for image_logits, image_deltas, scale in zip(
            logits.float(), deltas.float(), scales, strict=True
        ):
            if caffe:
                boxes, kept_logits = caffe_proposals(
                    image_logits,
                    image_deltas,
                    anchors,
                    image_size=image_size,
                    im_scale=scale,
                    num_sizes=self.num_sizes,
                    num_ratios=self.num_ratios,
                    pre_nms_topk=self.pre_nms_topk,
                    post_nms_topk=self.post_nms_topk,
                    nms_thresh=self.nms_thresh,
                )
            else:
                boxes, kept_logits = detectron2_proposals(
                    image_logits,
                    image_deltas,
                    anchors,
                    image_size=image_size,
                    pre_nms_topk=self.pre_nms_topk,
                    post_nms_topk=self.post_nms_topk,
                    nms_thresh=self.nms_thresh,
                    min_box_size=self.min_box_size,
                )
            proposals.append(boxes)
            proposal_logits.append(kept_logits)
        return RPNOutput(anchors, logits, deltas, proposals, proposal_logits)
