"""The Triton kernels of :mod:`rf_dp_agents.model.unet_fused` (the U-Net's inference path without torch.compile).

Activations are ``(B * L, C)`` row-major matrices (a sequence position per row, channels contiguous):

* ``im2col``: the windows of a 1-D convolution (zero padding, any stride) from one or two sources whose channels are
  concatenated, written as the ``(B * Lout, C * K)`` matrix a ``(Cout, C, K)`` weight multiplies in place (column
  ``c * K + k``); optionally also the centre tap's ``(B * L, C)`` matrix (the concatenated input itself).
* ``col2im``: the overlap-add of a transposed convolution's ``(B * L, Cout * K)`` products, plus its bias.
* ``group_norm_mish``: GroupNorm (two passes over a (sample, group) tile: mean, then centred variance), affine,
  Mish, then optionally FiLM (``y * scale + shift``) and a residual added, in one kernel; its output is written as a
  ``(B * L, C)`` matrix, as the windows of a convolution that reads it (``im2col``'s layout), or both.
* ``scheduler_step``: a DDPM or DDIM update, element-wise, from its per-timestep coefficients
  (:mod:`rf_dp_agents.model.step_fused`).

Triton is imported on first use through :func:`rf_dp_agents.model.groupnorm_kernels.import_triton`; arithmetic is
fp32 whatever the tensors' dtype.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any

from rf_dp_agents.model import groupnorm_kernels

triton: Any = None
tl: Any = None


def _im2col_kernel(
    x1_ptr,
    x2_ptr,
    out_ptr,
    center_ptr,
    L_in,
    L_out,
    C1,
    C2,
    K: tl.constexpr,
    STRIDE: tl.constexpr,
    PAD: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_C: tl.constexpr,
    HAS_X2: tl.constexpr,
    CENTER: tl.constexpr,
):
    b = tl.program_id(0)
    lo = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    C = C1 + C2
    l_mask = lo < L_out
    c_mask = c < C
    in1 = c < C1
    out_rows = (b * L_out + lo).to(tl.int64)
    out_mask = l_mask[:, None] & c_mask[None, :]
    for k in tl.static_range(K):
        li = lo * STRIDE + k - PAD
        valid = (li >= 0) & (li < L_in) & l_mask
        rows = (b * L_in + li).to(tl.int64)
        v = tl.load(x1_ptr + rows[:, None] * C1 + c[None, :], mask=valid[:, None] & (in1 & c_mask)[None, :], other=0.0)
        if HAS_X2:
            m2 = valid[:, None] & ((c >= C1) & c_mask)[None, :]
            v2 = tl.load(x2_ptr + rows[:, None] * C2 + (c - C1)[None, :], mask=m2, other=0.0)
            v = tl.where(in1[None, :], v, v2)
        tl.store(out_ptr + out_rows[:, None] * (C * K) + c[None, :] * K + k, v, mask=out_mask)
        if CENTER:
            if k == PAD:
                tl.store(center_ptr + out_rows[:, None] * C + c[None, :], v, mask=out_mask)


def _col2im_kernel(
    cols_ptr,
    bias_ptr,
    out_ptr,
    L_in,
    L_out,
    C,
    K: tl.constexpr,
    STRIDE: tl.constexpr,
    PAD: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_C: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    b = tl.program_id(0)
    j = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    j_mask = j < L_out
    c_mask = c < C
    acc = tl.zeros([BLOCK_L, BLOCK_C], dtype=tl.float32)
    for k in tl.static_range(K):
        num = j + PAD - k
        i = tl.where(num >= 0, num, 0) // STRIDE
        valid = (num >= 0) & (num % STRIDE == 0) & (i < L_in) & j_mask
        rows = (b * L_in + i).to(tl.int64)
        v = tl.load(cols_ptr + rows[:, None] * (C * K) + c[None, :] * K + k,
                    mask=valid[:, None] & c_mask[None, :], other=0.0)
        acc += v.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + c, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    out_rows = (b * L_out + j).to(tl.int64)
    tl.store(out_ptr + out_rows[:, None] * C + c[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=j_mask[:, None] & c_mask[None, :])


def _group_norm_mish_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    film_ptr,
    res_ptr,
    out_ptr,
    cols_ptr,
    L,
    L_cols,
    C,
    film_row,
    eps,
    CG: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_CG: tl.constexpr,
    HAS_FILM: tl.constexpr,
    HAS_RES: tl.constexpr,
    PLAIN: tl.constexpr,
    COLS_K: tl.constexpr,
    COLS_STRIDE: tl.constexpr,
    COLS_PAD: tl.constexpr,
):
    b = tl.program_id(0)
    g = tl.program_id(1)
    cg = tl.arange(0, BLOCK_CG)
    cg_mask = cg < CG
    c = g * CG + cg
    base = b.to(tl.int64) * L * C
    inv_n = 1.0 / (L * CG)
    acc = tl.zeros([BLOCK_L, BLOCK_CG], dtype=tl.float32)
    for l0 in range(0, L, BLOCK_L):
        rows = l0 + tl.arange(0, BLOCK_L)
        mask = (rows < L)[:, None] & cg_mask[None, :]
        acc += tl.load(x_ptr + base + rows[:, None] * C + c[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(tl.sum(acc, axis=1), axis=0) * inv_n
    acc = tl.zeros([BLOCK_L, BLOCK_CG], dtype=tl.float32)
    for l0 in range(0, L, BLOCK_L):
        rows = l0 + tl.arange(0, BLOCK_L)
        mask = (rows < L)[:, None] & cg_mask[None, :]
        x = tl.load(x_ptr + base + rows[:, None] * C + c[None, :], mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, x - mean, 0.0)
        acc += d * d
    rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(acc, axis=1), axis=0) * inv_n + eps)
    scale = tl.load(w_ptr + c, mask=cg_mask, other=0.0).to(tl.float32) * rstd
    shift = tl.load(b_ptr + c, mask=cg_mask, other=0.0).to(tl.float32) - mean * scale
    if HAS_FILM:
        film_scale = tl.load(film_ptr + b * film_row + c, mask=cg_mask, other=0.0).to(tl.float32)
        film_shift = tl.load(film_ptr + b * film_row + C + c, mask=cg_mask, other=0.0).to(tl.float32)
    for l0 in range(0, L, BLOCK_L):
        rows = l0 + tl.arange(0, BLOCK_L)
        mask = (rows < L)[:, None] & cg_mask[None, :]
        offs = base + rows[:, None] * C + c[None, :]
        y = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) * scale[None, :] + shift[None, :]
        e = tl.exp(tl.minimum(y, 20.0))  # Mish: y * tanh(softplus(y)) = y * n / (n + 2), n = e^y (e^y + 2)
        n = e * (e + 2.0)
        y = tl.where(y > 20.0, y, y * n / (n + 2.0))
        if HAS_FILM:
            y = y * film_scale[None, :] + film_shift[None, :]
        if HAS_RES:
            y += tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        y = y.to(out_ptr.dtype.element_ty)
        if PLAIN:
            tl.store(out_ptr + offs, y, mask=mask)
        # the windows of a convolution that reads the result: row l is tap k of window (l - k + pad) / stride where
        # that divides; window w's taps that fall off the sequence are 0 (rows here also stand for windows w < L_cols)
        for k in tl.static_range(COLS_K):
            shifted = rows - k + COLS_PAD
            window = tl.where(shifted >= 0, shifted, 0) // COLS_STRIDE
            hit = (shifted >= 0) & (shifted % COLS_STRIDE == 0) & (window < L_cols)
            col = c[None, :] * COLS_K + k
            tl.store(cols_ptr + (b * L_cols + window).to(tl.int64)[:, None] * (C * COLS_K) + col, y,
                     mask=mask & hit[:, None])
            source = rows * COLS_STRIDE + k - COLS_PAD
            off = (rows < L_cols) & ((source < 0) | (source >= L))
            tl.store(cols_ptr + (b * L_cols + rows).to(tl.int64)[:, None] * (C * COLS_K) + col, tl.zeros_like(y),
                     mask=off[:, None] & cg_mask[None, :])


def _scheduler_step_kernel(
    sample_ptr,
    output_ptr,
    noise_ptr,
    prev_ptr,
    n,
    p,
    q,
    c_x0,
    c_sample,
    c_output,
    std,
    BLOCK: tl.constexpr,
    CLIP: tl.constexpr,
    HAS_NOISE: tl.constexpr,
):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    s = tl.load(sample_ptr + i, mask=mask, other=0.0).to(tl.float32)
    e = tl.load(output_ptr + i, mask=mask, other=0.0).to(tl.float32)
    x0 = p * s + q * e
    if CLIP:
        x0 = tl.minimum(tl.maximum(x0, -1.0), 1.0)
    y = c_x0 * x0 + c_sample * s + c_output * e
    if HAS_NOISE:
        y += std * tl.load(noise_ptr + i, mask=mask, other=0.0).to(tl.float32)
    tl.store(prev_ptr + i, y, mask=mask)


@functools.lru_cache(maxsize=None)
def import_triton() -> bool:
    """Import Triton into this module's globals (the kernels' ``tl``); False where it is not installed."""
    global triton, tl
    if not groupnorm_kernels.import_triton():
        return False
    triton, tl = groupnorm_kernels.triton, groupnorm_kernels.tl
    return True


@functools.lru_cache(maxsize=None)
def kernels(interpret: bool) -> SimpleNamespace:
    """The JIT-wrapped kernels (``interpret`` keys the cache: Triton decides on wrapping whether to interpret).
    Lengths and channel counts are not specialised on, so one compiled kernel serves every layer of a U-Net."""
    if not import_triton():
        raise RuntimeError("the fused U-Net kernels need the triton package")
    runtime = ("L_in", "L_out", "C1", "C2", "C", "L", "L_cols", "film_row", "n")

    def jit(fn: Any) -> Any:
        names = fn.__code__.co_varnames[: fn.__code__.co_argcount]
        return triton.jit(fn, do_not_specialize=[name for name in runtime if name in names])

    return SimpleNamespace(
        im2col=jit(_im2col_kernel),
        col2im=jit(_col2im_kernel),
        group_norm_mish=jit(_group_norm_mish_kernel),
        scheduler_step=jit(_scheduler_step_kernel),
    )


__all__ = ["import_triton", "kernels"]
