"""ResNet18 (He et al. 2016) as the image encoder's trunk, without importing torchvision.

The layers, their names (so state dicts keep the keys ``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layer2.0.downsample.0``), the order in which they are built and their initialisation are torchvision's
``resnet18(weights=None)``: under the same torch seed both give the same weights, and the same outputs (tested
against torchvision). Importing torchvision costs 2-3 s per process (it imports ``torch._dynamo``), which every
training, rollout and ``load_policy`` process would pay for this one class.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

NormFactory = Callable[[int], nn.Module]
"""``norm(channels)``: the normalisation layer after each convolution."""


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (a 1x1 ``downsample`` when the shape changes).

    ``norm_relu`` (optional) builds the first normalisation with its ReLU as one layer."""

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int,
        downsample: nn.Module | None,
        norm: NormFactory,
        norm_relu: NormFactory | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = (norm_relu or norm)(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = norm(cout)
        self.downsample = downsample
        self.relu_in_bn1 = norm_relu is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn1(self.conv1(x))
        if not self.relu_in_bn1:
            out = self.relu(out)
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """``(N, in_channels, H, W)`` float -> ``(N, 512)`` pooled features (``fc`` is the identity).

    ``norm_relu`` (optional) builds each block's first normalisation with the ReLU that follows it as one layer;
    ``stem_norm`` (optional) builds the stem's normalisation, ReLU and 3x3 stride-2 max-pool as one layer. Either
    keeps the parameters, their names and the state dict; None runs ``norm``, ``nn.ReLU`` and ``nn.MaxPool2d``.
    """

    def __init__(
        self,
        norm: NormFactory = nn.BatchNorm2d,
        in_channels: int = 3,
        norm_relu: NormFactory | None = None,
        stem_norm: NormFactory | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = (stem_norm or norm)(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.stem_in_bn1 = stem_norm is not None
        self.inplanes = 64
        self.layer1 = self._make_layer(64, 1, norm, norm_relu)
        self.layer2 = self._make_layer(128, 2, norm, norm_relu)
        self.layer3 = self._make_layer(256, 2, norm, norm_relu)
        self.layer4 = self._make_layer(512, 2, norm, norm_relu)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        nn.Linear(512, 1000)  # torchvision's classifier, built and dropped so that the random stream stays its own
        self.fc: nn.Module = nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if in_channels != 3:  # as the encoder did with torchvision's model: a fresh first layer, default init
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)

    def _make_layer(self, planes: int, stride: int, norm: NormFactory, norm_relu: NormFactory | None) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                                       norm(planes))
        blocks = [BasicBlock(self.inplanes, planes, stride, downsample, norm, norm_relu)]
        self.inplanes = planes
        blocks.append(BasicBlock(planes, planes, 1, None, norm, norm_relu))
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv1(x))
        if not self.stem_in_bn1:
            x = self.maxpool(self.relu(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


__all__ = ["BasicBlock", "NormFactory", "ResNet18"]
