"""Conditional 1-D U-Net over action sequences (Chi et al., Diffusion Policy, RSS 2023).

The network maps a noisy action sequence ``(B, T, A)``, a diffusion step ``(B,)`` and a global
condition vector ``(B, G)`` to a tensor of the same shape as the sequence (predicted noise or sample).
Every residual block is FiLM-conditioned on ``[step embedding, global condition]``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class SinusoidalPosEmb(nn.Module):
    """Sinusoidal embedding of a scalar diffusion step, ``(B,) -> (B, dim)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"SinusoidalPosEmb dim must be even and >= 4, got {dim}")
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freq = torch.exp(torch.arange(half, device=x.device, dtype=torch.float32) * (-math.log(10000) / (half - 1)))
        emb = x.float()[:, None] * freq[None, :]
        return torch.cat((emb.sin(), emb.cos()), dim=-1)


def conv1d_as_matmul(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int = 1, padding: int = 0
) -> torch.Tensor:
    """``F.conv1d(x, weight, bias, stride, padding)`` as an unfold and one matrix multiply.

    ``x`` is ``(B, Cin, L)``, ``weight`` ``(Cout, Cin, K)``. The windows of ``x`` are gathered into a
    ``(B * Lout, Cin * K)`` matrix and multiplied by the weight read in place as ``(Cout, Cin * K)``, so the
    weight is never copied or transposed (cuDNN re-lays out a Conv1d weight on every call). Returns a
    contiguous ``(B, Cout, Lout)`` tensor.
    """
    if x.ndim != 3 or weight.ndim != 3 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"conv1d_as_matmul needs x (B, Cin, L) and weight (Cout, Cin, K), got "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    cout, cin, k = weight.shape
    if padding:
        x = F.pad(x, (padding, padding))
    cols = x.unfold(2, k, stride)  # (B, Cin, Lout, K), a view
    batch, _, lout, _ = cols.shape
    cols = cols.permute(0, 2, 1, 3).reshape(batch * lout, cin * k)
    out = F.linear(cols, weight.reshape(cout, cin * k), bias)
    return out.view(batch, lout, cout).transpose(1, 2).contiguous()


def _matmul_wanted(x: torch.Tensor) -> bool:
    """Whether a Matmul convolution takes its matrix-multiply form for ``x``: on CUDA, while a CUDA graph is
    being captured or torch.compile traces. There it pays (an H200 replays the seed U-Net's forward and
    backward in 5.6 ms instead of 6.9); run eagerly the step is bound by kernel launches, the form adds some,
    and the eager path keeps the seed's cuDNN convolution."""
    return x.is_cuda and (torch.compiler.is_compiling() or torch.cuda.is_current_stream_capturing())


