"""The U-Net's fused inference path (``unet_fused``) through Triton's CPU interpreter.

Each kernel is checked against PyTorch's own operation (window gather against ``F.unfold``, overlap-add against
``F.conv_transpose1d``, GroupNorm-Mish-FiLM-residual against ``F.group_norm``/``F.mish``), and the whole
:class:`FusedUnet` against :meth:`ConditionalUnet1D.forward` with the same weights: with its own conditioning and
with a step's FiLM tables, at group widths that are not powers of two and a sequence longer than one kernel tile,
and after the weights change in place. The kernels run in a subprocess with ``TRITON_INTERPRET=1`` set before
Triton is first imported.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from rf_dp_agents.model.unet_fused import fused_unet_available, group_norm_mish, im2col
from triton_interpreted import run_interpreted

SCRIPT = r"""
import json
import torch
import torch.nn.functional as F
from torch import nn
from rf_dp_agents.model.unet import ConditionalUnet1D
from rf_dp_agents.model.unet_fused import FusedUnet, col2im, group_norm_mish, im2col

results = {}
gen = torch.Generator().manual_seed(0)
_empty, _empty_like = torch.empty, torch.empty_like
torch.empty = lambda *a, **k: _empty(*a, **k).fill_(float("nan"))  # what a kernel leaves unwritten shows as NaN
torch.empty_like = lambda *a, **k: _empty_like(*a, **k).fill_(float("nan"))


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


# window gather: two sources concatenated, stride 1 with the centre tap, stride 2 as the down-sampling conv runs
batch, length, c1, c2, k = 2, 19, 5, 3, 5
x1, x2 = torch.randn(batch, length, c1, generator=gen), torch.randn(batch, length, c2, generator=gen)
cat = torch.cat([x1, x2], dim=2).transpose(1, 2)  # (B, C, L)
for stride, pad, center in ((1, 2, True), (2, 1, False)):
    kk = k if stride == 1 else 3
    cols, mid = im2col((x1.reshape(-1, c1), x2.reshape(-1, c2)), batch, length, kk, stride, pad, center=center)
    ref = F.unfold(cat[:, :, None, :], (1, kk), padding=(0, pad), stride=(1, stride))  # (B, C*K, Lout)
    ref = ref.transpose(1, 2).reshape(-1, (c1 + c2) * kk)
    entry = {"shape": list(cols.shape), "ref_shape": list(ref.shape), "gap": (cols - ref).abs().max().item()}
    if center:
        entry["center_gap"] = (mid - cat.transpose(1, 2).reshape(-1, c1 + c2)).abs().max().item()
    results[f"im2col_s{stride}"] = entry

# overlap-add of the up-sampling transposed convolution (and one of odd size)
for name, (cin, cout, k, s, p) in {"up": (6, 4, 4, 2, 1), "odd": (3, 5, 3, 3, 0)}.items():
    conv = nn.ConvTranspose1d(cin, cout, k, s, p)
    x = torch.randn(batch, cin, 7, generator=gen)
    products = x.transpose(1, 2).reshape(-1, cin) @ conv.weight.detach().reshape(cin, -1)
    got = col2im(products, conv.bias.detach(), batch, 7, cout, k, s, p)
    want = conv(x).detach().transpose(1, 2).reshape(-1, cout)
    results[f"col2im_{name}"] = {"shape": list(got.shape), "ref_shape": list(want.shape), "rel": rel(got, want)}

# GroupNorm -> Mish (-> FiLM, -> + residual), 24 channels in 4 groups of 6, 37 positions (three 16-row tiles)
norm = nn.GroupNorm(4, 24)
with torch.no_grad():
    norm.weight.normal_(1.0, 0.5, generator=gen)
    norm.bias.normal_(0.0, 0.5, generator=gen)
