"""Image encoder: a ResNet18 trunk (``rf_dp_agents.model.resnet``, no pretrained weights) with GroupNorm, plus
uint8 preprocessing.

Pixels arrive as uint8 ``(N, C, H, W)``; they are cropped (random offsets per image in training, the
centre in eval mode, when a crop is configured), converted to float on the model's device and mapped
from [0, 255] to [-1, 1]. No ImageNet statistics are used: the encoder is trained from scratch.
BatchNorm is replaced by GroupNorm (``channels // 16`` groups) because EMA weights break BatchNorm; on
channels_last CUDA activations (the trainer's ``--channels-last``) it runs as Triton kernels, each block's first
GroupNorm with its ReLU in the same kernels, and the stem's GroupNorm, ReLU and max-pool as one layer that keeps
only its input for backward (:mod:`rf_dp_agents.model.norm_pool`). The weights and state dict are torchvision's.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from rf_dp_agents.model.groupnorm import FastGroupNorm
from rf_dp_agents.model.norm_pool import FastGroupNormReluMaxPool
from rf_dp_agents.model.resnet import ResNet18

FEATURE_DIM = 512
"""Size of one camera's feature vector (ResNet18's pooled output)."""


def replace_batchnorm_with_groupnorm(
    module: nn.Module, group_size: int = 16, norm: Callable[[int, int], nn.Module] = FastGroupNorm
) -> nn.Module:
    """Replace every ``BatchNorm2d`` under ``module`` (in place) by ``norm(channels // group_size, channels)``.

    The default :class:`FastGroupNorm` has ``nn.GroupNorm``'s parameters and state dict, and runs Triton
    kernels on channels_last CUDA activations and ``F.group_norm`` everywhere else.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            groups = max(1, child.num_features // group_size)
            setattr(module, name, norm(groups, child.num_features))
        else:
            replace_batchnorm_with_groupnorm(child, group_size, norm)
    return module


def crop_images(images: torch.Tensor, crop_shape: tuple[int, int], random: bool) -> torch.Tensor:
    """Crop ``(N, C, H, W)`` images to ``crop_shape``: per-image random offsets, or the centre.

    Vectorised over the batch with two gathers (no per-image Python loop); works on uint8 or float.
    """
    n, c, h, w = images.shape
    ch, cw = crop_shape
    if ch > h or cw > w:
        raise ValueError(f"crop {crop_shape} is larger than images of size {(h, w)}")
    if (ch, cw) == (h, w):
        return images
    if not random:
        top, left = (h - ch) // 2, (w - cw) // 2
        return images[:, :, top : top + ch, left : left + cw]
    device = images.device
    top = torch.randint(0, h - ch + 1, (n, 1), device=device)
    left = torch.randint(0, w - cw + 1, (n, 1), device=device)
    rows = (top + torch.arange(ch, device=device)).view(n, 1, ch, 1).expand(n, c, ch, w)
    out = torch.gather(images, 2, rows)
    cols = (left + torch.arange(cw, device=device)).view(n, 1, 1, cw).expand(n, c, ch, cw)
    return torch.gather(out, 3, cols)


def _groups(channels: int) -> int:
    """GroupNorm groups for ``channels``: one per 16 channels."""
    return max(1, channels // 16)


class ResNet18Encoder(nn.Module):
    """uint8 images ``(N, C, H, W)`` -> features ``(N, 512)`` with a GroupNorm ResNet18 trunk."""

    def __init__(self, in_channels: int = 3, crop_shape: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.backbone = ResNet18(
            norm=lambda channels: FastGroupNorm(_groups(channels), channels),
            in_channels=in_channels,
            norm_relu=lambda channels: FastGroupNorm(_groups(channels), channels, relu=True),
            stem_norm=lambda channels: FastGroupNormReluMaxPool(_groups(channels), channels),
        )
        self.crop_shape = tuple(crop_shape) if crop_shape is not None else None

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Crop (train: random, eval: centre) and scale uint8 pixels to float in [-1, 1]."""
        if self.crop_shape is not None:
            images = crop_images(images, self.crop_shape, random=self.training)
        return images.float().mul(2.0 / 255.0).sub(1.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.preprocess(images))


__all__ = ["FEATURE_DIM", "ResNet18Encoder", "crop_images", "replace_batchnorm_with_groupnorm"]
