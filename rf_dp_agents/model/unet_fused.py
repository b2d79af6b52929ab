"""The conditional U-Net's forward for sampling graphs as a few Triton kernels and cuBLAS matrix multiplies, without
torch.compile.

A :class:`FusedUnet` runs a :class:`~rf_dp_agents.model.unet.ConditionalUnet1D`'s own weights (no copy, so weights
changed in place are seen at the next call) with its activations held as ``(B * L, C)`` matrices: the action
sequence ``(B, T, A)`` already is one, so nothing is transposed on the way in or out. Each convolution is one matrix
multiply with the weight read in place as ``(Cout, Cin * K)``, its bias added by cuBLAS, over the windows of its
input; each GroupNorm -> Mish (-> FiLM, or -> the residual added) is one kernel (:func:`group_norm_mish`), which
writes its result straight into the windows of the convolution that reads it next (and as a matrix too where the
result is also a skip, a residual or the input of a residual convolution). Only inputs that come from a matrix
multiply or a concatenation (the up path's skips) are gathered by a kernel of their own (:func:`im2col`). A
transposed convolution is one matrix multiply and one overlap-add (:func:`col2im`). A residual block is four to six
launches where the eager U-Net takes about twenty,
and no TorchDynamo or Inductor is imported, traced or compiled: a later process captures its graph in about the time
the plain U-Net takes (README, Training and inference speed).

The kernels (:mod:`rf_dp_agents.model.unet_kernels`) need Triton and a CUDA tensor, or Triton's interpreter
(``TRITON_INTERPRET=1``) for CPU tensors; :func:`fused_unet_available` says whether they can run.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rf_dp_agents.model.unet import ConditionalResidualBlock1D, ConditionalUnet1D, Conv1dBlock
from rf_dp_agents.model.groupnorm_kernels import interpreting, next_pow2
from rf_dp_agents.model.unet_kernels import import_triton, kernels as _kernels

_BLOCK_L = 16
"""Sequence positions per program of every kernel (lengths are looped over in the GroupNorm kernel)."""
_BLOCK_C = 128
"""Channels per program of the window gather and the overlap-add."""


def fused_unet_available(device: torch.device | str) -> bool:
    """Whether :class:`FusedUnet` can run on ``device``: Triton installed and a CUDA device (or any device under
    Triton's interpreter)."""
    return (torch.device(device).type == "cuda" or interpreting()) and import_triton()


def _check_rows(name: str, x: torch.Tensor, rows: int) -> None:
    if x.dim() != 2 or x.shape[0] != rows or not x.is_contiguous():
        raise ValueError(f"{name} must be a contiguous ({rows}, C) matrix, got shape {tuple(x.shape)} "
                         f"with strides {x.stride()}")


def im2col(
    sources: Sequence[torch.Tensor], batch: int, length: int, kernel_size: int, stride: int = 1, padding: int = 0,
    center: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The windows of a 1-D convolution over one or two ``(batch * length, C_i)`` sources, their channels
    concatenated: a ``(batch * Lout, C * kernel_size)`` matrix, column ``c * kernel_size + k`` (so a
    ``(Cout, C, K)`` weight multiplies it as ``weight.view(Cout, -1)``), zeros where a window leaves the sequence.
    ``center``: also the tap at ``padding`` as a ``(batch * Lout, C)`` matrix (needs ``stride`` 1 and
    ``padding < kernel_size``), which is the concatenated input itself."""
    if not 1 <= len(sources) <= 2:
        raise ValueError(f"im2col takes one or two sources, got {len(sources)}")
    for i, src in enumerate(sources):
        _check_rows(f"im2col source {i}", src, batch * length)
    if center and (stride != 1 or not 0 <= padding < kernel_size):
        raise ValueError(f"im2col's centre tap needs stride 1 and 0 <= padding < kernel_size, got stride {stride}, "
                         f"padding {padding}, kernel_size {kernel_size}")
    x1 = sources[0]
    x2 = sources[1] if len(sources) == 2 else x1
    c1, c2 = x1.shape[1], (x2.shape[1] if len(sources) == 2 else 0)
    l_out = (length + 2 * padding - kernel_size) // stride + 1
    cols = torch.empty((batch * l_out, (c1 + c2) * kernel_size), dtype=x1.dtype, device=x1.device)
    mid = torch.empty((batch * l_out, c1 + c2), dtype=x1.dtype, device=x1.device) if center else cols
    grid = (batch, triton_cdiv(l_out, _BLOCK_L), triton_cdiv(c1 + c2, _BLOCK_C))
    _kernels(interpreting()).im2col[grid](
        x1, x2, cols, mid, length, l_out, c1, c2,
        K=kernel_size, STRIDE=stride, PAD=padding, BLOCK_L=_BLOCK_L, BLOCK_C=_BLOCK_C,
        HAS_X2=len(sources) == 2, CENTER=center,
    )
    return cols, (mid if center else None)


def col2im(
    cols: torch.Tensor, bias: torch.Tensor | None, batch: int, length: int, channels: int, kernel_size: int,
    stride: int, padding: int,
) -> torch.Tensor:
    """The overlap-add of a transposed convolution: ``cols`` ``(batch * length, channels * kernel_size)`` (the
    input times the ``(Cin, Cout, K)`` weight read as ``(Cin, Cout * K)``) -> ``(batch * Lout, channels)`` with
    ``Lout = (length - 1) * stride - 2 * padding + kernel_size``, ``bias`` added."""
    _check_rows("col2im input", cols, batch * length)
    if cols.shape[1] != channels * kernel_size:
        raise ValueError(f"col2im input needs {channels} x {kernel_size} columns, got {cols.shape[1]}")
    l_out = (length - 1) * stride - 2 * padding + kernel_size
    out = torch.empty((batch * l_out, channels), dtype=cols.dtype, device=cols.device)
    grid = (batch, triton_cdiv(l_out, _BLOCK_L), triton_cdiv(channels, _BLOCK_C))
    _kernels(interpreting()).col2im[grid](
        cols, cols if bias is None else bias, out, length, l_out, channels,
        K=kernel_size, STRIDE=stride, PAD=padding, BLOCK_L=_BLOCK_L, BLOCK_C=_BLOCK_C, HAS_BIAS=bias is not None,
    )
    return out


Windows = tuple[int, int, int]
"""``(kernel_size, stride, padding)`` of the convolution whose input windows a GroupNorm kernel writes."""


def window_spec(conv: nn.Conv1d) -> Windows:
    """The :data:`Windows` of ``conv``."""
    return conv.kernel_size[0], conv.stride[0], conv.padding[0]


def group_norm_mish(
    x: torch.Tensor, batch: int, norm: nn.GroupNorm, film: torch.Tensor | None = None,
    residual: torch.Tensor | None = None, windows: Windows | None = None, keep_plain: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``mish(group_norm(x))``, then ``* film[:, :C] + film[:, C:]`` and ``+ residual`` where given, for ``x``
    ``(batch * L, C)``; ``film`` is ``(batch, 2 * C)`` with contiguous rows, ``residual`` like ``x``.

    Returns ``(plain, cols)``: the ``(batch * L, C)`` result (None when not ``keep_plain``) and, for ``windows``
    ``(kernel_size, stride, padding)``, the result already gathered into that convolution's windows,
    ``im2col((plain,), batch, L, kernel_size, stride, padding)`` (None without ``windows``). The convolution may
    not have more windows than ``L``."""
    rows, channels = x.shape
    _check_rows("group_norm_mish input", x, rows)
    if rows % batch or channels != norm.num_channels or norm.weight is None:
        raise ValueError(f"group_norm_mish: input {tuple(x.shape)} does not fit batch {batch} and an affine "
                         f"GroupNorm of {norm.num_channels} channels")
    if film is not None and (film.shape != (batch, 2 * channels) or film.stride(1) != 1):
        raise ValueError(f"FiLM parameters must be ({batch}, {2 * channels}) with contiguous rows, got "
                         f"{tuple(film.shape)} with strides {film.stride()}")
    if residual is not None:
        _check_rows("group_norm_mish residual", residual, rows)
    if windows is None and not keep_plain:
        raise ValueError("group_norm_mish needs windows, keep_plain or both")
    length = rows // batch
    kernel_size, stride, padding = (0, 1, 0) if windows is None else windows
    l_cols = (length + 2 * padding - kernel_size) // stride + 1 if windows is not None else 0
    if windows is not None and (kernel_size < 1 or stride < 1 or not 0 <= padding < kernel_size
                                or not 1 <= l_cols <= length):
        raise ValueError(f"group_norm_mish windows {windows} (kernel_size, stride, padding) need 1 to {length} "
                         f"windows over {length} positions and 0 <= padding < kernel_size, got {l_cols}")
    plain = torch.empty_like(x) if keep_plain else None
    cols = (torch.empty((batch * l_cols, channels * kernel_size), dtype=x.dtype, device=x.device)
            if windows is not None else None)
    group_channels = channels // norm.num_groups
    _kernels(interpreting()).group_norm_mish[(batch, norm.num_groups)](
        x, norm.weight, norm.bias, x if film is None else film, x if residual is None else residual,
        x if plain is None else plain, x if cols is None else cols,
        length, l_cols, channels, 0 if film is None else film.stride(0), norm.eps,
        CG=group_channels, BLOCK_L=_BLOCK_L, BLOCK_CG=next_pow2(group_channels),
        HAS_FILM=film is not None, HAS_RES=residual is not None, PLAIN=keep_plain,
        COLS_K=kernel_size, COLS_STRIDE=stride, COLS_PAD=padding,
    )
    return plain, cols


def triton_cdiv(a: int, b: int) -> int:
    """Ceiling division (a launch grid's size)."""
    return -(-int(a) // int(b))


class FusedUnet(nn.Module):
    """Same contract as :meth:`ConditionalUnet1D.forward` (``sample`` (B, T, A), ``timestep``, ``global_cond``,
    optional per-block ``film``), computed by this module's kernels from ``unet``'s weights."""

    def __init__(self, unet: ConditionalUnet1D) -> None:
        super().__init__()
        self.unet = unet

    def _conv_block(self, block: Conv1dBlock, sources: Sequence[torch.Tensor], batch: int,
                    length: int) -> torch.Tensor:
        conv, norm = block[0], block[1]
        cols, _ = im2col(sources, batch, length, *window_spec(conv))
        plain, _ = group_norm_mish(F.linear(cols, conv.weight.view(conv.out_channels, -1), conv.bias), batch, norm)
        return plain

    def _residual_block(
        self, block: ConditionalResidualBlock1D, sources: Sequence[torch.Tensor], batch: int, length: int,
        film: torch.Tensor, cols: torch.Tensor | None = None, windows: Windows | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The block's output ``(batch * length, C)`` and, for ``windows``, the next convolution's windows of it.
        ``cols``: the windows of ``sources`` for the first convolution, already written by the previous kernel."""
        conv, norm = block.blocks[0][0], block.blocks[0][1]
        projected = isinstance(block.residual_conv, nn.Conv1d)
        mid = None
        if cols is None:  # the centre tap is the input itself: only a concatenation needs it written out
            cols, mid = im2col(sources, batch, length, *window_spec(conv), center=projected and len(sources) > 1)
        second = block.blocks[1][0]
        _, cols = group_norm_mish(F.linear(cols, conv.weight.view(conv.out_channels, -1), conv.bias), batch, norm,
                                  film=film, windows=window_spec(second), keep_plain=False)
        if projected:
            rc = block.residual_conv
            residual = F.linear(sources[0] if mid is None else mid, rc.weight.view(rc.out_channels, -1), rc.bias)
        else:
            residual = sources[0]
        out = F.linear(cols, second.weight.view(second.out_channels, -1), second.bias)
        plain, cols = group_norm_mish(out, batch, block.blocks[1][1], residual=residual, windows=windows)
        assert plain is not None
        return plain, cols

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        global_cond: torch.Tensor,
        film: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``sample`` (B, T, A) -> (B, T, A), as the wrapped U-Net computes it."""
        unet = self.unet
        if film is None:
            film = unet.step_film(timestep, global_cond)
        elif len(film) != unet.num_residual_blocks:
            raise ValueError(f"film needs one tensor per residual block ({unet.num_residual_blocks}), got {len(film)}")
        films = iter(film)
        batch, length, action_dim = sample.shape
        x = sample.reshape(batch * length, action_dim).contiguous()
        skips: list[torch.Tensor] = []
        cols = None  # windows of x for the next convolution, when the kernel that wrote x also wrote them
        for res1, res2, down in unet.down_modules:
            ahead = down if isinstance(down, nn.Conv1d) else unet.mid_modules[0].blocks[0][0]
            x, cols = self._residual_block(res1, (x,), batch, length, next(films),
                                           windows=window_spec(res2.blocks[0][0]))
            x, cols = self._residual_block(res2, (x,), batch, length, next(films), cols, window_spec(ahead))
            skips.append(x)
            if isinstance(down, nn.Conv1d):
                x = F.linear(cols, down.weight.view(down.out_channels, -1), down.bias)
                length, cols = x.shape[0] // batch, None
        mids = list(unet.mid_modules)
        for j, mid in enumerate(mids):
            ahead = window_spec(mids[j + 1].blocks[0][0]) if j + 1 < len(mids) else None
            x, cols = self._residual_block(mid, (x,), batch, length, next(films), cols, ahead)
        for res1, res2, up in unet.up_modules:
            x, cols = self._residual_block(res1, (x, skips.pop()), batch, length, next(films),
                                           windows=window_spec(res2.blocks[0][0]))
            x, _ = self._residual_block(res2, (x,), batch, length, next(films), cols)
            products = x @ up.weight.view(up.in_channels, -1)
            x = col2im(products, up.bias, batch, length, up.out_channels, up.kernel_size[0], up.stride[0],
                       up.padding[0])
            length = x.shape[0] // batch
        block, proj = unet.final_conv
        x = self._conv_block(block, (x,), batch, length)
        x = F.linear(x, proj.weight.view(proj.out_channels, -1), proj.bias)
        return x.view(batch, length, proj.out_channels)


__all__ = ["FusedUnet", "Windows", "col2im", "fused_unet_available", "group_norm_mish", "im2col", "triton_cdiv",
           "window_spec"]
