"""The encoder's ResNet18 trunk (rf_dp_agents.model.resnet) against torchvision's resnet18, its reference: the same
weights under the same seed, the same state dict keys, the same outputs; and the encoder as it was built from it."""

from __future__ import annotations

import pytest
import torch
import torchvision  # the reference (a dependency of the benchmarks), never imported by the model
from torch import nn

from rf_dp_agents.model.resnet import ResNet18
from rf_dp_agents.model.vision import ResNet18Encoder, replace_batchnorm_with_groupnorm


def _torchvision_trunk(in_channels: int) -> nn.Module:
    net = torchvision.models.resnet18(weights=None)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = nn.Identity()
    return net


@pytest.mark.parametrize("in_channels", [3, 4])
def test_same_weights_keys_and_outputs_as_torchvision(in_channels: int) -> None:
    torch.manual_seed(7)
    ref = _torchvision_trunk(in_channels)
    torch.manual_seed(7)
    ours = ResNet18(in_channels=in_channels)
    a, b = ref.state_dict(), ours.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ref.eval(), ours.eval()
    x = torch.randn(2, in_channels, 48, 64)
    with torch.no_grad():
        assert torch.equal(ref(x), ours(x)) and ours(x).shape == (2, 512)


def test_encoder_equals_the_torchvision_built_one() -> None:
    """The encoder's GroupNorm trunk equals torchvision's resnet18 with every BatchNorm replaced, as it was built."""
    torch.manual_seed(3)
    ref = replace_batchnorm_with_groupnorm(_torchvision_trunk(3))
    torch.manual_seed(3)
    enc = ResNet18Encoder(3)
    a, b = ref.state_dict(), enc.backbone.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    norms = [m for m in enc.backbone.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 20 and all(m.num_groups == max(1, m.num_channels // 16) for m in norms)
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(enc.backbone(x), ref(x), rtol=0, atol=0)
