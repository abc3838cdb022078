"""ResNet C4 pieces in Detectron2's layout: frozen BN, conv+norm, bottleneck, stem, stages.

Module names match Detectron2's so that its checkpoints load key for key
(``backbone.res2.0.conv1.weight``, ``backbone.res2.0.conv1.norm.running_mean`` ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics: y = (x - mean) / sqrt(var + eps) * weight + bias.

    ``weight`` and ``bias`` are parameters that do not require grad (training code may unfreeze
    them); ``running_mean`` and ``running_var`` are buffers, as in Detectron2.
    """

    def __init__(self, num_features: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(num_features), requires_grad=False)
        self.running_mean: torch.Tensor
        self.running_var: torch.Tensor
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def scale_and_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel ``(scale, shift)`` such that the layer is ``x * scale + shift``."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_and_shift()
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)


class ConvNorm(nn.Conv2d):
    """A bias-free conv followed by its frozen BN, stored under ``.norm`` (Detectron2's Conv2d)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        eps: float = 1e-5,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=False,
        )
        self.norm: nn.Module = FrozenBatchNorm2d(out_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))

    @torch.no_grad()
    def fold_norm(self) -> None:
        """Fold the frozen BN into the conv's weight and a new bias (inference only, in place)."""
        if not isinstance(self.norm, FrozenBatchNorm2d):
            return
        scale, shift = self.norm.scale_and_shift()
        self.weight.mul_(scale.view(-1, 1, 1, 1))
        self.bias = nn.Parameter(shift.clone(), requires_grad=False)
        self.norm = nn.Identity()


class Bottleneck(nn.Module):
    """ResNet bottleneck, stride in the 1x1 conv (the MSRA/Caffe variant), optional dilation."""

    def __init__(
        self,
        *,
        in_channels: int,
        bottleneck_channels: int,
        out_channels: int,
        stride: int = 1,
        dilation: int = 1,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.shortcut: nn.Module | None = None
        if in_channels != out_channels:
            self.shortcut = ConvNorm(
                in_channels, out_channels, kernel_size=1, stride=stride, eps=eps
            )
        self.conv1 = ConvNorm(
            in_channels, bottleneck_channels, kernel_size=1, stride=stride, eps=eps
        )
        self.conv2 = ConvNorm(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            padding=dilation,
            dilation=dilation,
            eps=eps,
        )
        self.conv3 = ConvNorm(bottleneck_channels, out_channels, kernel_size=1, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + identity)


def make_stage(
    *,
    num_blocks: int,
    in_channels: int,
    bottleneck_channels: int,
    out_channels: int,
    first_stride: int,
    dilation: int = 1,
    eps: float = 1e-5,
) -> nn.Sequential:
    """``num_blocks`` bottlenecks; only the first changes channels and stride."""
    blocks = []
    for index in range(num_blocks):
        blocks.append(
            Bottleneck(
                in_channels=in_channels if index == 0 else out_channels,
                bottleneck_channels=bottleneck_channels,
                out_channels=out_channels,
                stride=first_stride if index == 0 else 1,
                dilation=dilation,
                eps=eps,
            )
        )
    return nn.Sequential(*blocks)


class Stem(nn.Module):
    """conv 7x7/2 + frozen BN + ReLU, then the Caffe max-pool: 3x3/2, padding 0, ceil_mode."""

    def __init__(self, *, out_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.conv1 = ConvNorm(3, out_channels, kernel_size=7, stride=2, padding=3, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=0, ceil_mode=True)


class ResNetC4(nn.Module):
    """Stem and res2..res4 of a ResNet: image ``[B, 3, H, W]`` -> res4 ``[B, C4, H/16, W/16]``."""

    def __init__(
        self,
        *,
        stage_blocks: tuple[int, int, int],
        stem_channels: int,
        res2_channels: int,
        bottleneck_width: int,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.stem = Stem(out_channels=stem_channels, eps=eps)
        in_channels = stem_channels
        for index, num_blocks in enumerate(stage_blocks):
            factor = 2**index
            out_channels = res2_channels * factor
            stage = make_stage(
                num_blocks=num_blocks,
                in_channels=in_channels,
                bottleneck_channels=bottleneck_width * factor,
                out_channels=out_channels,
                first_stride=1 if index == 0 else 2,
                eps=eps,
            )
            self.add_module(f"res{index + 2}", stage)
            in_channels = out_channels
        self.out_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for name in ("res2", "res3", "res4"):
            x = getattr(self, name)(x)
        return x


def fold_frozen_batchnorm(module: nn.Module) -> int:
    """Fold every :class:`ConvNorm`'s frozen BN into its conv, in place; returns how many."""
    folded = 0
    for child in module.modules():
        if isinstance(child, ConvNorm) and isinstance(child.norm, FrozenBatchNorm2d):
            child.fold_norm()
            folded += 1
    return folded