x = torch.randn(batch, 37, 24, generator=gen) * 3 + 2
x[0, 0, 0] = 40.0  # past Mish's linear threshold
film = torch.randn(3, batch, 48, generator=gen)[1]  # a row of a FiLM table: rows strided
residual = torch.randn(batch * 37, 24, generator=gen)
base = F.mish(F.group_norm(x.transpose(1, 2), 4, norm.weight, norm.bias, norm.eps)).transpose(1, 2)
with torch.no_grad():
    plain, none = group_norm_mish(x.reshape(-1, 24), batch, norm)
    filmed, _ = group_norm_mish(x.reshape(-1, 24), batch, norm, film=film)
    res, _ = group_norm_mish(x.reshape(-1, 24), batch, norm, residual=residual)
results["gn_no_windows"] = none is None
results["gn_plain"] = rel(plain, base.reshape(-1, 24))
results["gn_film"] = rel(filmed, (base * film[:, None, :24] + film[:, None, 24:]).reshape(-1, 24))
results["gn_residual"] = rel(res, base.reshape(-1, 24) + residual)
for k, stride, pad in ((5, 1, 2), (3, 1, 1), (3, 2, 1), (4, 3, 0)):  # written into the next convolution's windows
    with torch.no_grad():
        both, windowed = group_norm_mish(x.reshape(-1, 24), batch, norm, film=film, windows=(k, stride, pad))
        alone, only = group_norm_mish(x.reshape(-1, 24), batch, norm, film=film, windows=(k, stride, pad),
                                      keep_plain=False)
    want, _ = im2col((filmed,), batch, 37, k, stride, pad)
    results[f"gn_windows_{k}_{stride}"] = {
        "shape": list(windowed.shape), "ref_shape": list(want.shape), "gap": (windowed - want).abs().max().item(),
        "gap_alone": (only - want).abs().max().item(), "plain_gap": (both - filmed).abs().max().item(),
        "alone_is_none": alone is None}

# the whole U-Net
for name, (dims, horizon, groups, kernel) in {"pow2": ((32, 64, 128), 16, 8, 5),
                                             "odd_groups": ((24, 48, 96), 32, 8, 3)}.items():
    torch.manual_seed(1)
    unet = ConditionalUnet1D(7, 40, 32, dims, kernel, groups).eval()
    with torch.no_grad():
        for param in unet.parameters():
            param.normal_(0.0, 0.2)
    fused = FusedUnet(unet)
    x = torch.randn(3, horizon, 7, generator=gen)
    cond = torch.randn(3, 40, generator=gen)
    steps = torch.tensor([5, 17, 3])
    with torch.no_grad():
        own = rel(fused(x, steps, cond), unet(x, steps, cond))
        tables = unet.film_tables(torch.tensor([9, 4]), cond)
        table = rel(fused(x, 0, cond, film=[t[1] for t in tables]), unet(x, torch.tensor(4), cond))
        before = fused(x, steps, cond)
        for param in unet.parameters():
            param.mul_(0.9)
        after = rel(fused(x, steps, cond), unet(x, steps, cond))
        moved = rel(before, unet(x, steps, cond))
    results[f"unet_{name}"] = {"own": own, "table": table, "after": after, "moved": moved,
                               "shape": list(fused(x, steps, cond).shape)}

# the bf16 copy of the weights (bf16_graphs) run through the kernels: near float32, refreshed after in-place changes
from rf_dp_agents.model.graphed import Bf16Unet
torch.manual_seed(2)
unet = ConditionalUnet1D(4, 6, 16, (16, 32)).eval()
bf16 = Bf16Unet(unet, fused=True)
x, cond, steps = torch.randn(2, 8, 4, generator=gen), torch.randn(2, 6, generator=gen), torch.tensor([9, 3])
with torch.no_grad():
    want = unet(x, steps[0], cond)
    got = bf16(x, steps[0], cond)
    for param in unet.parameters():
        param.mul_(1.5)
    bf16.refresh()
    after = rel(bf16(x, steps[0], cond), unet(x, steps[0], cond))
results["bf16"] = {"rel": rel(got, want), "after": after, "dtype": str(got.dtype),
                   "params": len(list(bf16.parameters())), "plain_params": len(list(Bf16Unet(unet).parameters()))}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def interpreted() -> dict:
    return run_interpreted(SCRIPT)


