"""conv1d_as_matmul / MatmulConv1d: the U-Net's Conv1d as unfold + one matrix multiply, against F.conv1d.

The modules take the matrix form only on CUDA inside a graph capture or torch.compile; the module tests force
that choice on the CPU so the form they compare is the matrix multiply, not PyTorch's convolution twice.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rf_dp_agents.model import unet
from rf_dp_agents.model.unet import (
    ConditionalUnet1D,
    MatmulConv1d,
    MatmulConvTranspose1d,
    conv1d_as_matmul,
    conv_transpose1d_as_matmul,
    set_matmul_convolutions,
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


@pytest.fixture
def matmul_forms(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Make the Matmul modules take their matrix-multiply form on the CPU too (as they do on CUDA inside a graph
    capture or torch.compile) and count the calls of each form."""
    calls = {"conv": 0, "transpose": 0}

    def counted(name: str, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(unet, "_matmul_wanted", lambda x: True)
    monkeypatch.setattr(unet, "conv1d_as_matmul", counted("conv", unet.conv1d_as_matmul))
    monkeypatch.setattr(unet, "conv_transpose1d_as_matmul", counted("transpose", unet.conv_transpose1d_as_matmul))
    return calls


def test_matmul_form_is_taken_only_on_cuda_in_capture_or_compile():
    x = torch.randn(2, 4, 8)
    assert not unet._matmul_wanted(x)  # CPU tensors keep the native convolution, compiled or not


@pytest.mark.parametrize("stride,padding", [(1, 2), (2, 1)])
def test_module_in_matmul_form_has_conv1d_state_dict_and_output(matmul_forms, stride: int, padding: int):
    torch.manual_seed(0)
    conv = nn.Conv1d(4, 6, 5, stride=stride, padding=padding).double()
    fast = MatmulConv1d(4, 6, 5, stride=stride, padding=padding).double()
    assert fast.state_dict().keys() == conv.state_dict().keys()
    fast.load_state_dict(conv.state_dict())
    x = torch.randn(2, 4, 16, dtype=torch.float64)
    torch.testing.assert_close(fast(x), conv(x), rtol=1e-10, atol=1e-10)
    assert matmul_forms["conv"] == 1
    fast.matmul = False  # set_matmul_convolutions(module, False): the native convolution even where wanted
    torch.testing.assert_close(fast(x), conv(x), rtol=1e-10, atol=1e-10)
    assert matmul_forms["conv"] == 1


def test_unet_output_same_either_way(matmul_forms):
    torch.manual_seed(0)
    net = ConditionalUnet1D(input_dim=3, global_cond_dim=10, diffusion_step_embed_dim=16, down_dims=(16, 32))
    sample, cond, t = torch.randn(2, 8, 3), torch.randn(2, 10), torch.tensor([3, 7])
    convs = [m for m in net.modules() if isinstance(m, MatmulConv1d)]
    ups = [m for m in net.modules() if isinstance(m, MatmulConvTranspose1d)]
    assert len(convs) >= 8 and len(ups) == 1
    set_matmul_convolutions(net, False)
    ref = net(sample, t, cond)
    assert matmul_forms == {"conv": 0, "transpose": 0}
    set_matmul_convolutions(net, True)
    torch.testing.assert_close(net(sample, t, cond), ref, rtol=1e-5, atol=1e-5)
    assert matmul_forms == {"conv": len(convs), "transpose": len(ups)}  # every convolution in its matrix form


@pytest.mark.parametrize(
    "cin,cout,k,stride,padding,length", [(8, 8, 4, 2, 1, 4), (6, 3, 4, 2, 1, 1), (4, 5, 3, 1, 1, 7)]
)
def test_transpose_matches_conv_transpose1d(cin: int, cout: int, k: int, stride: int, padding: int, length: int):
    x, w, b = float64_inputs(2, cin, length, (cin, cout, k), cout)
    assert_same_as(F.conv_transpose1d, conv_transpose1d_as_matmul, x, w, b, stride, padding)


def test_transpose_bad_shapes_name_them():
    with pytest.raises(ValueError, match=r"\(2, 5, 9\).*\(4, 6, 3\)"):
        conv_transpose1d_as_matmul(torch.randn(2, 5, 9), torch.randn(4, 6, 3), None)


def test_transpose_module_in_matmul_form_has_conv_transpose1d_state_dict(matmul_forms):
    conv = nn.ConvTranspose1d(4, 4, 4, 2, 1).double()
    fast = MatmulConvTranspose1d(4, 4, 4, 2, 1).double()
    assert fast.state_dict().keys() == conv.state_dict().keys()
    fast.load_state_dict(conv.state_dict())
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    torch.testing.assert_close(fast(x), conv(x), rtol=1e-10, atol=1e-10)
    assert matmul_forms["transpose"] == 1
    torch.testing.assert_close(fast(x, output_size=[16]), conv(x, output_size=[16]))  # only the native form takes it
    assert matmul_forms["transpose"] == 1
