"""The bottom-up-attention detector: backbone -> RPN -> res5 RoI heads -> box selection.

``Detector.detect`` takes preprocessed images (see :mod:`detector.preprocess`) and returns one
:class:`~detector.structures.RegionFeatures` per image. Images are grouped by resized shape, so
a batch never pads an image. On CPU a batch gives the same result as one image at a time (each
image runs alone: ``batch_invariant``). On CUDA, by default, only to float rounding, since cuDNN
picks convolution algorithms by batch size, fp32 convolutions run in TF32, and res5 chunks of
100 regions span images; top-k and thresholds can then pick other boxes. The exact mode
(``InferenceOptions(deterministic=True)``, ``--deterministic``) runs each image alone with
deterministic cuDNN and TF32 off, so batches and shards give the same bits as one run.

Grouping by shape, batch sizes and the halving on CUDA out-of-memory are
:mod:`detector.batching`'s.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from detector.backbone import ConvNorm, ResNetC4, fold_frozen_batchnorm

# Batching and out-of-memory splitting live in detector.batching; the names stay importable
# from here, where callers (the engines, the tests) first found them.
from detector.batching import BYTES_PER_MEGAPIXEL as BYTES_PER_MEGAPIXEL
from detector.batching import BatchLimits as BatchLimits
from detector.batching import DetectOutcome as DetectOutcome
from detector.batching import ImageOutOfMemory as ImageOutOfMemory
from detector.batching import ImagesOutOfMemoryError as ImagesOutOfMemoryError
from detector.batching import auto_batch_size as auto_batch_size
from detector.batching import batches_by_shape as batches_by_shape
from detector.batching import run_splitting
from detector.config import DetectorConfig
from detector.given_boxes import CheckedBoxes, check_given_boxes, given_box_rois, given_regions
from detector.image import ChannelOrder, ImageSource
from detector.options import InferenceOptions, ResolvedOptions
from detector.precision import exact_numerics, low_precision
from detector.preprocess import PreparedImage, prepare
from detector.roi_heads import Res5RoIHeads, RoIHeadOutput
from detector.rpn import RPN, RPNOutput
from detector.select import select_regions
from detector.structures import CheckpointInfo, RegionFeatures

FEATURE_STRIDE = 16

#: One image's given boxes: ``[K, 4]`` xyxy, raw-image pixels, as a Tensor or an array.
GivenBoxes = torch.Tensor | np.ndarray


@dataclass(frozen=True, eq=False)
class RawOutput:
    """Everything the network computes for a batch of same-size images (before selection)."""

    features: torch.Tensor
    """res4 ``[B, C4, h/16, w/16]``, in the precision's dtype (bf16/fp16 convs) or fp32."""
    rpn: RPNOutput
    roi: RoIHeadOutput
    """Per-proposal outputs, images concatenated in order (``rpn.proposals`` gives the split)."""

    @staticmethod
    def concat(parts: Sequence[RawOutput]) -> RawOutput:
        """Join the outputs of consecutive sub-batches (same anchors) into one."""
        first = parts[0]
        rpn = RPNOutput(
            anchors=first.rpn.anchors,
            logits=torch.cat([p.rpn.logits for p in parts]),
            deltas=torch.cat([p.rpn.deltas for p in parts]),
            proposals=[box for p in parts for box in p.rpn.proposals],
            proposal_logits=[logit for p in parts for logit in p.rpn.proposal_logits],
        )
        roi = RoIHeadOutput(
            *(torch.cat([getattr(p.roi, f) for p in parts]) for f in RoIHeadOutput.fields())
        )
        return RawOutput(torch.cat([p.features for p in parts]), rpn, roi)


