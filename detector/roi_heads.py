"""Res5 RoI head of the C4 model: RoIPool 14x14, res5 (stride 1, dilation 2), mean pool, heads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from detector.backbone import make_stage
from detector.native_ops import roi_pool
from detector.precision import fp32_region, low_precision


class BoxPredictor(nn.Module):
    """Class scores (background LAST), class-specific box deltas, and the attribute head.

    The attribute head embeds the argmax class (over all classes, background included),
    concatenates it with the pooled feature, then fc -> ReLU -> attribute logits ("no attribute"
    last). Layer names follow the converted bottom-up-attention checkpoint.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        num_attributes: int,
        embed_dim: int,
        hidden_dim: int,
    ) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)
        self.cls_embedding = nn.Embedding(num_classes + 1, embed_dim)
        self.fc_attr = nn.Linear(in_channels + embed_dim, hidden_dim)
        self.attr_score = nn.Linear(hidden_dim, num_attributes + 1)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.constant_(self.cls_score.bias, 0.0)
        nn.init.constant_(self.bbox_pred.bias, 0.0)

    def forward(
        self, features: torch.Tensor, attr_classes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pooled ``[R, D]`` -> (class logits ``[R, C+1]``, deltas ``[R, 4C]``, attrs ``[R, A+1]``).

        ``attr_classes`` (``[R]`` int64) overrides the argmax class fed to the attribute head;
        training passes the ground-truth classes there. Always fp32: the features are cast
        back and any autocast is switched off here, so class scores never come from
        low-precision logits.
        """
        with fp32_region(features.device):
            features = features.float()
            class_logits = self.cls_score(features)
            deltas = self.bbox_pred(features)
            if attr_classes is None:
                attr_classes = class_logits.argmax(dim=1)
            hidden = torch.cat([features, self.cls_embedding(attr_classes)], dim=1)
            attr_logits = self.attr_score(F.relu(self.fc_attr(hidden)))
        return class_logits, deltas, attr_logits


@dataclass(frozen=True, eq=False)
class RoIHeadOutput:
    """Per-proposal outputs for a batch, proposals of all images concatenated in order.

    Attributes:
        features: ``Tensor[R, D]`` mean-pooled res5 output (the region features).
        class_logits: ``Tensor[R, C+1]``, background last.
        deltas: ``Tensor[R, 4C]`` class-specific box deltas (weights 10, 10, 5, 5).
        attr_logits: ``Tensor[R, A+1]``, "no attribute" last.
    """

    features: torch.Tensor
    class_logits: torch.Tensor
    deltas: torch.Tensor
    attr_logits: torch.Tensor

    @staticmethod
    def fields() -> tuple[str, ...]:
        return ("features", "class_logits", "deltas", "attr_logits")


def boxes_to_rois(boxes: list[torch.Tensor]) -> torch.Tensor:
    """Per-image ``Tensor[R_i, 4]`` -> ``Tensor[sum R_i, 5]`` (image index, x1, y1, x2, y2)."""
    if not boxes:
        return torch.zeros((0, 5))
    index = torch.cat(
        [
            torch.full((len(b), 1), float(i), dtype=b.dtype, device=b.device)
            for i, b in enumerate(boxes)
        ]
    )
    return torch.cat([index, torch.cat(boxes)], dim=1)


#: Regions per RoIPool task on CPU: small enough to balance two threads, large enough that the
#: per-call overhead is nothing (measured: 10 and 30 equal, 150 per thread 30% slower).
ROI_POOL_TASK = 32
#: At most this many RoIPool threads: each keeps its freed buffers in its own glibc arena
#: (measured: +160-360 MB peak RSS with two threads), and past 4 RoIPool is noise anyway.
ROI_POOL_MAX_THREADS = 4


def threaded_roi_pool(
    features: torch.Tensor,
    rois: torch.Tensor,
    *,
    output_size: int,
    spatial_scale: float,
    threads: int,
) -> torch.Tensor:
    """``torchvision.ops.roi_pool`` over chunks of regions on ``threads`` Python threads.

    torchvision's CPU kernel runs in one thread (0.7 s for 300 regions of res4 here, 6% of the
    detector); the op releases the GIL, so chunks pool in parallel. Each region's bins depend on
    that region only, so the result is identical to one call.

    Args:
        features: ``Tensor[N, C, H, W]`` fp32 on CPU.
        rois: ``Tensor[R, 5]`` (image index, x1, y1, x2, y2), input pixels.

    Returns:
        ``Tensor[R, C, S, S]``.
    """
    out = features.new_empty((len(rois), features.shape[1], output_size, output_size))

    # Inference and grad modes are per thread: the workers take the caller's.
    inference = torch.is_inference_mode_enabled()

    def pool_chunk(start: int) -> None:
        stop = start + ROI_POOL_TASK
        with torch.inference_mode(inference), torch.no_grad():
            out[start:stop] = roi_pool(features, rois[start:stop], output_size, spatial_scale)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        # list() re-raises a worker's exception here.
        list(pool.map(pool_chunk, range(0, len(rois), ROI_POOL_TASK)))
    return out


class Res5RoIHeads(nn.Module):
    """RoIPool on res4, res5 per region, mean pool, predictors."""

    def __init__(
        self,
        *,
        in_channels: int,
        bottleneck_channels: int,
        out_channels: int,
        num_blocks: int,
        dilation: int,
        pooler_resolution: int,
        spatial_scale: float,
        num_classes: int,
        num_attributes: int,
        attr_embed_dim: int,
        attr_hidden_dim: int,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.pooler_resolution = pooler_resolution
        self.spatial_scale = spatial_scale
        self.res5 = make_stage(
            num_blocks=num_blocks,
            in_channels=in_channels,
            bottleneck_channels=bottleneck_channels,
            out_channels=out_channels,
            first_stride=1,
            dilation=dilation,
            eps=eps,
        )
        self.box_predictor = BoxPredictor(
            in_channels=out_channels,
            num_classes=num_classes,
            num_attributes=num_attributes,
            embed_dim=attr_embed_dim,
            hidden_dim=attr_hidden_dim,
        )

    def pool(self, features: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """RoIPool (Caffe rounding) of res4 over per-image boxes (resized pixels), fp32."""
        features = features.float()
        rois = boxes_to_rois([b.float() for b in boxes])
        threads = min(torch.get_num_threads(), ROI_POOL_MAX_THREADS)
        if features.device.type != "cpu" or threads < 2 or torch.is_grad_enabled():
            return roi_pool(features, rois, self.pooler_resolution, self.spatial_scale)
        return threaded_roi_pool(
            features,
            rois,
            output_size=self.pooler_resolution,
            spatial_scale=self.spatial_scale,
            threads=threads,
        )

    def region_features(
        self, pooled: torch.Tensor, *, chunk_size: int, conv_dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """``[R, C4, S, S]`` pooled regions -> ``[R, D]`` fp32 mean of res5's output.

        Regions go through res5 ``chunk_size`` at a time: no ``[R, 2048, 14, 14]`` tensor for
        all R at once, and on CPU a small chunk keeps res5's activations in the L3 cache
        (benchmarks/RESULTS.md). Each region's feature depends on that region only.
        ``conv_dtype`` (bf16/fp16; None: fp32) autocasts res5's convolutions; their output is
        cast back before the mean, so the pooling itself is fp32.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if pooled.shape[0] == 0:
            return pooled.new_zeros((0, self.box_predictor.cls_score.in_features))
        # One autocast region for all chunks: autocast caches its casts of the weights
        # until the region ends.
        with low_precision(pooled.device, conv_dtype):
            chunks = [
                self.res5(chunk).float().mean(dim=(2, 3))
                for chunk in pooled.split(chunk_size, dim=0)
            ]
        return torch.cat(chunks, dim=0)

    def forward(
        self,
        features: torch.Tensor,
        boxes: list[torch.Tensor],
        attr_classes: torch.Tensor | None = None,
        *,
        chunk_size: int,
        channels_last: bool,
        conv_dtype: torch.dtype | None = None,
    ) -> RoIHeadOutput:
        """Pool ``boxes`` (per image ``Tensor[R_i, 4]``, resized pixels) from res4 ``features``
        ``[B, C4, h/16, w/16]`` and run res5 and the predictors on them.

        ``chunk_size`` (regions per res5 pass), ``channels_last`` (layout of the pooled
        regions) and ``conv_dtype`` (res5's convolutions, None: fp32) come from the detector's
        options at each call; the heads keep no copy. Pooling, mean pool and the predictor
        run in fp32 whatever ``conv_dtype`` is.
        """
        pooled = self.pool(features, boxes)
        if channels_last:
            pooled = pooled.contiguous(memory_format=torch.channels_last)
        region = self.region_features(pooled, chunk_size=chunk_size, conv_dtype=conv_dtype)
        del pooled
        class_logits, deltas, attr_logits = self.box_predictor(region, attr_classes)
        return RoIHeadOutput(region, class_logits.float(), deltas.float(), attr_logits.float())