@pytest.mark.parametrize("stride", [1, 2])
def test_im2col_matches_unfold_of_the_concatenated_sources(interpreted: dict, stride: int) -> None:
    out = interpreted[f"im2col_s{stride}"]
    assert out["shape"] == out["ref_shape"]
    assert out["gap"] == 0.0
    if stride == 1:
        assert out["center_gap"] == 0.0


@pytest.mark.parametrize("name", ["up", "odd"])
def test_col2im_matches_conv_transpose1d(interpreted: dict, name: str) -> None:
    out = interpreted[f"col2im_{name}"]
    assert out["shape"] == out["ref_shape"]
    assert out["rel"] < 1e-5


@pytest.mark.parametrize("key", ["gn_plain", "gn_film", "gn_residual"])
def test_group_norm_mish_matches_pytorch(interpreted: dict, key: str) -> None:
    assert interpreted[key] < 1e-5
    assert interpreted["gn_no_windows"]


@pytest.mark.parametrize("windows", ["5_1", "3_1", "3_2", "4_3"])
def test_group_norm_mish_writes_the_next_convolutions_windows(interpreted: dict, windows: str) -> None:
    out = interpreted[f"gn_windows_{windows}"]
    assert out["shape"] == out["ref_shape"]
    assert out["gap"] == 0.0 and out["gap_alone"] == 0.0
    assert out["plain_gap"] == 0.0 and out["alone_is_none"]


@pytest.mark.parametrize("name", ["pow2", "odd_groups"])
def test_fused_unet_matches_the_unet(interpreted: dict, name: str) -> None:
    out = interpreted[f"unet_{name}"]
    assert out["own"] < 1e-4 and out["table"] < 1e-4
    # it reads the U-Net's weights in place: after they change, it follows them
    assert out["after"] < 1e-4 and out["moved"] > 1e-2


def test_bf16_copy_runs_through_the_kernels(interpreted: dict) -> None:
    out = interpreted["bf16"]
    assert out["dtype"] == "torch.float32"
    assert 0 < out["rel"] <= 0.05 and out["after"] <= 0.05  # bf16 rounding: close, not equal
    assert out["params"] == out["plain_params"]  # the kernels hold no weights of their own


def test_bad_input_names_the_shape_at_fault() -> None:
    norm = nn.GroupNorm(2, 8)
    with pytest.raises(ValueError, match=r"contiguous \(6, C\) matrix, got shape \(3, 8\)"):
        im2col((torch.zeros(3, 8),), 2, 3, 3, 1, 1)
    with pytest.raises(ValueError, match="centre tap needs stride 1"):
        im2col((torch.zeros(6, 8),), 2, 3, 3, 2, 1, center=True)
    with pytest.raises(ValueError, match=r"FiLM parameters must be \(2, 16\)"):
        group_norm_mish(torch.zeros(6, 8), 2, norm, film=torch.zeros(2, 8))
    with pytest.raises(ValueError, match="GroupNorm of 8 channels"):
        group_norm_mish(torch.zeros(6, 4), 2, norm)
    with pytest.raises(ValueError, match=r"windows \(3, 1, 3\) \(kernel_size, stride, padding\) need 1 to 3"):
        group_norm_mish(torch.zeros(6, 8), 2, norm, windows=(3, 1, 3))
    with pytest.raises(ValueError, match="needs windows, keep_plain or both"):
        group_norm_mish(torch.zeros(6, 8), 2, norm, keep_plain=False)


def test_policy_takes_the_fused_path_only_where_its_kernels_run() -> None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("this process interprets Triton, so every device qualifies")
    from rf_dp_agents.config import tiny_model_config
    from rf_dp_agents.model import DiffusionPolicy

    model = DiffusionPolicy(tiny_model_config())
    model.fused_graphs = True
    assert not fused_unet_available("cpu")
    assert not model.uses_fused_unet() and model.compiles_unet()  # on the CPU: torch.compile stays the choice
