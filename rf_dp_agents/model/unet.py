"""Conditional 1-D U-Net over action sequences (Chi et al., Diffusion Policy, RSS 2023).

The network maps a noisy action sequence ``(B, T, A)``, a diffusion step ``(B,)`` and a global
condition vector ``(B, G)`` to a tensor of the same shape as the sequence (predicted noise or sample).
Every residual block is FiLM-conditioned on ``[step embedding, global condition]``.
"""

from __future__ import annotations

import math

import torch
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


class Conv1dBlock(nn.Sequential):
    """Conv1d -> GroupNorm -> Mish, length-preserving."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int = 8) -> None:
        if out_channels % n_groups:
            raise ValueError(f"Conv1dBlock: {out_channels} channels are not divisible into {n_groups} groups")
        super().__init__(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
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
            nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = self.blocks[0](x)
        film = self.cond_encoder(cond).view(cond.shape[0], 2, self.out_channels, 1)
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
            down = nn.Conv1d(dim_out, dim_out, 3, 2, 1) if not is_last else nn.Identity()
            self.down_modules.append(nn.ModuleList([block(dim_in, dim_out), block(dim_out, dim_out), down]))
        mid_dim = all_dims[-1]
        self.mid_modules = nn.ModuleList([block(mid_dim, mid_dim), block(mid_dim, mid_dim)])
        self.up_modules = nn.ModuleList()
        for dim_in, dim_out in reversed(in_out[1:]):
            up = nn.ConvTranspose1d(dim_in, dim_in, 4, 2, 1)
            self.up_modules.append(nn.ModuleList([block(dim_out * 2, dim_in), block(dim_in, dim_in), up]))
        self.final_conv = nn.Sequential(
            Conv1dBlock(start_dim, start_dim, kernel_size, n_groups), nn.Conv1d(start_dim, input_dim, 1)
        )

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int, global_cond: torch.Tensor) -> torch.Tensor:
        """``sample`` (B, T, A), ``timestep`` scalar or (B,), ``global_cond`` (B, G) -> (B, T, A)."""
        batch = sample.shape[0]
        if not isinstance(timestep, torch.Tensor):
            timestep = torch.tensor([timestep], device=sample.device)
        timestep = timestep.to(sample.device).reshape(-1).expand(batch)
        cond = torch.cat([self.diffusion_step_encoder(timestep), global_cond], dim=-1)
        x = sample.transpose(1, 2)
        skips = []
        for res1, res2, down in self.down_modules:
            x = res2(res1(x, cond), cond)
            skips.append(x)
            x = down(x)
        for mid in self.mid_modules:
            x = mid(x, cond)
        for res1, res2, up in self.up_modules:
            x = torch.cat((x, skips.pop()), dim=1)
            x = up(res2(res1(x, cond), cond))
        return self.final_conv(x).transpose(1, 2)


__all__ = ["ConditionalUnet1D", "ConditionalResidualBlock1D", "Conv1dBlock", "SinusoidalPosEmb"]
