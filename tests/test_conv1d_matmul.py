"""conv1d_as_matmul / MatmulConv1d: the U-Net's Conv1d as unfold + one matrix multiply, against F.conv1d."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rf_dp_agents.model.unet import (
    ConditionalUnet1D,
    MatmulConv1d,
    MatmulConvTranspose1d,
    conv1d_as_matmul,
    conv_transpose1d_as_matmul,
)


def assert_same_as(reference, fast, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride: int, padding: int):
    """``fast`` and ``reference`` (F.conv1d-like signatures) agree in output and in every input's gradient."""
    ref = reference(x, w, b, stride=stride, padding=padding)
    ref_grads = torch.autograd.grad(ref.square().sum(), (x, w, b))
    out = fast(x, w, b, stride=stride, padding=padding)
    assert out.shape == ref.shape and out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for got, want in zip(torch.autograd.grad(out.square().sum(), (x, w, b)), ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def float64_inputs(batch: int, cin: int, length: int, weight_shape: tuple[int, int, int], channels_out: int):
    torch.manual_seed(0)
    x = torch.randn(batch, cin, length, dtype=torch.float64, requires_grad=True)
    w = torch.randn(*weight_shape, dtype=torch.float64, requires_grad=True)
    b = torch.randn(channels_out, dtype=torch.float64, requires_grad=True)
    return x, w, b


@pytest.mark.parametrize(
    "cin,cout,k,stride,padding,length",
    [(8, 16, 5, 1, 2, 16), (16, 16, 3, 2, 1, 16), (16, 16, 3, 2, 1, 7), (12, 4, 1, 1, 0, 5), (6, 10, 5, 1, 2, 1)],
)
def test_matches_conv1d_forward_and_backward(cin: int, cout: int, k: int, stride: int, padding: int, length: int):
    x, w, b = float64_inputs(3, cin, length, (cout, cin, k), cout)
    assert_same_as(F.conv1d, conv1d_as_matmul, x, w, b, stride, padding)


def test_without_bias():
    x, w = torch.randn(2, 4, 9), torch.randn(6, 4, 3)
    torch.testing.assert_close(conv1d_as_matmul(x, w, None, 1, 1), F.conv1d(x, w, None, padding=1))


def test_bad_shapes_name_them():
    with pytest.raises(ValueError, match=r"\(2, 5, 9\).*\(6, 4, 3\)"):
        conv1d_as_matmul(torch.randn(2, 5, 9), torch.randn(6, 4, 3), None)
    with pytest.raises(ValueError, match="x \\(B, Cin, L\\)"):
        conv1d_as_matmul(torch.randn(5, 9), torch.randn(6, 5, 3), None)


def test_module_has_conv1d_state_dict_and_output():
    torch.manual_seed(0)
    conv = nn.Conv1d(4, 6, 5, padding=2)
    fast = MatmulConv1d(4, 6, 5, padding=2)
    assert fast.state_dict().keys() == conv.state_dict().keys()
    fast.load_state_dict(conv.state_dict())
    x = torch.randn(2, 4, 16)
    torch.testing.assert_close(fast(x), conv(x))  # CPU tensors take the native convolution


def test_unet_output_same_either_way():
    torch.manual_seed(0)
    net = ConditionalUnet1D(input_dim=3, global_cond_dim=10, diffusion_step_embed_dim=16, down_dims=(16, 32))
    sample, cond, t = torch.randn(2, 8, 3), torch.randn(2, 10), torch.tensor([3, 7])
    ref = net(sample, t, cond)
    convs = [m for m in net.modules() if isinstance(m, MatmulConv1d)]
    ups = [m for m in net.modules() if isinstance(m, MatmulConvTranspose1d)]
    assert len(convs) >= 8 and len(ups) == 1
    for m in convs:  # route the CPU modules through the matmul forms too
        m.forward = lambda x, m=m: conv1d_as_matmul(x, m.weight, m.bias, m.stride[0], m.padding[0])
    for m in ups:
        m.forward = lambda x, m=m: conv_transpose1d_as_matmul(x, m.weight, m.bias, m.stride[0], m.padding[0])
    torch.testing.assert_close(net(sample, t, cond), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "cin,cout,k,stride,padding,length", [(8, 8, 4, 2, 1, 4), (6, 3, 4, 2, 1, 1), (4, 5, 3, 1, 1, 7)]
)
def test_transpose_matches_conv_transpose1d(cin: int, cout: int, k: int, stride: int, padding: int, length: int):
    x, w, b = float64_inputs(2, cin, length, (cin, cout, k), cout)
    assert_same_as(F.conv_transpose1d, conv_transpose1d_as_matmul, x, w, b, stride, padding)


def test_transpose_bad_shapes_name_them():
    with pytest.raises(ValueError, match=r"\(2, 5, 9\).*\(4, 6, 3\)"):
        conv_transpose1d_as_matmul(torch.randn(2, 5, 9), torch.randn(4, 6, 3), None)


def test_transpose_module_has_conv_transpose1d_state_dict():
    conv = nn.ConvTranspose1d(4, 4, 4, 2, 1)
    fast = MatmulConvTranspose1d(4, 4, 4, 2, 1)
    assert fast.state_dict().keys() == conv.state_dict().keys()
    fast.load_state_dict(conv.state_dict())
    x = torch.randn(2, 4, 8)
    torch.testing.assert_close(fast(x), conv(x))
