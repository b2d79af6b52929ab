"""Exponential moving average of a model's weights, with Chi et al.'s warmup schedule of the decay.

``decay(step) = clamp(1 - (1 + step / inv_gamma) ** -power, min_decay, max_decay)`` (0 at step 0), as in
diffusion_policy's ``EMAModel``. Floating-point parameters are averaged; buffers (the normalizer's
statistics) and non-float tensors are copied. The averaged copy is a full module, used for validation and
written to checkpoints.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Holds ``averaged`` (a frozen deep copy of the model) and the number of updates made."""

    def __init__(
        self,
        model: nn.Module,
        power: float = 0.75,
        inv_gamma: float = 1.0,
        min_decay: float = 0.0,
        max_decay: float = 0.9999,
    ) -> None:
        self.averaged = copy.deepcopy(model).eval()
        self.averaged.requires_grad_(False)
        self.power, self.inv_gamma = float(power), float(inv_gamma)
        self.min_decay, self.max_decay = float(min_decay), float(max_decay)
        self.optimization_step = 0
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def decay(self, step: int) -> float:
        """EMA decay used at update number ``step`` (0-based)."""
        if step <= 0:
            return 0.0
        value = 1.0 - (1.0 + step / self.inv_gamma) ** -self.power
        return max(self.min_decay, min(value, self.max_decay))

    def _tensor_pairs(self, model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._pairs is None:
            src = dict(model.named_parameters())
            src.update(model.named_buffers())
            dst = dict(self.averaged.named_parameters())
            dst.update(self.averaged.named_buffers())
            if src.keys() != dst.keys():
                raise ValueError("EMA: the model's tensors no longer match the averaged copy's")
            self._pairs = [(dst[name], src[name]) for name in dst]
        return self._pairs

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average toward ``model``'s current weights (call once per optimiser step)."""
        decay = self.decay(self.optimization_step)
        averaged, current, copied_dst, copied_src = [], [], [], []
        for dst, src in self._tensor_pairs(model):
            if dst.dtype.is_floating_point and isinstance(dst, nn.Parameter):
                averaged.append(dst)
                current.append(src.detach())
            else:
                copied_dst.append(dst)
                copied_src.append(src)
        if averaged:
            torch._foreach_lerp_(averaged, current, 1.0 - decay)
        for dst, src in zip(copied_dst, copied_src):
            dst.copy_(src)
        self.optimization_step += 1

    def state(self) -> dict[str, int]:
        """JSON-serialisable counters (the weights are ``averaged.state_dict()``)."""
        return {"optimization_step": self.optimization_step}

    def load_state(self, state: dict[str, int]) -> None:
        """Restore the counters written by :meth:`state`."""
        self.optimization_step = int(state["optimization_step"])


__all__ = ["EMA"]
