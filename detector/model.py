"""The bottom-up-attention detector: backbone -> RPN -> res5 RoI heads -> box selection.

``Detector.detect`` takes preprocessed images (see :mod:`detector.preprocess`) and returns one
:class:`~detector.structures.RegionFeatures` per image. Images are grouped by resized shape, so
a batch never pads an image and gives the same result as one image at a time.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from detector.backbone import ConvNorm, ResNetC4, fold_frozen_batchnorm
from detector.boxes import apply_deltas, clip_boxes
from detector.config import DetectorConfig
from detector.preprocess import PreparedImage, prepare
from detector.roi_heads import Res5RoIHeads, RoIHeadOutput
from detector.rpn import RPN, RPNOutput
from detector.select import attributes_from_probs, select_bottom_up, select_max_class
from detector.structures import RegionFeatures

BOX_HEAD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
FEATURE_STRIDE = 16


@dataclass(frozen=True, eq=False)
class RawOutput:
    """Everything the network computes for a batch of same-size images (before selection)."""

    features: torch.Tensor
    """res4 ``[B, C4, h/16, w/16]``."""
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
        self.checkpoint_name: str = "random-init"
        self.checkpoint_path: str | None = None
        self.checkpoint_sha256: str | None = None
        self.bn_folded = False
        # Autocast dtype for the convolutions on CUDA (None: fp32). RoI ops and NMS stay fp32.
        self.autocast_dtype: torch.dtype | None = None
        self.channels_last = False
        # oneDNN picks conv algorithms by batch size, so a batched CPU trunk differs from a
        # single-image one in the last float bits. On CPU, batching buys no speed (one image
        # already fills the cores), so each image runs alone and batches are exact.
        self.batch_invariant: bool | None = None  # None: on CPU only

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # --- network -------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.autocast_dtype is not None and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=self.autocast_dtype)
        return contextlib.nullcontext()

    def forward_raw(
        self, images: torch.Tensor, *, proposals: list[torch.Tensor] | None = None
    ) -> RawOutput:
        """Run the network on ``Tensor[B, 3, h, w]`` (same-size images).

        ``proposals`` (per image ``Tensor[R, 4]`` xyxy, resized pixels) replaces the RPN's
        proposals for the RoI heads, as training does with sampled proposals.
        """
        invariant = self.batch_invariant
        if invariant is None:
            invariant = images.device.type == "cpu"
        if invariant and images.shape[0] > 1:
            return RawOutput.concat(
                [
                    self._forward_raw(
                        images[i : i + 1], None if proposals is None else proposals[i : i + 1]
                    )
                    for i in range(images.shape[0])
                ]
            )
        return self._forward_raw(images, proposals)

    def _forward_raw(self, images: torch.Tensor, proposals: list[torch.Tensor] | None) -> RawOutput:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            features = self.backbone(images)
        image_size = (int(images.shape[2]), int(images.shape[3]))
        with self._autocast():
            rpn = self.proposal_generator(features, image_size)
        boxes = rpn.proposals if proposals is None else proposals
        with self._autocast():
            roi = self.roi_heads(features, boxes)
        return RawOutput(features, rpn, roi)

    def forward(self, images: torch.Tensor) -> RawOutput:
        return self.forward_raw(images)

    # --- inference -----------------------------------------------------------------------
    @torch.inference_mode()
    def detect(
        self, images: Sequence[PreparedImage], *, batch_size: int = 1
    ) -> list[RegionFeatures]:
        """Regions of each prepared image, in input order.

        Images are grouped by resized shape and run ``batch_size`` at a time, never padded.
        """
        results: list[RegionFeatures | None] = [None] * len(images)
        for indices in batches_by_shape(images, batch_size):
            batch = [images[i] for i in indices]
            for index, regions in zip(indices, self._detect_splitting(batch), strict=True):
                results[index] = regions
        return [r for r in results if r is not None]

    def _detect_splitting(self, batch: Sequence[PreparedImage]) -> list[RegionFeatures]:
        """:meth:`_detect_same_size`, halving the batch and retrying on CUDA out-of-memory."""
        try:
            return self._detect_same_size(batch)
        except torch.cuda.OutOfMemoryError:
            if len(batch) == 1:
                raise
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(batch) // 2
        return self._detect_splitting(batch[:half]) + self._detect_splitting(batch[half:])

    def regions(
        self,
        images: Sequence[object],
        image_ids: Sequence[str] | None = None,
        *,
        channel_order: str = "rgb",
        batch_size: int = 1,
    ) -> list[RegionFeatures]:
        """Decode, preprocess and detect: paths, bytes, PIL images or arrays -> regions."""
        ids = list(image_ids) if image_ids is not None else [str(i) for i in range(len(images))]
        if len(ids) != len(images):
            raise ValueError(f"got {len(images)} images but {len(ids)} image_ids")
        prepared = [
            prepare(image, config=self.config, image_id=image_id, channel_order=channel_order)  # type: ignore[arg-type]
            for image, image_id in zip(images, ids, strict=True)
        ]
        return self.detect(prepared, batch_size=batch_size)

    def _detect_same_size(self, batch: Sequence[PreparedImage]) -> list[RegionFeatures]:
        device = self.device
        stacked = torch.stack([image.tensor for image in batch])
        if device.type == "cuda":
            stacked = stacked.pin_memory().to(device, non_blocking=True)
        else:
            stacked = stacked.to(device)
        raw = self.forward_raw(stacked)
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
        return [self._select(*args) for args in per_image]

    def _select(
        self,
        image: PreparedImage,
        proposals: torch.Tensor,
        features: torch.Tensor,
        class_logits: torch.Tensor,
        deltas: torch.Tensor,
        attr_logits: torch.Tensor,
    ) -> RegionFeatures:
        config = self.config
        class_probs = torch.softmax(class_logits.float(), dim=1)
        resized_h, resized_w = image.resized_size
        if config.selection == "bottom-up":
            # Caffe maps the (unregressed) proposals back with the one im_scale and runs its
            # per-class NMS there: the +1 IoU depends on the frame.
            selection = select_bottom_up(
                proposals / image.scale,
                class_probs,
                conf_thresh=config.conf_thresh,
                nms_thresh=config.nms_thresh,
                min_boxes=config.min_boxes,
                max_boxes=config.max_boxes,
            )
            boxes = selection.boxes
        else:
            pred_boxes = apply_deltas(deltas, proposals, weights=BOX_HEAD_WEIGHTS)
            selection = select_max_class(
                pred_boxes,
                class_probs,
                (resized_h, resized_w),
                nms_thresholds=config.max_class_nms_thresholds,
                min_boxes=config.min_boxes,
                max_boxes=config.max_boxes,
            )
            # Detectron2's detector_postprocess: per-axis ratio of raw to resized size.
            scale_xy = torch.tensor(
                [image.raw_w / resized_w, image.raw_h / resized_h] * 2, device=proposals.device
            )
            boxes = selection.boxes * scale_xy
        # Detectron2 clips proposals to [0, resized size]; mapped back they can exceed the raw
        # image by a fraction of a pixel, which LXMERT's loader rejects.
        boxes = clip_boxes(boxes, (image.raw_h, image.raw_w))
        attr_ids, attr_conf = attributes_from_probs(
            attr_logits[selection.indices], renormalize=config.selection == "max-class"
        )
        return RegionFeatures(
            image_id=image.image_id,
            image_h=image.raw_h,
            image_w=image.raw_w,
            boxes=_numpy(boxes, np.float32),
            features=_numpy(features[selection.indices], np.float32),
            objects_id=_numpy(selection.object_ids, np.int64),
            objects_conf=_numpy(selection.object_conf, np.float32),
            attrs_id=_numpy(attr_ids, np.int64),
            attrs_conf=_numpy(attr_conf, np.float32),
        )

    # --- deployment ----------------------------------------------------------------------
    def optimize_for_inference(
        self, *, channels_last: bool | None = None, res5_chunk: int | None = None
    ) -> Detector:
        """Eval mode, frozen BN folded into the convs, memory format and res5 chunk (regions per
        res5 pass) chosen per device unless given."""
        self.eval()
        if not self.bn_folded:
            fold_frozen_batchnorm(self)
            self.bn_folded = True
        if channels_last is None:
            channels_last = default_channels_last(self.device)
        self.set_channels_last(channels_last)
        if res5_chunk is None:
            res5_chunk = default_res5_chunk(self.device)
        if res5_chunk < 1:
            raise ValueError(f"res5_chunk must be >= 1, got {res5_chunk}")
        self.roi_heads.chunk_size = res5_chunk
        return self

    def compile_submodules(self) -> Detector:
        """``torch.compile`` the trunk and res5 (opt-in: compiling takes minutes per shape)."""
        self.backbone = torch.compile(self.backbone)  # type: ignore[assignment]
        self.roi_heads.res5 = torch.compile(self.roi_heads.res5)  # type: ignore[assignment]
        return self

    def set_channels_last(self, enabled: bool) -> None:
        """Run convs in channels_last (NHWC) or contiguous (NCHW) layout."""
        self.channels_last = enabled
        self.roi_heads.channels_last = enabled
        memory_format = torch.channels_last if enabled else torch.contiguous_format
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.data = module.weight.data.contiguous(memory_format=memory_format)


def default_channels_last(device: torch.device) -> bool:
    """channels_last on CUDA (cuDNN's tensor-core kernels want NHWC). On CPU NCHW: within the
    noise of channels_last here (benchmarks/RESULTS.md) and bit-reproducible across processes,
    which --resume relies on."""
    return device.type == "cuda"


def default_res5_chunk(device: torch.device) -> int:
    """Regions per res5 pass. On CPU 8: a chunk's activations (8 x 2048 x 14 x 14 fp32, 13 MB)
    stay in the L3 cache, which took res5 from ~140 to ~175 GFLOP/s here (chunks of 50 spill;
    benchmarks/RESULTS.md). On CUDA 100: big enough to fill the GPU, 160 MB of activations."""
    return 100 if device.type == "cuda" else 8


#: Rough device memory per image at fp32, per resized megapixel: res4 activations of the trunk
#: plus one res5 chunk of regions and the 300 pooled regions (measured on CPU: ~1.8 GB peak RSS
#: at 600x800 with the weights).
BYTES_PER_MEGAPIXEL = 2.5 * 2**30


def auto_batch_size(
    device: torch.device, resized_size: tuple[int, int], *, fraction: float = 0.6, cap: int = 16
) -> int:
    """Images per batch that fit in ``fraction`` of the free CUDA memory (1 on CPU, where
    batching buys no speed)."""
    if device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    per_image = BYTES_PER_MEGAPIXEL * resized_size[0] * resized_size[1] / 1e6
    return max(1, min(cap, int(free * fraction / per_image)))


def batches_by_shape(images: Sequence[PreparedImage], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped by resized shape (first-seen order), at most ``batch_size`` per group."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, image in enumerate(images):
        groups[image.resized_size].append(index)
    for indices in groups.values():
        for start in range(0, len(indices), batch_size):
            yield indices[start : start + batch_size]


def generic_names(kind: str, count: int) -> list[str]:
    """Placeholder class names ``object_0 ...`` for models without a vocabulary file."""
    return [f"{kind}_{index}" for index in range(count)]


def _numpy(tensor: torch.Tensor, dtype: type[np.generic]) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().numpy().astype(dtype, copy=False))


def build_detector(
    config: DetectorConfig,
    *,
    seed: int | None = 0,
    object_names: Sequence[str] | None = None,
    attribute_names: Sequence[str] | None = None,
) -> Detector:
    """Wire a detector from ``config``.

    With a ``seed``, weights get a well-behaved random init (finite, non-trivial activations
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
    )
    if seed is not None:
        init_weights(detector, seed=seed)
    return detector.eval()


@torch.no_grad()
def init_weights(detector: Detector, *, seed: int, last_gamma: float = 0.2) -> None:
    """Seeded init that keeps activations of a deep frozen-BN ResNet bounded (see DESIGN.md)."""
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
