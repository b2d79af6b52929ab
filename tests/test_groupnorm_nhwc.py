"""Triton NHWC GroupNorm: kernels (through Triton's CPU interpreter) against F.group_norm, and the module's fallback.

The kernels run in a subprocess with ``TRITON_INTERPRET=1`` set before Triton is first imported, so the
result never depends on which test module imported Triton first in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rf_dp_agents.model.groupnorm import FastGroupNorm, triton_group_norm_available

CASES = {
    # name: (N, C, G, H, W, relu, weight, bias, x requires grad, small tiles)
    "c32_g2_5x7": (2, 32, 2, 5, 7, False, True, True, True, True),
    "c32_g4_6x10_relu": (2, 32, 4, 6, 10, True, True, True, True, True),
    "c64_g4_5x7_relu_no_affine": (2, 64, 4, 5, 7, True, False, False, True, True),
    "c64_g4_6x10_weight_only": (2, 64, 4, 6, 10, False, True, False, True, False),
    "c48_g3_5x7_relu": (3, 48, 3, 5, 7, True, True, True, True, True),
    "c32_g2_6x10_params_only": (2, 32, 2, 6, 10, True, True, True, False, True),
}

SCRIPT = r"""
import json, sys
import torch
import torch.nn.functional as F
import rf_dp_agents.model.groupnorm as gn

CL = torch.channels_last
cases = json.loads(sys.argv[1])
default_tiles = (gn._TILE_ELEMENTS, gn._REDUCE_TILE_ELEMENTS)
results = {}


