"""The Triton kernels of :mod:`rf_dp_agents.model.groupnorm` (NHWC GroupNorm, optionally fused with a ReLU).

Triton is imported on first use (:func:`import_triton`), so this module imports without it; the kernels are
wrapped with ``triton.jit`` by :func:`kernels`. Each kernel reads an ``(N, C, H, W)`` channels_last tensor as
``(N, H*W, C)`` rows with coalesced loads along the channels; the launch grids and tile sizes are chosen by
``groupnorm.py``. Statistics and arithmetic are fp32 whatever the tensor's dtype.
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace
from typing import Any

triton: Any = None
tl: Any = None


def interpreting() -> bool:
    """Whether Triton runs its kernels through the interpreter (``TRITON_INTERPRET=1``, CPU tensors allowed)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def next_pow2(value: int) -> int:
    """The smallest power of two >= ``value`` (1 for ``value`` <= 1): a Triton block size."""
    return 1 << max(0, int(value) - 1).bit_length()


def _fwd_stats_kernel(
    x_ptr,
    part_ptr,
    HW,
    rows_per_chunk,
    n_chunks,
    C: tl.constexpr,
    CG: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    n = tl.program_id(0)
    chunk = tl.program_id(1)
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < C
    x_ptr += n.to(tl.int64) * HW * C
    shift = tl.load(x_ptr + (cols // CG) * CG, mask=col_mask, other=0.0).to(tl.float32)
    row_start = chunk * rows_per_chunk
    row_end = tl.minimum(row_start + rows_per_chunk, HW)
    acc_s = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
    acc_q = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
    for r0 in range(row_start, row_end, BLOCK_HW):
        rows = r0 + tl.arange(0, BLOCK_HW)
        mask = (rows < row_end)[:, None] & col_mask[None, :]
        x = tl.load(x_ptr + rows[:, None] * C + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, x - shift[None, :], 0.0)
        acc_s += d
        acc_q += d * d
    s = tl.sum(tl.reshape(tl.sum(acc_s, axis=0), [BLOCK_G, CG]), axis=1)
    q = tl.sum(tl.reshape(tl.sum(acc_q, axis=0), [BLOCK_G, CG]), axis=1)
    groups = tl.arange(0, BLOCK_G)
    out = part_ptr + (n * n_chunks + chunk) * (2 * BLOCK_G)
    tl.store(out + groups, s)
    tl.store(out + BLOCK_G + groups, q)


def _fwd_apply_kernel(
    x_ptr,
    y_ptr,
    w_ptr,
    b_ptr,
    part_ptr,
    mean_ptr,
    rstd_ptr,
    HW,
    n_chunks,
    inv_count,
    eps,
    C: tl.constexpr,
    CG: tl.constexpr,
    G: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_K: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    RELU: tl.constexpr,
):
    n = tl.program_id(0)
    tile = tl.program_id(1)
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < C
    group = cols // CG
    x_ptr += n.to(tl.int64) * HW * C
    y_ptr += n.to(tl.int64) * HW * C
    part_ptr += n * n_chunks * (2 * BLOCK_G)
    ks = tl.arange(0, BLOCK_K)
    acc_s = tl.zeros([BLOCK_K, BLOCK_C], dtype=tl.float32)
    acc_q = tl.zeros([BLOCK_K, BLOCK_C], dtype=tl.float32)
    for k0 in range(0, n_chunks, BLOCK_K):
        k = k0 + ks
        offs = k[:, None] * (2 * BLOCK_G) + group[None, :]
        mask = (k < n_chunks)[:, None] & col_mask[None, :]
        acc_s += tl.load(part_ptr + offs, mask=mask, other=0.0)
        acc_q += tl.load(part_ptr + offs + BLOCK_G, mask=mask, other=0.0)
    mean_d = tl.sum(acc_s, axis=0) * inv_count
    var = tl.maximum(tl.sum(acc_q, axis=0) * inv_count - mean_d * mean_d, 0.0)
    rstd = 1.0 / tl.sqrt(var + eps)
    mean = tl.load(x_ptr + group * CG, mask=col_mask, other=0.0).to(tl.float32) + mean_d
    first = col_mask & (cols % CG == 0) & (tile == 0)
    tl.store(mean_ptr + n * G + group, mean, mask=first)
    tl.store(rstd_ptr + n * G + group, rstd, mask=first)
    scale = rstd
    if HAS_W:
        scale = scale * tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    if HAS_B:
        bias = tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_C], dtype=tl.float32)
    rows = tile * BLOCK_HW + tl.arange(0, BLOCK_HW)
    mask = (rows < HW)[:, None] & col_mask[None, :]
    offs = rows[:, None] * C + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = (x - mean[None, :]) * scale[None, :] + bias[None, :]
    if RELU:
        y = tl.where(y > 0.0, y, 0.0)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def _bwd_partial_kernel(
    x_ptr,
    dy_ptr,
    w_ptr,
    b_ptr,
    mean_ptr,
    rstd_ptr,
    part_ptr,
    HW,
    rows_per_chunk,
    n_chunks,
    C: tl.constexpr,
    CG: tl.constexpr,
    G: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    RELU: tl.constexpr,
):
    n = tl.program_id(0)
    chunk = tl.program_id(1)
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < C
    stat = n * G + cols // CG
    mean = tl.load(mean_ptr + stat, mask=col_mask, other=0.0)
    rstd = tl.load(rstd_ptr + stat, mask=col_mask, other=0.0)
    scale = rstd
    if HAS_W:
        scale = scale * tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    if HAS_B:
        bias = tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_C], dtype=tl.float32)
    base = n.to(tl.int64) * HW * C
    row_start = chunk * rows_per_chunk
    row_end = tl.minimum(row_start + rows_per_chunk, HW)
    acc_a = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
    for r0 in range(row_start, row_end, BLOCK_HW):
        rows = r0 + tl.arange(0, BLOCK_HW)
        mask = (rows < row_end)[:, None] & col_mask[None, :]
        offs = base + rows[:, None] * C + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        xc = x - mean[None, :]
        if RELU:
            dy = tl.where(xc * scale[None, :] + bias[None, :] > 0.0, dy, 0.0)
        acc_a += dy
        acc_b += dy * xc
    out = part_ptr + (n * n_chunks + chunk) * (2 * BLOCK_C)
    tl.store(out + cols, tl.sum(acc_a, axis=0))
    tl.store(out + BLOCK_C + cols, tl.sum(acc_b, axis=0) * rstd)


