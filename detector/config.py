"""Detector configuration: one frozen dataclass, presets by name.

``vg-r101-c4-attr`` is the real bottom-up-attention model (ResNet-101 C4, Visual Genome 1600
objects / 400 attributes) with the Caffe extractor's preprocessing and LXMERT's box selection.
Smaller presets run the same code with fewer blocks and channels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from detector.anchors import caffe_cell_anchor_rows

Selection = Literal["bottom-up", "max-class"]
#: The test-time proposal layer (:mod:`detector.proposals`).
ProposalMode = Literal["detectron2", "caffe"]
#: The ``proposals`` field: a mode, or ``auto`` (chosen by the selection).
ProposalsSetting = Literal["auto", "detectron2", "caffe"]
#: The proposal layer of every run and checkpoint made before configs recorded one: a stored
#: config or manifest without a ``proposals`` entry ran Detectron2's layer.
PROPOSALS_BEFORE_THE_FIELD: ProposalMode = "detectron2"

#: Class-agnostic NMS thresholds tried in order by ``max-class`` selection
#: (py-bottom-up-attention's LXMERT script: numpy.arange(0.3, 1.0, 0.1)).
MAX_CLASS_NMS_THRESHOLDS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class DetectorConfig:
    """Everything that shapes the detector's forward pass and its box selection.

    Units: sizes in pixels of the resized image unless stated; thresholds are IoU or
    probabilities in [0, 1].
    """

    name: str = "vg-r101-c4-attr"
    """Preset name this config came from (recorded in manifests)."""

    # --- input -----------------------------------------------------------------------------
    pixel_mean: tuple[float, float, float] = (102.9801, 115.9465, 122.7717)
    """Per-channel mean subtracted from the BGR float image (Caffe VGG/ResNet means)."""
    pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Per-channel divisor after the mean; 1 for the Caffe model."""
    min_size: int = 600
    """Target length of the short side after resizing (Caffe TEST.SCALES)."""
    max_size: int = 1000
    """Upper bound on the long side after resizing (Caffe TEST.MAX_SIZE)."""

    # --- backbone (ResNet C4) --------------------------------------------------------------
    stage_blocks: tuple[int, int, int, int] = (3, 4, 23, 3)
    """Bottleneck blocks in res2, res3, res4, res5 (ResNet-101)."""
    stem_channels: int = 64
    """Output channels of the 7x7 stem conv."""
    res2_channels: int = 256
    """Output channels of res2; res3/res4/res5 double it at each stage."""
    bottleneck_width: int = 64
    """Bottleneck channels of res2 (num_groups x width_per_group); doubles per stage."""
    res5_dilation: int = 2
    """Dilation of every 3x3 conv in res5; its first block has stride 1, so RoIs stay 14x14."""
    bn_eps: float = 1e-5
    """Epsilon of the frozen batch norms (Detectron2's FrozenBatchNorm2d)."""

    # --- RPN -------------------------------------------------------------------------------
    anchor_sizes: tuple[float, ...] = (64.0, 128.0, 256.0, 512.0)
    """Anchor side lengths in resized-image pixels."""
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    """Anchor aspect ratios, height / width. Cell anchors are size-major (Detectron2 order)."""
    rpn_channels: int = 512
    """Channels of the RPN's 3x3 conv on res4."""
    rpn_pre_nms_topk: int = 6000
    """Proposals kept by objectness before NMS, per image."""
    rpn_post_nms_topk: int = 300
    """Proposals kept after NMS, per image."""
    rpn_nms_thresh: float = 0.7
    """IoU threshold of the RPN's NMS (detectron2 proposals: suppress IoU > thresh; caffe
    proposals: +1-pixel IoU, suppress IoU >= thresh)."""
    rpn_min_box_size: float = 0.0
    """detectron2 proposals: a side <= this (resized pixels) is dropped after clipping. (caffe
    proposals drop sides below ``detector.proposals.CAFFE_RPN_MIN_SIZE`` raw pixels.)"""
    proposals: ProposalsSetting = "auto"
    """Test-time proposal layer: ``detectron2``, ``caffe`` (the original Caffe model's
    ``proposal_layer.py``) or ``auto``: caffe with bottom-up selection (LXMERT's features were
    made by Caffe), detectron2 with max-class (the HF demo). Consumers read
    :attr:`proposal_mode`."""
    anchor_base_size: int = 16
    """caffe proposals: side of ``generate_anchors``' reference box ``[0, 0, base - 1, base -
    1]``, which is rounded per ratio and then scaled by ``anchor_sizes / base``."""

    # --- RoI heads -------------------------------------------------------------------------
    pooler_resolution: int = 14
    """RoIPool output size; res5 keeps it (stride 1, dilation 2)."""
    num_classes: int = 1600
    """Object classes, without background (background is index ``num_classes``, last)."""
    num_attributes: int = 400
    """Attribute classes, without "no attribute" (which is index ``num_attributes``, last)."""
    attr_embed_dim: int = 256
    """Size of the class embedding fed to the attribute head."""
    attr_hidden_dim: int = 512
    """Hidden size of the attribute head (fc_attr)."""

    # --- box selection ---------------------------------------------------------------------
    selection: Selection = "bottom-up"
    """``bottom-up`` (Caffe generate_tsv, LXMERT's features) or ``max-class`` (HF demo)."""
    min_boxes: int = 36
    """Fewest regions per image."""
    max_boxes: int = 36
    """Most regions per image."""
    conf_thresh: float = 0.2
    """bottom-up: regions whose best surviving class score is below this are dropped."""
    nms_thresh: float = 0.3
    """bottom-up: per-class NMS IoU threshold (Caffe IoU, suppress IoU >= thresh)."""
    max_class_nms_thresholds: tuple[float, ...] = MAX_CLASS_NMS_THRESHOLDS
    """max-class: class-agnostic NMS thresholds tried in order until min_boxes survive."""

    def __post_init__(self) -> None:
        if self.selection not in ("bottom-up", "max-class"):
            raise ValueError(
                f"selection must be 'bottom-up' or 'max-class', got {self.selection!r}"
            )
        if not 1 <= self.min_boxes <= self.max_boxes:
            raise ValueError(
                f"need 1 <= min_boxes <= max_boxes, got {self.min_boxes}..{self.max_boxes}"
            )
        if self.min_size <= 0 or self.max_size < self.min_size:
            raise ValueError(f"need 0 < min_size <= max_size, got {self.min_size}/{self.max_size}")
        if not self.max_class_nms_thresholds:
            raise ValueError("max_class_nms_thresholds must not be empty")
        if self.proposal_mode == "caffe":  # resolving also rejects an unknown setting
            try:
                caffe_cell_anchor_rows(
                    base_size=self.anchor_base_size,
                    sizes=self.anchor_sizes,
                    ratios=self.anchor_ratios,
                )
            except ValueError as error:
                raise ValueError(
                    f"preset {self.name!r} cannot run caffe proposals (proposals="
                    f"{self.proposals!r}, selection {self.selection!r}): {error}; "
                    "use proposals='detectron2'"
                ) from None

    @property
    def proposal_mode(self) -> ProposalMode:
        """The proposal layer this config runs: :attr:`proposals` with ``auto`` resolved."""
        return resolve_proposals(self.proposals, self.selection)

    @property
    def num_anchors(self) -> int:
        """Cell anchors per feature-map location."""
        return len(self.anchor_sizes) * len(self.anchor_ratios)

    @property
    def res4_channels(self) -> int:
        """Channels of the res4 feature map the RPN and RoI pooling read."""
        return self.res2_channels * 4

    @property
    def feature_dim(self) -> int:
        """Channels of res5, i.e. the size of each region feature (2048 for ResNet-101)."""
        return self.res2_channels * 8

    def replace(self, **changes: Any) -> DetectorConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field (tuples become lists)."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }


