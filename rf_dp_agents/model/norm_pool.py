"""A ResNet stem's GroupNorm, ReLU and max-pool as one layer that keeps only its input for backward.

At 240x320 the stem's normalised activations ``(N, 64, 120, 160)`` and the max-pool's int64 indices are each as
large as the stem convolution's output; with that output, which GroupNorm keeps anyway, they are about 40% of the
encoder's saved activations. :class:`FastGroupNormReluMaxPool` keeps only the convolution's output and the
per-group statistics: its backward recomputes ``relu(group_norm(x))`` with the same Triton kernels (the same
values bit for bit), finds the max-pool's indices again, routes the gradient through them and runs the GroupNorm
backward with the ReLU mask. That costs one more GroupNorm forward and max-pool forward per step, and frees two
full-resolution tensors from the forward until the stem's backward.

Where the Triton kernels do not run (not a channels_last CUDA tensor, Triton missing, traced by torch.compile)
the layer is ``F.group_norm``, ``F.relu`` and ``F.max_pool2d``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from rf_dp_agents.model.groupnorm import (
    FastGroupNorm,
    contiguous_affine,
    group_norm_nhwc_forward,
    group_norm_nhwc_grads,
)

Pool = tuple[int, int, int]
"""The max-pool's (kernel size, stride, padding)."""


def _pool_with_indices(y: torch.Tensor, pool: Pool) -> tuple[torch.Tensor, torch.Tensor]:
    k, s, p = pool
    return torch.ops.aten.max_pool2d_with_indices(y, [k, k], [s, s], [p, p], [1, 1], False)


class _GroupNormReluMaxPool(torch.autograd.Function):
    """``max_pool2d(relu(group_norm(x)))`` saving ``x`` and the statistics only."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        num_groups: int,
        eps: float,
        pool: Pool,
    ) -> torch.Tensor:
        y, mean, rstd = group_norm_nhwc_forward(x, num_groups, weight, bias, eps, True)
        out, _ = _pool_with_indices(y, pool)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.num_groups, ctx.eps, ctx.pool = num_groups, eps, pool
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, bias, mean, rstd = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        if not any(needs):
            return None, None, None, None, None, None
        y, _, _ = group_norm_nhwc_forward(x, ctx.num_groups, weight, bias, ctx.eps, True)
        _, indices = _pool_with_indices(y, ctx.pool)
        k, s, p = ctx.pool
        dy = torch.ops.aten.max_pool2d_with_indices_backward(
            dout.contiguous(memory_format=torch.channels_last), y, [k, k], [s, s], [p, p], [1, 1], False, indices
        )
        del y, indices
        return (*group_norm_nhwc_grads(dy, x, weight, bias, mean, rstd, True, needs), None, None, None)


class FastGroupNormReluMaxPool(FastGroupNorm):
    """``nn.GroupNorm`` (same parameters and state dict), then ReLU, then ``max_pool2d(kernel_size, stride,
    padding)``, in one layer that saves only its input for backward where the Triton kernels run."""

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        *,
        kernel_size: int = 3,
        stride: int = 2,
        padding: int = 1,
    ) -> None:
        super().__init__(num_groups, num_channels, eps, affine, relu=True)
        self.pool: Pool = (int(kernel_size), int(stride), int(padding))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.uses_triton(input):
            weight, bias = contiguous_affine(self.weight, self.bias)
            return _GroupNormReluMaxPool.apply(input, weight, bias, int(self.num_groups), float(self.eps), self.pool)
        k, s, p = self.pool
        return F.max_pool2d(super().forward(input), k, s, p)

    def extra_repr(self) -> str:
        k, s, p = self.pool
        return super().extra_repr() + f", max_pool=(kernel_size={k}, stride={s}, padding={p})"


__all__ = ["FastGroupNormReluMaxPool"]