def _bwd_apply_kernel(
    x_ptr,
    dy_ptr,
    dx_ptr,
    w_ptr,
    b_ptr,
    mean_ptr,
    rstd_ptr,
    part_ptr,
    HW,
    n_chunks,
    inv_count,
    C: tl.constexpr,
    CG: tl.constexpr,
    G: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_K: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    RELU: tl.constexpr,
):
    n = tl.program_id(0)
    tile = tl.program_id(1)
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < C
    stat = n * G + cols // CG
    mean = tl.load(mean_ptr + stat, mask=col_mask, other=0.0)
    rstd = tl.load(rstd_ptr + stat, mask=col_mask, other=0.0)
    part_ptr += n * n_chunks * (2 * BLOCK_C)
    ks = tl.arange(0, BLOCK_K)
    acc_a = tl.zeros([BLOCK_K, BLOCK_C], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_K, BLOCK_C], dtype=tl.float32)
    for k0 in range(0, n_chunks, BLOCK_K):
        k = k0 + ks
        offs = k[:, None] * (2 * BLOCK_C) + cols[None, :]
        mask = (k < n_chunks)[:, None]
        acc_a += tl.load(part_ptr + offs, mask=mask, other=0.0)
        acc_b += tl.load(part_ptr + offs + BLOCK_C, mask=mask, other=0.0)
    sum_a = tl.sum(acc_a, axis=0)
    sum_b = tl.sum(acc_b, axis=0)
    scale = rstd
    if HAS_W:
        w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        scale = scale * w
        sum_a = sum_a * w
        sum_b = sum_b * w
    if HAS_B:
        bias = tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_C], dtype=tl.float32)
    s1 = tl.sum(tl.reshape(sum_a, [BLOCK_G, CG]), axis=1)
    s2 = tl.sum(tl.reshape(sum_b, [BLOCK_G, CG]), axis=1)
    s1 = tl.reshape(tl.broadcast_to(s1[:, None], [BLOCK_G, CG]), [BLOCK_C])
    s2 = tl.reshape(tl.broadcast_to(s2[:, None], [BLOCK_G, CG]), [BLOCK_C])
    c1 = rstd * s1 * inv_count
    c2 = rstd * rstd * s2 * inv_count
    rows = tile * BLOCK_HW + tl.arange(0, BLOCK_HW)
    mask = (rows < HW)[:, None] & col_mask[None, :]
    offs = n.to(tl.int64) * HW * C + rows[:, None] * C + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    xc = x - mean[None, :]
    if RELU:
        dy = tl.where(xc * scale[None, :] + bias[None, :] > 0.0, dy, 0.0)
    dx = dy * scale[None, :] - (c1[None, :] + xc * c2[None, :])
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@functools.lru_cache(maxsize=None)
def import_triton() -> bool:
    """Import Triton into this module's globals; False where it is not installed."""
    global triton, tl
    try:
        import triton as triton_module
        import triton.language as tl_module
    except ImportError:
        return False
    triton, tl = triton_module, tl_module
    return True


@functools.lru_cache(maxsize=None)
def kernels(interpret: bool) -> SimpleNamespace:
    """The JIT-wrapped kernels (``interpret`` keys the cache: Triton decides on wrapping whether to interpret)."""
    if not import_triton():
        raise RuntimeError("the Triton GroupNorm kernels need the triton package")
    runtime = ("HW", "rows_per_chunk", "n_chunks")

    def jit(fn: Any) -> Any:
        names = fn.__code__.co_varnames[: fn.__code__.co_argcount]
        return triton.jit(fn, do_not_specialize=[name for name in runtime if name in names])

    return SimpleNamespace(
        fwd_stats=jit(_fwd_stats_kernel),
        fwd_apply=jit(_fwd_apply_kernel),
        bwd_partial=jit(_bwd_partial_kernel),
        bwd_apply=jit(_bwd_apply_kernel),
    )


__all__ = ["import_triton", "interpreting", "kernels", "next_pow2"]