def resolve_proposals(proposals: str, selection: str) -> ProposalMode:
    """The proposal layer for a ``proposals`` setting and a ``selection`` mode: ``auto`` is
    ``caffe`` for ``bottom-up`` (whose purpose is LXMERT's own features, made by Caffe) and
    ``detectron2`` for ``max-class`` (the py-bottom-up-attention / HF demo behaviour)."""
    if proposals == "auto":
        return "caffe" if selection == "bottom-up" else "detectron2"
    if proposals == "caffe":
        return "caffe"
    if proposals == "detectron2":
        return "detectron2"
    raise ValueError(f"proposals must be 'auto', 'detectron2' or 'caffe', got {proposals!r}")


PRESETS: dict[str, DetectorConfig] = {
    "vg-r101-c4-attr": DetectorConfig(),
    # Same model with the py-bottom-up-attention / Hugging Face demo box selection.
    "vg-r101-c4-attr-maxclass": DetectorConfig(
        name="vg-r101-c4-attr-maxclass", selection="max-class", min_boxes=10, max_boxes=36
    ),
    # Adaptive bottom-up: 10 to 100 boxes per image.
    "vg-r101-c4-attr-adaptive": DetectorConfig(
        name="vg-r101-c4-attr-adaptive", min_boxes=10, max_boxes=100
    ),
    # The shapes-world model shipped in weights/shipped/shapes-detector (shapesworld/train.py):
    # 6 shape classes, 7 colour attributes, square anchors, 7x7 RoIs, 256-d region features.
    # Trained and evaluated with Detectron2's proposal layer, so pinned to it.
    "shapes": DetectorConfig(
        name="shapes",
        pixel_std=(57.375, 57.12, 58.395),
        min_size=288,
        max_size=480,
        stage_blocks=(1, 2, 2, 1),
        stem_channels=16,
        res2_channels=32,
        bottleneck_width=8,
        res5_dilation=1,
        anchor_sizes=(36.0, 51.0, 72.0, 102.0, 144.0),
        anchor_ratios=(1.0,),
        rpn_channels=64,
        proposals="detectron2",
        rpn_pre_nms_topk=1000,
        rpn_post_nms_topk=100,
        pooler_resolution=7,
        num_classes=6,
        num_attributes=7,
        attr_embed_dim=16,
        attr_hidden_dim=64,
        min_boxes=4,
        max_boxes=16,
    ),
    # A tiny variant for unit tests: same code paths, a few hundred kB of weights.
    "tiny": DetectorConfig(
        name="tiny",
        min_size=96,
        max_size=160,
        stage_blocks=(1, 1, 1, 1),
        stem_channels=8,
        res2_channels=16,
        bottleneck_width=4,
        anchor_sizes=(16.0, 32.0, 64.0, 128.0),
        rpn_channels=16,
        rpn_pre_nms_topk=600,
        rpn_post_nms_topk=50,
        num_classes=12,
        num_attributes=7,
        attr_embed_dim=8,
        attr_hidden_dim=16,
        min_boxes=5,
        max_boxes=10,
    ),
}


def get_preset(name: str) -> DetectorConfig:
    """The preset called ``name``; ``KeyError`` lists the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(
            f"unknown detector preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}"
        ) from None
