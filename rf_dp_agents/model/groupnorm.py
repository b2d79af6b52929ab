"""GroupNorm for channels_last (NHWC) activations as Triton kernels, optionally fused with a following ReLU.

PyTorch's native ``group_norm`` kernel works on NCHW, so channels_last activations pay two layout
transposes per call. Here an ``(N, C, H, W)`` channels_last tensor is read in place as ``(N, H*W, C)``,
with every load coalesced along the contiguous channel axis:

* forward: per (sample, chunk of rows) partial sums of ``x - s`` and ``(x - s)^2`` per group, ``s`` being
  the group's first value (a shift that keeps ``E[d^2] - E[d]^2`` accurate for inputs far from zero);
  then one elementwise pass combines the partials of its sample into ``mean``/``rstd`` and writes
  ``(x - mean) * rstd * w + b`` (then ReLU) in the input's dtype and layout.
* backward: per (sample, chunk) partial per-channel sums of ``dy`` and ``dy * xhat`` (the ReLU mask
  recomputed from ``x``); then one elementwise pass combines them into the per-group terms and writes
  ``dx``. Only ``x`` and the ``(N, G)`` fp32 ``mean``/``rstd`` are kept for backward.

Two kernel launches each way (plus one small reduction for the weight and bias gradients). The kernels themselves
are in :mod:`rf_dp_agents.model.groupnorm_kernels`; this module chooses their grids and wraps them for autograd.

Statistics and arithmetic are fp32 whatever the input dtype (bf16, fp16 or fp32). Triton is imported on
first use; :class:`FastGroupNorm` falls back to ``F.group_norm`` where Triton is missing or the input is
not a supported channels_last CUDA tensor. With ``TRITON_INTERPRET=1`` the kernels also run on CPU
tensors through Triton's interpreter.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from rf_dp_agents.model.groupnorm_kernels import import_triton, interpreting, kernels as _kernels, next_pow2

_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_MAX_CHANNELS = 4096
_MAX_GRID_Y = 65535
_MAX_CHUNKS = 32
"""Most row chunks per sample in the reductions (the elementwise kernels re-read every chunk's partials)."""
_TILE_ELEMENTS = 8192
"""Elements of one elementwise tile (rows x padded channels)."""
_REDUCE_TILE_ELEMENTS = 4096
"""Elements of one reduction step (rows x padded channels)."""
_CPU_PROGRAMS = 4
"""Programs the reductions aim for when running under the interpreter."""
_PROGRAMS_PER_SM = 4
_APPLY_WARPS = 8
_REDUCE_WARPS = 4


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _groups_supported(channels: int, num_groups: int) -> bool:
    if num_groups <= 0 or channels % num_groups:
        return False
    group_channels = channels // num_groups
    return group_channels & (group_channels - 1) == 0


def _layout_supported(x: torch.Tensor) -> bool:
    if x.dim() != 4 or x.dtype not in _DTYPES or x.numel() == 0:
        return False
    _, c, h, w = x.shape
    if c > _MAX_CHANNELS or c * h * w >= 2**31:
        return False
    block_c = next_pow2(c)
    block_hw = max(1, _TILE_ELEMENTS // block_c)
    return -(-h * w // block_hw) <= _MAX_GRID_Y and x.is_contiguous(memory_format=torch.channels_last)


def triton_group_norm_available(x: torch.Tensor, num_groups: int | None = None) -> bool:
    """Whether :func:`group_norm_nhwc` can run on ``x`` (and, if given, with ``num_groups`` groups).

    True for a 4-D channels_last-contiguous bf16/fp16/fp32 CUDA tensor when Triton imports; with
    ``TRITON_INTERPRET=1`` also for such a CPU tensor (Triton's interpreter runs the kernels).
    """
    if not (x.device.type == "cuda" or (x.device.type == "cpu" and interpreting())):
        return False
    if not _layout_supported(x):
        return False
    if num_groups is not None and not _groups_supported(x.shape[1], num_groups):
        return False
    return import_triton()


def _reduction_chunks(n: int, hw: int, block_hw: int, device: torch.device) -> tuple[int, int]:
    """(rows per chunk, chunks per sample) so that the reduction grid fills the device with few partials."""
    tiles = -(-hw // block_hw)
    if device.type == "cuda":
        target = _PROGRAMS_PER_SM * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    else:
        target = _CPU_PROGRAMS
    tiles_per_chunk = max(1, -(-n * tiles // target), -(-tiles // _MAX_CHUNKS))
    return tiles_per_chunk * block_hw, -(-tiles // tiles_per_chunk)


def _chunk_block(block_c: int) -> int:
    return max(1, min(_MAX_CHUNKS, 4096 // block_c))


def _check_inputs(x: torch.Tensor, num_groups: int) -> None:
    if not _layout_supported(x):
        raise ValueError(
            "group_norm_nhwc needs a non-empty 4-D channels_last-contiguous bf16/fp16/fp32 tensor with at most "
            f"{_MAX_CHANNELS} channels; got shape {tuple(x.shape)}, dtype {x.dtype}, strides {x.stride()}"
        )
    if not _groups_supported(x.shape[1], num_groups):
        raise ValueError(
            f"group_norm_nhwc needs channels ({x.shape[1]}) divisible by num_groups ({num_groups}) "
            "with a power-of-two number of channels per group"
        )


def group_norm_nhwc_forward(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    relu: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward kernels alone (no autograd, inputs as :func:`group_norm_nhwc` checks them): ``(y, mean, rstd)``,
    the statistics ``(N, G)`` fp32. Deterministic: the same ``x`` gives the same ``y`` bit for bit, so a backward
    may recompute ``y``."""
    kernels = _kernels(interpreting())
    n, c, h, w = x.shape
    hw, cg, g = h * w, c // num_groups, num_groups
    block_c = next_pow2(c)
    block_g = block_c // cg
    block_r = max(1, _REDUCE_TILE_ELEMENTS // block_c)
    rows_per_chunk, n_chunks = _reduction_chunks(n, hw, block_r, x.device)
    part = torch.empty((n, n_chunks, 2, block_g), device=x.device, dtype=torch.float32)
    kernels.fwd_stats[(n, n_chunks)](
        x, part, hw, rows_per_chunk, n_chunks,
        C=c, CG=cg, BLOCK_C=block_c, BLOCK_G=block_g, BLOCK_HW=block_r, num_warps=_REDUCE_WARPS,
    )
    mean = torch.empty((n, g), device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    y = torch.empty_like(x, memory_format=torch.channels_last)
    block_e = max(1, _TILE_ELEMENTS // block_c)
    kernels.fwd_apply[(n, -(-hw // block_e))](
        x, y, weight if weight is not None else mean, bias if bias is not None else mean, part, mean, rstd,
        hw, n_chunks, 1.0 / (hw * cg), float(eps),
        C=c, CG=cg, G=g, BLOCK_C=block_c, BLOCK_G=block_g, BLOCK_HW=block_e, BLOCK_K=_chunk_block(block_c),
        HAS_W=weight is not None, HAS_B=bias is not None, RELU=relu, num_warps=_APPLY_WARPS,
    )
    return y, mean, rstd


class _GroupNormNHWC(torch.autograd.Function):
    """Autograd wrapper of the Triton kernels: saves ``x`` and the per-group ``mean``/``rstd``."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        num_groups: int,
        eps: float,
        relu: bool,
    ) -> torch.Tensor:
        y, mean, rstd = group_norm_nhwc_forward(x, num_groups, weight, bias, eps, relu)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.relu = relu
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, bias, mean, rstd = ctx.saved_tensors
        return (*group_norm_nhwc_grads(dy, x, weight, bias, mean, rstd, ctx.relu, ctx.needs_input_grad[:3]),
                None, None, None)


def group_norm_nhwc_grads(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    relu: bool,
    needs: Sequence[bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The backward kernels alone: ``(dx, dweight, dbias)`` for output gradient ``dy``, each None where
    ``needs`` (three flags, as ``ctx.needs_input_grad``) says it is not wanted."""
    need_dx, need_dw, need_db = needs
    if not (need_dx or need_dw or need_db):
        return None, None, None
    dy = dy.contiguous(memory_format=torch.channels_last)
    kernels = _kernels(interpreting())
    n, c, h, w = x.shape
    g = mean.shape[1]
    hw, cg = h * w, c // g
    block_c = next_pow2(c)
    block_r = max(1, _REDUCE_TILE_ELEMENTS // block_c)
    rows_per_chunk, n_chunks = _reduction_chunks(n, hw, block_r, x.device)
    w_arg = weight if weight is not None else mean
    b_arg = bias if bias is not None else mean
    flags = dict(HAS_W=weight is not None, HAS_B=bias is not None, RELU=relu)
    part = torch.empty((n, n_chunks, 2, block_c), device=x.device, dtype=torch.float32)
    kernels.bwd_partial[(n, n_chunks)](
        x, dy, w_arg, b_arg, mean, rstd, part, hw, rows_per_chunk, n_chunks,
        C=c, CG=cg, G=g, BLOCK_C=block_c, BLOCK_HW=block_r, **flags, num_warps=_REDUCE_WARPS,
    )
    dx = None
    if need_dx:  # the partial channel sums of dy and dy * xhat give the per-group terms of dx
        dx = torch.empty_like(x, memory_format=torch.channels_last)
        block_e = max(1, _TILE_ELEMENTS // block_c)
        kernels.bwd_apply[(n, -(-hw // block_e))](
            x, dy, dx, w_arg, b_arg, mean, rstd, part, hw, n_chunks, 1.0 / (hw * cg),
            C=c, CG=cg, G=g, BLOCK_C=block_c, BLOCK_G=block_c // cg, BLOCK_HW=block_e, BLOCK_K=_chunk_block(block_c),
            **flags, num_warps=_APPLY_WARPS,
        )
    dw = db = None
    if need_dw or need_db:
        sums = part.sum(dim=(0, 1))[:, : x.shape[1]]
        dw = sums[1].to(weight.dtype) if need_dw and weight is not None else None
        db = sums[0].to(bias.dtype) if need_db and bias is not None else None
    return dx, dw, db


def group_norm_nhwc(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
    relu: bool = False,
) -> torch.Tensor:
    """``F.group_norm(x, num_groups, weight, bias, eps)`` (then ReLU if ``relu``) on channels_last ``x``.

    ``x`` is ``(N, C, H, W)``, channels_last-contiguous, bf16/fp16/fp32, with ``C // num_groups`` a power of
    two; the result has ``x``'s shape, dtype and layout. Differentiable in ``x``, ``weight`` and ``bias``.
    """
    _check_inputs(x, num_groups)
    weight, bias = contiguous_affine(weight, bias)
    return _GroupNormNHWC.apply(x, weight, bias, int(num_groups), float(eps), bool(relu))


def contiguous_affine(
    weight: torch.Tensor | None, bias: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``weight`` and ``bias`` made contiguous, as the kernels read them (None stays None)."""
    return (None if weight is None else weight.contiguous()), (None if bias is None else bias.contiguous())


class FastGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and state dict) that runs the Triton NHWC kernels when it can.

    ``relu=True`` fuses a following ReLU. Inputs the kernels do not take (not channels_last, not on CUDA,
    Triton missing), and any call traced by torch.compile, go through ``F.group_norm`` (+ ``F.relu``).
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        relu: bool = False,
    ) -> None:
        super().__init__(num_groups, num_channels, eps, affine, device, dtype)
        self.relu = relu

    def uses_triton(self, input: torch.Tensor) -> bool:
        """Whether :meth:`forward` runs the Triton kernels on ``input``: never under torch.compile, where Inductor
        generates its own fused GroupNorm from ``F.group_norm``."""
        return not torch.compiler.is_compiling() and triton_group_norm_available(input, self.num_groups)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.uses_triton(input):
            return group_norm_nhwc(input, self.num_groups, self.weight, self.bias, self.eps, self.relu)
        out = F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)
        return F.relu(out) if self.relu else out

    def extra_repr(self) -> str:
        return super().extra_repr() + (", relu=True" if self.relu else "")


__all__ = ["FastGroupNorm", "contiguous_affine", "group_norm_nhwc", "group_norm_nhwc_forward", "group_norm_nhwc_grads",
           "triton_group_norm_available"]