class MatmulConv1d(nn.Conv1d):
    """``nn.Conv1d`` (same parameters and state dict) that runs as :func:`conv1d_as_matmul` on CUDA inside a
    CUDA-graph capture or torch.compile (see ``_matmul_wanted``), and as the native convolution otherwise.

    ``matmul = False`` keeps the native convolution everywhere. Dilation, groups and padding modes other than
    zeros are not taken.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.matmul = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.matmul and _matmul_wanted(x):
            return conv1d_as_matmul(x, self.weight, self.bias, self.stride[0], self.padding[0])
        return super().forward(x)


def conv_transpose1d_as_matmul(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int = 1, padding: int = 0
) -> torch.Tensor:
    """``F.conv_transpose1d(x, weight, bias, stride, padding)`` as one matrix multiply and an overlap-add.

    ``x`` is ``(B, Cin, L)``, ``weight`` ``(Cin, Cout, K)`` read in place as ``(Cin, Cout * K)``; every input
    position's ``Cout * K`` products are summed into the output by ``F.fold``. Returns ``(B, Cout, Lout)``
    with ``Lout = (L - 1) * stride - 2 * padding + K``.
    """
    if x.ndim != 3 or weight.ndim != 3 or x.shape[1] != weight.shape[0]:
        raise ValueError(f"conv_transpose1d_as_matmul needs x (B, Cin, L) and weight (Cin, Cout, K), got "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    cin, cout, k = weight.shape
    batch, _, length = x.shape
    cols = torch.matmul(x.transpose(1, 2), weight.reshape(cin, cout * k))  # (B, L, Cout * K)
    lout = (length - 1) * stride - 2 * padding + k
    out = F.fold(cols.transpose(1, 2), (1, lout), (1, k), padding=(0, padding), stride=(1, stride))
    out = out.view(batch, cout, lout)
    return out if bias is None else out + bias[:, None]


class MatmulConvTranspose1d(nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` (same parameters and state dict) that runs as :func:`conv_transpose1d_as_matmul`
    where :class:`MatmulConv1d` takes its matrix form (cuDNN runs it as a backward-data convolution, 31 us per
    call at batch 1 on an H200). ``matmul`` as in :class:`MatmulConv1d`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.matmul = True

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if self.matmul and output_size is None and _matmul_wanted(x):
            return conv_transpose1d_as_matmul(x, self.weight, self.bias, self.stride[0], self.padding[0])
        return super().forward(x, output_size)


def set_matmul_convolutions(module: nn.Module, enabled: bool) -> nn.Module:
    """Let every :class:`MatmulConv1d` / :class:`MatmulConvTranspose1d` under ``module`` take its matrix form in
    CUDA graphs and torch.compile (``enabled``, the default) or keep cuDNN everywhere; returns ``module``."""
    for child in module.modules():
        if isinstance(child, (MatmulConv1d, MatmulConvTranspose1d)):
            child.matmul = bool(enabled)
    return module


class Conv1dBlock(nn.Sequential):
    """Conv1d -> GroupNorm -> Mish, length-preserving."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int = 8) -> None:
        if out_channels % n_groups:
            raise ValueError(f"Conv1dBlock: {out_channels} channels are not divisible into {n_groups} groups")
        super().__init__(
            MatmulConv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            nn.Mish(),
        )


