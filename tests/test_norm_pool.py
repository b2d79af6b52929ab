"""The stem's GroupNorm + ReLU + max-pool layer and the encoder's fused norms, through Triton's CPU interpreter.

Checked against ``F.group_norm``, ``F.relu`` and ``F.max_pool2d`` in float64: outputs, the gradients of the input
and the affine parameters, what the layer saves for backward (its input and the statistics only), and a whole
ResNet18 encoder with the fused layers against the same weights in plain ``nn.GroupNorm`` layers. The kernels run in
a subprocess with ``TRITON_INTERPRET=1`` set before Triton is first imported.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rf_dp_agents.model.groupnorm import FastGroupNorm
from rf_dp_agents.model.norm_pool import FastGroupNormReluMaxPool
from rf_dp_agents.model.resnet import ResNet18
from triton_interpreted import run_interpreted

SCRIPT = r"""
import json
import torch
import torch.nn.functional as F
from torch import nn
import rf_dp_agents.model.groupnorm as gn
from rf_dp_agents.model.norm_pool import FastGroupNormReluMaxPool
from rf_dp_agents.model.resnet import ResNet18
from rf_dp_agents.model.vision import ResNet18Encoder

CL = torch.channels_last
gn._TILE_ELEMENTS, gn._REDUCE_TILE_ELEMENTS = 128, 64  # several tiles and chunks even at these sizes
results = {}


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


gen = torch.Generator().manual_seed(3)
for name, (n, c, g, h, w) in {"odd_9x13": (2, 32, 2, 9, 13), "even_8x12": (2, 64, 4, 8, 12)}.items():
    layer = FastGroupNormReluMaxPool(g, c)
    with torch.no_grad():
        layer.weight.normal_(1.0, 0.5, generator=gen)
        layer.bias.normal_(0.0, 0.5, generator=gen)
    x64 = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64) * 2 + 1
    x = x64.float().contiguous(memory_format=CL).requires_grad_()
    assert gn.triton_group_norm_available(x, g)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t,
                                                  lambda t: t):
        y = layer(x)
    xr = x64.clone().requires_grad_()
    wr = layer.weight.detach().double().requires_grad_()
    br = layer.bias.detach().double().requires_grad_()
    yr = F.max_pool2d(F.relu(F.group_norm(xr, g, wr, br, 1e-5)), 3, 2, 1)
    dy = torch.randn(yr.shape, generator=gen, dtype=torch.float64)
    y.backward(dy.float().contiguous(memory_format=CL))
    yr.backward(dy)
    results[name] = {"shape": list(y.shape), "ref_shape": list(yr.shape), "y": rel(y, yr),
                     "dx": rel(x.grad, xr.grad), "dw": rel(layer.weight.grad, wr.grad),
                     "db": rel(layer.bias.grad, br.grad),
                     "saved_bytes": sum(saved), "input_bytes": x.numel() * x.element_size()}

torch.manual_seed(0)
enc = ResNet18Encoder().to(memory_format=CL)
ref = ResNet18(norm=lambda ch: nn.GroupNorm(max(1, ch // 16), ch))
ref.load_state_dict(enc.backbone.state_dict())
ref = ref.double()
images = torch.randint(0, 256, (2, 3, 40, 48), dtype=torch.uint8, generator=gen)
pixels = images.double().mul(2.0 / 255.0).sub(1.0).requires_grad_()
out = enc(images.contiguous(memory_format=CL))
out_ref = ref(pixels)
dout = torch.randn(out.shape, generator=gen, dtype=torch.float64)
out.backward(dout.float())
out_ref.backward(dout)
grads = {name: p.grad for name, p in enc.backbone.named_parameters()}
worst = max((rel(grads[name], p.grad), name) for name, p in ref.named_parameters())
results["encoder"] = {"y": rel(out, out_ref), "worst_grad": worst[0], "worst_grad_name": worst[1],
                      "fused_stem": enc.backbone.stem_in_bn1,
                      "fused_relu": [b.relu_in_bn1 for layer in (enc.backbone.layer1, enc.backbone.layer4)
                                     for b in layer]}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def interpreted() -> dict:
    return run_interpreted(SCRIPT)


@pytest.mark.parametrize("name", ["odd_9x13", "even_8x12"])
def test_stem_layer_matches_group_norm_relu_max_pool(interpreted: dict, name: str) -> None:
    out = interpreted[name]
    assert out["shape"] == out["ref_shape"]
    for key in ("y", "dx", "dw", "db"):
        assert out[key] < 1e-4, (key, out[key])


@pytest.mark.parametrize("name", ["odd_9x13", "even_8x12"])
def test_stem_layer_saves_only_its_input_and_statistics(interpreted: dict, name: str) -> None:
    out = interpreted[name]
    # x, the weight, the bias and the (N, G) statistics: far less than the input plus a normalised copy of it
    assert out["input_bytes"] <= out["saved_bytes"] < 1.2 * out["input_bytes"]


def test_encoder_with_fused_layers_matches_plain_group_norm(interpreted: dict) -> None:
    out = interpreted["encoder"]
    assert out["fused_stem"] and all(out["fused_relu"])
    assert out["y"] < 1e-4
    assert out["worst_grad"] < 1e-3, out["worst_grad_name"]


def test_stem_layer_falls_back_off_the_triton_path() -> None:
    torch.manual_seed(0)
    layer = FastGroupNormReluMaxPool(4, 64)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    x = torch.randn(2, 64, 9, 11)
    want = F.max_pool2d(F.relu(F.group_norm(x, 4, layer.weight, layer.bias, 1e-5)), 3, 2, 1)
    assert torch.equal(layer(x), want)
    assert list(layer.state_dict()) == ["weight", "bias"]
    assert "max_pool=(kernel_size=3, stride=2, padding=1)" in repr(layer)


def test_fused_resnet_keeps_the_state_dict_and_outputs_of_the_plain_one() -> None:
    def gn(ch: int) -> nn.Module:
        return FastGroupNorm(max(1, ch // 16), ch)

    torch.manual_seed(0)
    plain = ResNet18(norm=gn)
    torch.manual_seed(0)
    fused = ResNet18(norm=gn, norm_relu=lambda ch: FastGroupNorm(max(1, ch // 16), ch, relu=True),
                     stem_norm=lambda ch: FastGroupNormReluMaxPool(max(1, ch // 16), ch))
    assert list(plain.state_dict()) == list(fused.state_dict())
    for a, b in zip(plain.state_dict().values(), fused.state_dict().values()):
        assert torch.equal(a, b)
    x = torch.randn(2, 3, 40, 48)
    assert torch.equal(plain(x), fused(x))