class Detector(nn.Module):
    """ResNet C4 Faster R-CNN with an attribute head, in Detectron2's module layout.

    Submodule names (``backbone``, ``proposal_generator``, ``roi_heads``) match the converted
    checkpoints key for key. Input contract of :meth:`forward_raw`: ``Tensor[B, 3, h, w]``
    float32, BGR minus pixel mean, all images resized to the same ``(h, w)``.

    State besides the weights, each set only by the detector's own methods:

    - :attr:`checkpoint`: where the weights came from (:class:`CheckpointInfo`), given when
      the detector is built;
    - :attr:`options`: the inference settings it runs with (:class:`ResolvedOptions`), set by
      :meth:`optimize_for_inference`, :meth:`apply_options` and :meth:`move_to`;
    - :attr:`bn_folded`: whether frozen batch norm was folded into the convs (one way).
    """

    def __init__(
        self,
        *,
        config: DetectorConfig,
        backbone: ResNetC4,
        proposal_generator: RPN,
        roi_heads: Res5RoIHeads,
        object_names: Sequence[str] | None = None,
        attribute_names: Sequence[str] | None = None,
        checkpoint: CheckpointInfo | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self.roi_heads = roi_heads
        self.object_names = list(object_names or generic_names("object", config.num_classes))
        self.attribute_names = list(
            attribute_names or generic_names("attribute", config.num_attributes)
        )
        self._checkpoint = checkpoint or CheckpointInfo.random_init(config.name)
        self._bn_folded = False
        self._compiled = False
        # Built on the CPU with the CPU defaults, which match the fresh weights' NCHW layout.
        self._requested = InferenceOptions()
        self._options = self._requested.resolve()

    @property
    def checkpoint(self) -> CheckpointInfo:
        """Where the weights came from: name, path, sha256 and preset."""
        return self._checkpoint

    @property
    def options(self) -> ResolvedOptions:
        """The inference settings in force, every per-device default resolved."""
        return self._options

    @property
    def requested_options(self) -> InferenceOptions:
        """The request :attr:`options` was resolved from (:meth:`move_to` re-resolves it)."""
        return self._requested

    @property
    def bn_folded(self) -> bool:
        """True once :meth:`optimize_for_inference` folded frozen BN into the convs."""
        return self._bn_folded

    @property
    def device(self) -> torch.device:
        """Where the weights are (``options.device`` after any of the methods above)."""
        return next(self.parameters()).device

    # --- network -------------------------------------------------------------------------
    def low_precision(self) -> contextlib.AbstractContextManager[None]:
        """Autocast of the trunk's and RPN head's convolutions to ``options.precision``
        (nothing for fp32). Proposal decoding and NMS take fp32 logits and deltas (the RPN
        casts them); the RoI heads run res5 in their own region and the rest in fp32."""
        return low_precision(self._options.device, self._options.precision_dtype)

    def forward_raw(
        self,
        images: torch.Tensor,
        *,
        proposals: list[torch.Tensor] | None = None,
        image_scales: Sequence[float] | None = None,
    ) -> RawOutput:
        """Run the network on ``Tensor[B, 3, h, w]`` (same-size images).

        ``proposals`` (per image ``Tensor[R, 4]`` xyxy, resized pixels) replaces the RPN's
        proposals for the RoI heads, as training does with sampled proposals.
        ``image_scales``: each image's ``PreparedImage.scale``, which caffe proposals need
        (default 1.0 each: the tensor is the raw image).
        """
        with exact_numerics(self._options.device, deterministic=self._options.deterministic):
            return self._forward_raw_batch(images, proposals, image_scales)

    def _forward_raw_batch(
        self,
        images: torch.Tensor,
        proposals: list[torch.Tensor] | None,
        image_scales: Sequence[float] | None,
    ) -> RawOutput:
        if self._options.batch_invariant and images.shape[0] > 1:
            return RawOutput.concat(
                [
                    self._forward_raw(
                        images[i : i + 1],
                        None if proposals is None else proposals[i : i + 1],
                        None if image_scales is None else image_scales[i : i + 1],
                    )
                    for i in range(images.shape[0])
                ]
            )
        return self._forward_raw(images, proposals, image_scales)

    def _forward_raw(
        self,
        images: torch.Tensor,
        proposals: list[torch.Tensor] | None,
        image_scales: Sequence[float] | None = None,
    ) -> RawOutput:
        options = self._options
        if options.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self.low_precision():
            features = self.backbone(images)
        image_size = (int(images.shape[2]), int(images.shape[3]))
        with self.low_precision():
            rpn = self.proposal_generator(features, image_size, image_scales=image_scales)
        boxes = rpn.proposals if proposals is None else proposals
        roi = self.roi_heads(
            features,
            boxes,
            chunk_size=options.res5_chunk,
            channels_last=options.channels_last,
            conv_dtype=options.precision_dtype,
        )
        return RawOutput(features, rpn, roi)

    def forward(self, images: torch.Tensor) -> RawOutput:
        return self.forward_raw(images)

    def forward_given(self, images: torch.Tensor, rois: list[torch.Tensor]) -> RoIHeadOutput:
        """The RoI heads on given ``rois`` (per image ``Tensor[K_i, 4]`` xyxy, resized pixels)
        of ``Tensor[B, 3, h, w]`` same-size images; the RPN does not run.

        Returns:
            Per-RoI outputs, images concatenated in order (``K_i`` rows each).
        """
        with exact_numerics(self._options.device, deterministic=self._options.deterministic):
            return self._forward_given_batch(images, rois)

    def _forward_given_batch(self, images: torch.Tensor, rois: list[torch.Tensor]) -> RoIHeadOutput:
        if self._options.batch_invariant and images.shape[0] > 1:
            parts = [
                self._forward_given(images[i : i + 1], rois[i : i + 1])
                for i in range(images.shape[0])
            ]
            return RoIHeadOutput(
                *(torch.cat([getattr(p, f) for p in parts]) for f in RoIHeadOutput.fields())
            )
        return self._forward_given(images, rois)

    def _forward_given(self, images: torch.Tensor, rois: list[torch.Tensor]) -> RoIHeadOutput:
        # The trunk and the heads exactly as _forward_raw runs them, without the RPN.
        options = self._options
        if options.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self.low_precision():
            features = self.backbone(images)
        return self.roi_heads(
            features,
            rois,
            chunk_size=options.res5_chunk,
            channels_last=options.channels_last,
            conv_dtype=options.precision_dtype,
        )

    # --- inference -----------------------------------------------------------------------
    def detect(
        self,
        images: Sequence[PreparedImage],
        *,
        batch_size: int = 1,
        boxes: Sequence[GivenBoxes] | None = None,
        clip: bool = True,
    ) -> list[RegionFeatures]:
        """Regions of each prepared image, in input order.

        Images are grouped by resized shape and run ``batch_size`` at a time, never padded.

        Args:
            images: prepared images (:func:`detector.preprocess.prepare`).
            batch_size: images per network call.
            boxes: None to detect (RPN, then the config's selection); or one ``[K_i, 4]``
                xyxy set per image, raw-image pixels (a Tensor or an array), whose regions
                are returned instead: exactly these boxes in this order, clipped to the
                image, each pooled as a RoI (:func:`detector.given_boxes.given_box_rois`), with
                the heads' objects and attributes. No RPN, no selection.
            clip: with ``boxes``, clip them to the image (default) or, False, pool them
                unclipped as the original bottom-up code did; the regions' boxes are then
                the given boxes (see :func:`detector.given_boxes.check_given_boxes`).

        Raises:
            ValueError: ``boxes`` does not have one set per image, or a set is unusable (no
                boxes, NaN or infinite, degenerate, wholly outside the image); the message
                names the image id and the box. Checked before any network runs.
            ImagesOutOfMemoryError: some image does not fit in device memory even alone; it
                carries the regions of all the others (see :meth:`detect_each`).
        """
        outcome = self.detect_each(images, batch_size=batch_size, boxes=boxes, clip=clip)
        failed = [entry for entry in outcome.results if isinstance(entry, ImageOutOfMemory)]
        regions = [entry for entry in outcome.results if isinstance(entry, RegionFeatures)]
        if failed:
            raise ImagesOutOfMemoryError(regions=regions, failed=failed)
        return regions

    @torch.inference_mode()
    def detect_each(
        self,
        images: Sequence[PreparedImage],
        *,
        batch_size: int = 1,
        boxes: Sequence[GivenBoxes] | None = None,
        limits: BatchLimits | None = None,
        clip: bool = True,
    ) -> DetectOutcome:
        """:meth:`detect`, with CUDA out-of-memory reported per image instead of raised.

        A batch that runs out of memory is halved and retried; an image that does not fit
        alone becomes an :class:`ImageOutOfMemory` entry and every other image keeps its
        regions. Batches of a shape with a learnt limit (``limits``, see :class:`BatchLimits`)
        are cut to it first.
        """
        given = None
        if boxes is not None:
            checked = checked_given_boxes(images, boxes, clip=clip)
            given = [CheckedBoxes(boxes=image_boxes, clip=clip) for image_boxes in checked]
        learnt = limits if limits is not None else BatchLimits()
        results: list[RegionFeatures | ImageOutOfMemory | None] = [None] * len(images)
        for group in batches_by_shape(images, batch_size):
            size = learnt.cap(images[group[0]].resized_size, batch_size)
            for start in range(0, len(group), size):
                indices = group[start : start + size]
                batch = [images[i] for i in indices]
                batch_boxes = None if given is None else [given[i] for i in indices]
                got, learnt = run_splitting(
                    self._detect_same_size, batch, batch_boxes, learnt, device=self.device
                )
                for index, entry in zip(indices, got, strict=True):
                    results[index] = entry
        return DetectOutcome(results=[r for r in results if r is not None], limits=learnt)

    def regions(
        self,
        images: Sequence[ImageSource],
        image_ids: Sequence[str] | None = None,
        *,
        channel_order: ChannelOrder = "rgb",
        batch_size: int = 1,
        boxes: Sequence[GivenBoxes] | None = None,
        clip: bool = True,
    ) -> list[RegionFeatures]:
        """Decode, preprocess and detect: paths, bytes, PIL images or arrays -> regions.

        ``boxes`` (one ``[K_i, 4]`` xyxy set per image, raw-image pixels) gives the regions of
        exactly those boxes instead of detecting them, clipped to the image unless ``clip`` is
        False; see :meth:`detect`.
        """
        ids = list(image_ids) if image_ids is not None else [str(i) for i in range(len(images))]
        if len(ids) != len(images):
            raise ValueError(f"got {len(images)} images but {len(ids)} image_ids")
        prepared = [
            prepare(image, config=self.config, image_id=image_id, channel_order=channel_order)
            for image, image_id in zip(images, ids, strict=True)
        ]
        return self.detect(prepared, batch_size=batch_size, boxes=boxes, clip=clip)

    def _detect_same_size(
        self, batch: Sequence[PreparedImage], boxes: Sequence[CheckedBoxes] | None
    ) -> list[RegionFeatures]:
        device = self.device
        stacked = torch.from_numpy(np.stack([image.pixels for image in batch]))
        if device.type == "cuda":
            stacked = stacked.pin_memory().to(device, non_blocking=True)
        else:
            stacked = stacked.to(device)
        if boxes is not None:
            return self._given_same_size(batch, stacked, boxes)
        raw = self.forward_raw(stacked, image_scales=[image.scale for image in batch])
        counts = [len(p) for p in raw.rpn.proposals]
        per_image = zip(
            batch,
            raw.rpn.proposals,
            raw.roi.features.split(counts),
            raw.roi.class_logits.split(counts),
            raw.roi.deltas.split(counts),
            raw.roi.attr_logits.split(counts),
            strict=True,
        )
        return [self.select_regions(*args) for args in per_image]

    def _given_same_size(
        self, batch: Sequence[PreparedImage], stacked: torch.Tensor, boxes: Sequence[CheckedBoxes]
    ) -> list[RegionFeatures]:
        """Regions of checked given ``boxes`` (per image, see :class:`CheckedBoxes`) of the
        same-size images ``stacked`` (``[B, 3, h, w]`` on the device)."""
        rois = [
            given_box_rois(image_boxes.boxes, image, clip=image_boxes.clip).to(stacked.device)
            for image_boxes, image in zip(boxes, batch, strict=True)
        ]
        roi = self.forward_given(stacked, rois)
        counts = [len(r) for r in rois]
        per_image = zip(
            batch,
            boxes,
            roi.features.split(counts),
            roi.class_logits.split(counts),
            roi.attr_logits.split(counts),
            strict=True,
        )
        return [
            given_regions(
                self.config,
                image=image,
                boxes=image_boxes.boxes,
                features=features,
                class_logits=class_logits,
                attr_logits=attr_logits,
            )
            for image, image_boxes, features, class_logits, attr_logits in per_image
        ]

    def select_regions(
        self,
        image: PreparedImage,
        proposals: torch.Tensor,
        features: torch.Tensor,
        class_logits: torch.Tensor,
        deltas: torch.Tensor,
        attr_logits: torch.Tensor,
    ) -> RegionFeatures:
        """One image's regions from its per-proposal outputs (``proposals`` ``[R, 4]`` resized
        pixels, ``features`` ``[R, D]``, logits and deltas as :class:`RoIHeadOutput`), chosen
        by :func:`detector.select.select_regions` with this detector's config."""
        return select_regions(
            self.config,
            image=image,
            proposals=proposals,
            features=features,
            class_logits=class_logits,
            deltas=deltas,
            attr_logits=attr_logits,
        )

    # --- deployment ----------------------------------------------------------------------
    def optimize_for_inference(self, options: InferenceOptions | None = None) -> Detector:
        """Eval mode, frozen BN folded into the convs (once), then :meth:`apply_options`.

        ``options`` None: the per-device defaults on the detector's current device.
        """
        requested = options if options is not None else InferenceOptions(device=self.device)
        self.eval()
        if not self._bn_folded:
            fold_frozen_batchnorm(self)
            self._bn_folded = True
        return self.apply_options(requested)

    def apply_options(self, options: InferenceOptions) -> Detector:
        """Move to ``options.device`` and run with ``options`` resolved for it (stored as
        :attr:`options`); the weights' values are untouched (no BN folding).

        Raises:
            ValueError: ``compile=False`` asked of a detector already compiled.
        """
        resolved = options.resolve()
        if self._compiled and not resolved.compile:
            raise ValueError("this detector was compiled; compiling cannot be undone")
        self.to(resolved.device)
        memory_format = torch.channels_last if resolved.channels_last else torch.contiguous_format
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.data = module.weight.data.contiguous(memory_format=memory_format)
        if resolved.compile and not self._compiled:
            # In place (nn.Module.compile): the state-dict keys stay those of the checkpoints.
            self.backbone.compile()
            self.roi_heads.res5.compile()
            self._compiled = True
        self._requested = options
        self._options = resolved
        return self

    def move_to(self, device: str | torch.device) -> Detector:
        """Move to ``device`` with the same requested options, per-device defaults (layout,
        res5 chunk, batch invariance) resolved anew for it and its precision checked there."""
        return self.apply_options(self._requested.on(device))


def checked_given_boxes(
    images: Sequence[PreparedImage], boxes: Sequence[GivenBoxes], *, clip: bool = True
) -> list[torch.Tensor]:
    """Each image's given boxes checked and, with ``clip`` (default), clipped to the image
    (:func:`detector.given_boxes.check_given_boxes`; ``clip=False`` keeps them as given): float32
    CPU ``Tensor[K_i, 4]`` xyxy, raw-image pixels.

    Raises:
        ValueError: not one set per image, or a set unusable; the message names the image id.
    """
    if isinstance(boxes, torch.Tensor | np.ndarray) or len(boxes) != len(images):
        count = "one array" if isinstance(boxes, torch.Tensor | np.ndarray) else len(boxes)
        raise ValueError(
            f"boxes takes one [K, 4] set per image: got {len(images)} images and {count} box "
            "sets; wrap one image's boxes in a list: [boxes]"
        )
    checked = []
    for image, image_boxes in zip(images, boxes, strict=True):
        try:
            checked.append(
                check_given_boxes(image_boxes, image_h=image.raw_h, image_w=image.raw_w, clip=clip)
            )
        except ValueError as error:
            raise ValueError(f"image {image.image_id!r}: {error}") from None
    return checked


def generic_names(kind: str, count: int) -> list[str]:
    """Placeholder class names ``object_0 ...`` for models without a vocabulary file."""
    return [f"{kind}_{index}" for index in range(count)]


def build_detector(
    config: DetectorConfig,
    *,
    seed: int | None = 0,
    object_names: Sequence[str] | None = None,
    attribute_names: Sequence[str] | None = None,
    checkpoint: CheckpointInfo | None = None,
) -> Detector:
    """Wire a detector from ``config``.

    ``checkpoint`` says where the weights will come from (default: ``random-init``). With a
    ``seed``, weights get a well-behaved random init (finite, non-trivial activations
    through all of ResNet-101: He-init convs, small gamma on each bottleneck's last BN), fit for
    tests and benchmarks. ``seed=None`` skips the init when a checkpoint will be loaded anyway.
    """
    eps = config.bn_eps
    c2 = config.res2_channels
    detector = Detector(
        config=config,
        backbone=ResNetC4(
            stage_blocks=config.stage_blocks[:3],  # type: ignore[arg-type]
            stem_channels=config.stem_channels,
            res2_channels=c2,
            bottleneck_width=config.bottleneck_width,
            eps=eps,
        ),
        proposal_generator=RPN(
            in_channels=config.res4_channels,
            hidden_channels=config.rpn_channels,
            anchor_sizes=config.anchor_sizes,
            anchor_ratios=config.anchor_ratios,
            stride=FEATURE_STRIDE,
            pre_nms_topk=config.rpn_pre_nms_topk,
            post_nms_topk=config.rpn_post_nms_topk,
            nms_thresh=config.rpn_nms_thresh,
            min_box_size=config.rpn_min_box_size,
            proposal_mode=config.proposal_mode,
            anchor_base_size=config.anchor_base_size,
        ),
        roi_heads=Res5RoIHeads(
            in_channels=config.res4_channels,
            bottleneck_channels=config.bottleneck_width * 8,
            out_channels=config.feature_dim,
            num_blocks=config.stage_blocks[3],
            dilation=config.res5_dilation,
            pooler_resolution=config.pooler_resolution,
            spatial_scale=1.0 / FEATURE_STRIDE,
            num_classes=config.num_classes,
            num_attributes=config.num_attributes,
            attr_embed_dim=config.attr_embed_dim,
            attr_hidden_dim=config.attr_hidden_dim,
            eps=eps,
        ),
        object_names=object_names,
        attribute_names=attribute_names,
        checkpoint=checkpoint,
    )
    if seed is not None:
        init_weights(detector, seed=seed)
    return detector.eval()


@torch.no_grad()
def init_weights(detector: Detector, *, seed: int, last_gamma: float = 0.2) -> None:
    """Seeded init that keeps activations of a deep frozen-BN ResNet bounded.

    Freshly initialised ResNets explode (activations ~1e7) and the RPN then proposes nothing;
    a small gamma (``last_gamma``) on the last BN of each bottleneck keeps every residual
    branch small, so boxes and features stay finite and non-trivial at ResNet-101 depth.
    """
    generator = torch.Generator().manual_seed(seed)
    for name, module in detector.named_modules():
        if isinstance(module, ConvNorm):
            fan_in = module.weight[0].numel()
            module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
            if name.endswith("conv3"):
                module.norm.weight.fill_(last_gamma)  # type: ignore[union-attr, operator]
        elif isinstance(module, nn.Conv2d | nn.Linear):
            module.weight.normal_(0.0, 0.01, generator=generator)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, 1.0, generator=generator)