class ConditionalResidualBlock1D(nn.Module):
    """Two Conv1dBlocks with FiLM (per-channel scale and bias from the condition) between them."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.blocks = nn.ModuleList(
            [
                Conv1dBlock(in_channels, out_channels, kernel_size, n_groups),
                Conv1dBlock(out_channels, out_channels, kernel_size, n_groups),
            ]
        )
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * out_channels))
        self.residual_conv = (
            MatmulConv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None, film: torch.Tensor | None = None) -> torch.Tensor:
        """``film`` (B, 2 * out_channels), when given, replaces ``cond_encoder(cond)``."""
        out = self.blocks[0](x)
        film = self.cond_encoder(cond) if film is None else film
        film = film.view(x.shape[0], 2, self.out_channels, 1)
        out = film[:, 0] * out + film[:, 1]
        out = self.blocks[1](out)
        return out + self.residual_conv(x)


class ConditionalUnet1D(nn.Module):
    """Chi et al.'s ConditionalUnet1D: down path, two mid blocks, up path with skip connections."""

    def __init__(
        self,
        input_dim: int,
        global_cond_dim: int,
        diffusion_step_embed_dim: int = 128,
        down_dims: tuple[int, ...] = (256, 512, 1024),
        kernel_size: int = 5,
        n_groups: int = 8,
    ) -> None:
        super().__init__()
        all_dims = [input_dim, *down_dims]
        start_dim = down_dims[0]
        dsed = diffusion_step_embed_dim
        self.diffusion_step_encoder = nn.Sequential(
            SinusoidalPosEmb(dsed), nn.Linear(dsed, dsed * 4), nn.Mish(), nn.Linear(dsed * 4, dsed)
        )
        cond_dim = dsed + global_cond_dim
        in_out = list(zip(all_dims[:-1], all_dims[1:]))

        def block(cin: int, cout: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(cin, cout, cond_dim, kernel_size, n_groups)

        self.down_modules = nn.ModuleList()
        for i, (dim_in, dim_out) in enumerate(in_out):
            is_last = i == len(in_out) - 1
            down = MatmulConv1d(dim_out, dim_out, 3, 2, 1) if not is_last else nn.Identity()
            self.down_modules.append(nn.ModuleList([block(dim_in, dim_out), block(dim_out, dim_out), down]))
        mid_dim = all_dims[-1]
        self.mid_modules = nn.ModuleList([block(mid_dim, mid_dim), block(mid_dim, mid_dim)])
        self.up_modules = nn.ModuleList()
        for dim_in, dim_out in reversed(in_out[1:]):
            up = MatmulConvTranspose1d(dim_in, dim_in, 4, 2, 1)
            self.up_modules.append(nn.ModuleList([block(dim_out * 2, dim_in), block(dim_in, dim_in), up]))
        self.num_residual_blocks = len(self.residual_blocks())
        self.final_conv = nn.Sequential(
            Conv1dBlock(start_dim, start_dim, kernel_size, n_groups), MatmulConv1d(start_dim, input_dim, 1)
        )

    def residual_blocks(self) -> list[ConditionalResidualBlock1D]:
        """The FiLM-conditioned blocks in the order :meth:`forward` calls them."""
        down = [b for res1, res2, _ in self.down_modules for b in (res1, res2)]
        up = [b for res1, res2, _ in self.up_modules for b in (res1, res2)]
        return [*down, *self.mid_modules, *up]

    def condition(self, timestep: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        """``[step embedding, global condition]`` (B, step_embed + G) for a scalar or (B,) ``timestep``."""
        batch = global_cond.shape[0]
        timestep = timestep.to(global_cond.device).reshape(-1).expand(batch)
        return torch.cat([self.diffusion_step_encoder(timestep), global_cond], dim=-1)

    def step_film(self, timestep: torch.Tensor | int, global_cond: torch.Tensor) -> list[torch.Tensor]:
        """Every residual block's FiLM parameters ``(B, 2 * channels)`` for one step (a scalar or (B,)
        ``timestep``), in :meth:`residual_blocks` order: what :meth:`forward` computes when given no ``film``."""
        if not isinstance(timestep, torch.Tensor):
            timestep = torch.tensor([timestep], device=global_cond.device)
        cond = self.condition(timestep, global_cond)
        return [block.cond_encoder(cond) for block in self.residual_blocks()]

    def film_tables(self, timesteps: torch.Tensor, global_cond: torch.Tensor) -> list[torch.Tensor]:
        """Every residual block's FiLM parameters for every step of a sampling loop, one batched matrix
        multiply per block: a list (in :meth:`residual_blocks` order) of ``(S, B, 2 * channels)`` tensors for
        ``timesteps`` (S,) and ``global_cond`` (B, G). Row ``i`` of each is what :meth:`forward` computes
        for ``timesteps[i]``; passing them as ``film`` skips the per-step matrix-vector products.
        """
        steps, batch = timesteps.shape[0], global_cond.shape[0]
        emb = self.diffusion_step_encoder(timesteps.to(global_cond.device).reshape(-1))  # (S, E)
        cond = torch.cat(
            [emb[:, None].expand(steps, batch, -1), global_cond[None].expand(steps, batch, -1)], dim=-1
        ).reshape(steps * batch, -1)
        return [block.cond_encoder(cond).view(steps, batch, -1) for block in self.residual_blocks()]

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        global_cond: torch.Tensor,
        film: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``sample`` (B, T, A), ``timestep`` scalar or (B,), ``global_cond`` (B, G) -> (B, T, A).

        ``film``: one ``(B, 2 * channels)`` tensor per residual block (a step's rows of :meth:`film_tables`);
        it replaces the conditioning computed from ``timestep`` and ``global_cond``.
        """
        if film is None:
            film = self.step_film(timestep, global_cond)
        elif len(film) != self.num_residual_blocks:
            raise ValueError(f"film needs one tensor per residual block ({self.num_residual_blocks}), got {len(film)}")
        films = iter(film)
        x = sample.transpose(1, 2)
        skips = []
        for res1, res2, down in self.down_modules:
            x = res1(x, None, next(films))
            x = res2(x, None, next(films))
            skips.append(x)
            x = down(x)
        for mid in self.mid_modules:
            x = mid(x, None, next(films))
        for res1, res2, up in self.up_modules:
            x = torch.cat((x, skips.pop()), dim=1)
            x = res1(x, None, next(films))
            x = up(res2(x, None, next(films)))
        return self.final_conv(x).transpose(1, 2)


__all__ = [
    "ConditionalUnet1D",
    "ConditionalResidualBlock1D",
    "Conv1dBlock",
    "MatmulConv1d",
    "MatmulConvTranspose1d",
    "SinusoidalPosEmb",
    "conv1d_as_matmul",
    "conv_transpose1d_as_matmul",
    "set_matmul_convolutions",
]
