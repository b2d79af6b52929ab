"""Per-key affine normalisation of low-dimensional data (state, action), stored as module buffers.

``Normalizer`` is an ``nn.Module`` whose buffers are the fitted scale and offset of each key, so its
statistics travel inside a checkpoint's ``model.safetensors`` and load strictly with the weights.
Images are not normalised here: the vision encoder scales uint8 pixels to [-1, 1] on the device.
"""

from __future__ import annotations

from typing import Literal, Mapping

import numpy as np
import torch
from torch import nn

Mode = Literal["minmax", "gaussian"]
RANGE_EPS = 1e-4
"""Dimensions whose range (minmax) or std (gaussian) is below this are treated as constant."""


class Normalizer(nn.Module):
    """Maps each key's values to about [-1, 1] ("minmax") or zero mean, unit std ("gaussian").

    The map is ``y = x * scale + offset`` per dimension; constant dimensions get scale 1 and are
    centred, so they never divide by zero and round-trip exactly.
    """

    def __init__(self, dims: Mapping[str, int]) -> None:
        super().__init__()
        self.keys: tuple[str, ...] = tuple(dims)
        for key, dim in dims.items():
            if "." in key or not key:
                raise ValueError(f"normalizer key {key!r} must be non-empty and contain no '.'")
            self.register_buffer(f"{key}_scale", torch.ones(int(dim)))
            self.register_buffer(f"{key}_offset", torch.zeros(int(dim)))

    @classmethod
    def fit(cls, data: Mapping[str, np.ndarray | torch.Tensor], mode: Mode | Mapping[str, Mode] = "minmax") -> "Normalizer":
        """Fit statistics over the leading axes of each array (shape (..., D)); ``mode`` per key or for all."""
        dims: dict[str, int] = {}
        stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for key, value in data.items():
            x = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
            if x.ndim < 1 or x.shape[-1] == 0:
                raise ValueError(f"normalizer key {key!r}: expected shape (..., D) with D > 0, got {tuple(x.shape)}")
            x = x.reshape(-1, x.shape[-1]).to(torch.float64)
            if x.shape[0] == 0:
                raise ValueError(f"normalizer key {key!r}: no samples to fit")
            if not torch.isfinite(x).all():
                raise ValueError(f"normalizer key {key!r}: data contains NaN or inf")
            key_mode = mode if isinstance(mode, str) else mode[key]
            if key_mode == "minmax":
                lo, hi = x.min(0).values, x.max(0).values
                span = hi - lo
                const = span < RANGE_EPS
                scale = torch.where(const, torch.ones_like(span), 2.0 / span.clamp_min(RANGE_EPS))
                offset = torch.where(const, -lo, -1.0 - lo * scale)
            elif key_mode == "gaussian":
                mean, std = x.mean(0), x.std(0, unbiased=False)
                const = std < RANGE_EPS
                scale = torch.where(const, torch.ones_like(std), 1.0 / std.clamp_min(RANGE_EPS))
                offset = -mean * scale
            else:
                raise ValueError(f"normalizer key {key!r}: unknown mode {key_mode!r} (use 'minmax' or 'gaussian')")
            dims[key] = x.shape[1]
            stats[key] = (scale.float(), offset.float())
        norm = cls(dims)
        for key, (scale, offset) in stats.items():
            getattr(norm, f"{key}_scale").copy_(scale)
            getattr(norm, f"{key}_offset").copy_(offset)
        return norm

    def _params(self, key: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if key not in self.keys:
            raise KeyError(f"normalizer has no key {key!r}; it holds {list(self.keys)}")
        scale, offset = getattr(self, f"{key}_scale"), getattr(self, f"{key}_offset")
        if x.shape[-1] != scale.shape[0]:
            raise ValueError(f"normalizer key {key!r}: expected last dimension {scale.shape[0]}, got shape {tuple(x.shape)}")
        return scale, offset

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """Map raw values of ``key`` to the normalised range."""
        scale, offset = self._params(key, x)
        return x * scale + offset

    def unnormalize(self, key: str, y: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`."""
        scale, offset = self._params(key, y)
        return (y - offset) / scale


__all__ = ["Normalizer", "Mode", "RANGE_EPS"]