def rel(a, b):
    return ((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


for name, (n, c, g, h, w, relu, has_w, has_b, x_grad, small) in cases.items():
    gn._TILE_ELEMENTS, gn._REDUCE_TILE_ELEMENTS = (128, 64) if small else default_tiles
    gen = torch.Generator().manual_seed(len(name))
    x64 = (torch.randn(n, c, h, w, generator=gen, dtype=torch.float64) * 2 + 3).contiguous(memory_format=CL)
    w64 = torch.randn(c, generator=gen, dtype=torch.float64) * 0.5 + 1 if has_w else None
    b64 = torch.randn(c, generator=gen, dtype=torch.float64) * 0.5 if has_b else None
    dy = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)

    x = x64.float().contiguous(memory_format=torch.channels_last).requires_grad_(x_grad)
    wt = w64.float().requires_grad_() if has_w else None
    bt = b64.float().requires_grad_() if has_b else None
    assert gn.triton_group_norm_available(x, g)
    y = gn.group_norm_nhwc(x, g, wt, bt, eps=1e-5, relu=relu)

    xr = x64.clone().requires_grad_(x_grad)
    wr = w64.clone().requires_grad_() if has_w else None
    br = b64.clone().requires_grad_() if has_b else None
    yr = F.group_norm(xr, g, wr, br, 1e-5)
    yr = F.relu(yr) if relu else yr

    out = {
        "dtype": str(y.dtype),
        "channels_last": y.is_contiguous(memory_format=torch.channels_last),
        "shape": list(y.shape),
        "y": rel(y, yr),
    }
    y.backward(dy.float().contiguous(memory_format=torch.channels_last))
    yr.backward(dy)
    for key, got, ref in (("dx", x, xr), ("dw", wt, wr), ("db", bt, br)):
        if ref is not None and ref.requires_grad:
            out[key] = rel(got.grad, ref.grad)
    if not x_grad:
        out["dx_none"] = x.grad is None
    results[name] = out

gn._TILE_ELEMENTS, gn._REDUCE_TILE_ELEMENTS = default_tiles
gen = torch.Generator().manual_seed(7)
x = (torch.randn(2, 32, 6, 10, generator=gen) * 2 + 3).contiguous(memory_format=torch.channels_last)
ref = F.relu(F.group_norm(x, 2))
xb = x.to(torch.bfloat16).requires_grad_()
yb = gn.group_norm_nhwc(xb, 2, None, None, relu=True)
yb.float().pow(2).sum().backward()
xr = x.to(torch.bfloat16).double().requires_grad_()
F.relu(F.group_norm(xr, 2)).pow(2).sum().backward()
results["bf16"] = {"dtype": str(yb.dtype), "grad_dtype": str(xb.grad.dtype), "y": rel(yb, ref.double()),
                   "dx": rel(xb.grad, xr.grad)}

nchw = torch.randn(2, 32, 6, 10)
results["layout"] = {
    "nchw_available": gn.triton_group_norm_available(nchw),
    "cl_available": gn.triton_group_norm_available(nchw.contiguous(memory_format=torch.channels_last)),
    "cg12_available": gn.triton_group_norm_available(torch.randn(2, 48, 5, 7).contiguous(memory_format=CL), 4),
    "float64_available": gn.triton_group_norm_available(nchw.double().contiguous(memory_format=torch.channels_last)),
}
try:
    gn.group_norm_nhwc(nchw, 2, None, None)
    results["layout"]["nchw_raises"] = False
except ValueError:
    results["layout"]["nchw_raises"] = True
print(json.dumps(results))
"""

NO_TRITON = r"""
import sys

sys.modules["triton"] = None  # what `import triton` sees where the package is not installed
import torch
from torch import nn
from rf_dp_agents.model.groupnorm import FastGroupNorm, triton_group_norm_available
x = torch.randn(2, 32, 4, 5).contiguous(memory_format=torch.channels_last)
assert not triton_group_norm_available(x)
m = FastGroupNorm(2, 32, relu=True)
ref = nn.GroupNorm(2, 32)
ref.load_state_dict(m.state_dict())
assert torch.equal(m(x), torch.relu(ref(x)))
print("ok")
"""


def _run(script: str, *args: str, interpret: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def interpreted() -> dict:
    pytest.importorskip("triton")
    result = _run(SCRIPT, json.dumps(CASES), interpret=True)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernels_match_group_norm_fp32(interpreted: dict, name: str) -> None:
    n, c, _, h, w, _, has_w, has_b, x_grad, _ = CASES[name]
    out = interpreted[name]
    assert out["dtype"] == "torch.float32"
    assert out["channels_last"]
    assert out["shape"] == [n, c, h, w]
    assert out["y"] < 1e-4
    expected = {"dx"} if x_grad else set()
    expected |= {"dw"} if has_w else set()
    expected |= {"db"} if has_b else set()
    assert expected == set(out) & {"dx", "dw", "db"}
    for key in expected:
        assert out[key] < 1e-4, (key, out[key])
    if not x_grad:
        assert out["dx_none"]


def test_kernels_bf16_keep_dtype(interpreted: dict) -> None:
    out = interpreted["bf16"]
    assert out["dtype"] == out["grad_dtype"] == "torch.bfloat16"
    assert out["y"] < 2e-2
    assert out["dx"] < 2e-2


def test_layout_checks(interpreted: dict) -> None:
    assert interpreted["layout"] == {
        "nchw_available": False,
        "cl_available": True,
        "cg12_available": False,
        "float64_available": False,
        "nchw_raises": True,
    }


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_group_norm_falls_back_on_cpu(monkeypatch: pytest.MonkeyPatch, relu: bool, channels_last: bool) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    torch.manual_seed(0)
    fast = FastGroupNorm(4, 64, relu=relu)
    with torch.no_grad():
        fast.weight.normal_()
        fast.bias.normal_()
    ref = nn.GroupNorm(4, 64)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 64, 5, 7) * 2 + 3
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert not triton_group_norm_available(x)
    expected = F.relu(ref(x)) if relu else ref(x)
    assert torch.equal(fast(x), expected)


def test_fast_group_norm_state_dict_matches() -> None:
    fast, ref = FastGroupNorm(8, 128, eps=1e-6, relu=True), nn.GroupNorm(8, 128, eps=1e-6)
    assert list(fast.state_dict()) == list(ref.state_dict()) == ["weight", "bias"]
    ref.load_state_dict(fast.state_dict(), strict=True)
    assert fast.relu and not FastGroupNorm(8, 128).relu
    assert (fast.num_groups, fast.num_channels, fast.eps, fast.affine) == (8, 128, 1e-6, True)
    assert list(FastGroupNorm(2, 32, affine=False).state_dict()) == []


def test_module_imports_without_triton() -> None:
    result = _run(NO_TRITON, interpret=True)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip() == "ok"
