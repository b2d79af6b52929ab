"""One whole optimiser step captured in a CUDA graph and replayed: the fast path on a single GPU.

The captured step gathers the batch from the GPU-resident dataset, runs the policy's loss forward and
backward, computes the gradient norm (and clips), applies AdamW and moves the EMA weights, with no host
synchronisation. Per step the host only writes the window ids, reseeds the CUDA generator, steps the
learning-rate schedule (a ``fill_`` of the tensor learning rate) and writes the EMA decay. With the dataset in
page-locked host memory instead, the step reads its batch from a device buffer that a
:class:`~rf_dp_agents.training.host_feed.HostBatchFeed` fills before each replay (gathered on the CPU meanwhile).

The trainer uses it with ``--cuda-graphs`` (measurements: README, Training and inference speed). Requirements,
checked at construction: a CUDA device, one process, one micro-batch per step, an AdamW with ``capturable=True``
and a tensor learning rate (:func:`make_optimizer`, or :func:`make_graph_safe` on an existing one), and the
dataset on the same device or in page-locked host memory. Anything else uses the eager
:func:`rf_dp_agents.training.step.train_step`.
:class:`StepChoice` decides, from the config and the device, which of these fast paths a run takes.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn

from rf_dp_agents.data.dataset import SequenceDataset
from rf_dp_agents.training.config import TrainConfig
from rf_dp_agents.training.distributed import DistInfo
from rf_dp_agents.training.ema import EMA
from rf_dp_agents.training.host_feed import HostBatchFeed


@dataclass(frozen=True)
class StepChoice:
    """Which fast paths the training step of ``cfg`` takes on ``info.device``: CUDA graph, torch.compile,
    bf16 autocast, channels_last encoder. ``dataset_device`` is where the dataset was placed (None before it
    is loaded), ``dataset_pinned`` whether it is in page-locked host memory."""

    cfg: TrainConfig
    info: DistInfo
    dataset_device: torch.device | None = None
    dataset_pinned: bool = False

    def blockers(self) -> list[str]:
        """What keeps the whole step from being captured in a CUDA graph (empty: nothing)."""
        cfg, info = self.cfg, self.info
        blockers = []
        if info.device.type != "cuda":
            blockers.append("a CUDA device")
        if info.distributed:
            blockers.append("a single process (no torchrun/DDP)")
        if cfg.grad_accum_steps != 1:
            blockers.append("--grad-accum-steps 1")
        if cfg.compile == "on":
            blockers.append("the loss not compiled (--compile auto or off)")
        placed = self.dataset_device
        elsewhere = placed is not None and placed != info.device and not self.dataset_pinned
        if cfg.dataset_device == "cpu" or elsewhere:
            blockers.append("the dataset on the GPU or in page-locked host memory (--dataset-device auto, train or "
                            "pinned)")
        if cfg.deterministic:
            blockers.append("no --deterministic (deterministic runs take the eager step)")
        return blockers

    @property
    def cuda_graphs(self) -> bool:
        """Whether the whole optimiser step is replayed as a CUDA graph (see ``TrainConfig.cuda_graphs``)."""
        choice = self.cfg.cuda_graphs
        if choice == "off":
            return False
        blockers = self.blockers()
        if choice == "on" and blockers:
            raise ValueError("--cuda-graphs on needs " + ", ".join(blockers))
        return not blockers

    @property
    def compiled(self) -> bool:
        """Whether the loss is run through torch.compile (see ``TrainConfig.compile``)."""
        choice = self.cfg.compile
        if choice == "auto":
            return self.info.device.type == "cuda" and not self.cfg.deterministic and not self.cuda_graphs
        return choice == "on"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """bfloat16 when the loss runs under autocast (see ``TrainConfig.precision``), else None."""
        choice = self.cfg.precision
        if choice == "auto":
            choice = "bf16" if self.cuda_graphs else "fp32"
        return torch.bfloat16 if choice == "bf16" else None

    @property
    def channels_last(self) -> bool:
        """Whether the image encoder is held channels_last (see ``TrainConfig.channels_last``)."""
        choice = self.cfg.channels_last
        return self.cuda_graphs if choice == "auto" else choice == "on"


@torch.no_grad()
def ema_step_(
    averaged: list[torch.Tensor], current: list[torch.Tensor], decay: torch.Tensor, one_minus_decay: torch.Tensor
) -> None:
    """``averaged <- decay * averaged + (1 - decay) * current`` in place, with the factors as device tensors (so a
    captured graph reads new values at each replay). Outside autograd: with gradients on, the averaged copy took
    a grad_fn that kept the step's graph, and the parameters' AccumulateGrad nodes, alive from one step to the
    next (PyTorch's "AccumulateGrad node's stream does not match" warning under CUDA-graph capture)."""
    torch._foreach_mul_(averaged, decay)
    torch._foreach_add_(averaged, torch._foreach_mul(current, one_minus_decay))


def make_graph_safe(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Turn an AdamW's learning rates into tensors on ``device`` and make it capturable (in place).

    Call it after loading a checkpoint's optimiser state, which stores plain float learning rates
    (see :func:`portable_state_dict`).
    """
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]), device=device)
        group["capturable"] = True


def make_optimizer(
    params: Iterable[nn.Parameter],
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    device: torch.device,
    graph_safe: bool = False,
) -> torch.optim.AdamW:
    """AdamW; on CUDA the fused kernel (one launch for the whole update), and when ``graph_safe`` with a
    tensor learning rate and capturable state (:func:`make_graph_safe`)."""
    optimizer = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=device.type == "cuda")
    if graph_safe and device.type == "cuda":
        make_graph_safe(optimizer, device)
    return optimizer


def portable_state_dict(optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` with float learning rates and ``capturable`` off, loadable by any run."""
    state = optimizer.state_dict()
    for group in state["param_groups"]:
        if isinstance(group.get("lr"), torch.Tensor):
            group["lr"] = float(group["lr"])
        if "capturable" in group:
            group["capturable"] = False
    return state


class GraphedTrainStep:
    """Callable ``step(window_ids, seed, next_ids=None) -> (loss, grad_norm)`` replaying one captured optimiser step.

    ``window_ids`` is an int64 tensor of ``batch_size`` training-window ids, on the dataset's device. With the
    dataset in host memory the batch comes through a :class:`HostBatchFeed` (:attr:`feed`), and ``next_ids``, the
    next step's windows, lets it gather them while this step runs. The learning-rate
    scheduler is stepped by the caller as usual (it fills the optimiser's tensor learning rate in place).
    Building the object runs ``warmup`` real steps to let cuDNN choose kernels, then captures; the
    weights, optimiser state and EMA are restored afterwards, so the run is the same as without warm-up.
    """

    def __init__(
        self,
        policy: nn.Module,
        optimizer: torch.optim.Optimizer,
        ema: EMA | None,
        dataset: SequenceDataset,
        batch_size: int,
        grad_clip_norm: float | None = None,
        warmup: int = 3,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        device = next(policy.parameters()).device
        if device.type != "cuda":
            raise ValueError("GraphedTrainStep needs the policy on a CUDA device")
        if dataset.device != device and not dataset.pinned:
            raise ValueError(f"GraphedTrainStep needs the dataset on {device} or in page-locked host memory, it is "
                             f"on {dataset.device}")
        for group in optimizer.param_groups:
            if not (isinstance(group["lr"], torch.Tensor) and group.get("capturable", False)):
                raise ValueError("GraphedTrainStep needs an optimiser with capturable=True and a tensor lr")
        self.policy, self.optimizer, self.ema, self.dataset = policy, optimizer, ema, dataset
        self.batch_size = int(batch_size)
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.max_norm = math.inf if grad_clip_norm is None else float(grad_clip_norm)
        self.autocast_dtype = autocast_dtype
        self.feed = HostBatchFeed(dataset, batch_size, device) if dataset.device != device else None
        self.static_ids = torch.zeros(batch_size, dtype=torch.int64, device=device) if self.feed is None else None
        self.decay = torch.zeros((), device=device)
        self.one_minus_decay = torch.ones((), device=device)
        self._ema_pairs: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        if ema is not None:
            avg = dict(ema.averaged.named_parameters())
            cur = dict(policy.named_parameters())
            names = [n for n in avg if avg[n].dtype.is_floating_point]
            self._ema_pairs = ([avg[n] for n in names], [cur[n] for n in names])
        self._capture(warmup)

    def _body(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.feed.device_batch if self.feed is not None else self.dataset.get_batch(self.static_ids)
        amp = torch.autocast("cuda", dtype=self.autocast_dtype) if self.autocast_dtype else contextlib.nullcontext()
        with amp:
            loss = self.policy.compute_loss(batch)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_norm, foreach=True)
        self.optimizer.step()
        if self._ema_pairs is not None:
            ema_step_(*self._ema_pairs, self.decay, self.one_minus_decay)
        return loss.detach(), grad_norm.detach()

    def _snapshot(self) -> dict[str, Any]:
        """Weights, EMA and optimiser state copied to host memory: held on the GPU they would add a copy of
        the weights and the EMA (and, on resume, of AdamW's moments) to the warm-up's peak memory."""
        def host(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to("cpu", copy=True)

        tensors: dict[str, Any] = {"params": [host(p) for p in self.params]}
        if self._ema_pairs is not None:
            tensors["ema"] = [host(p) for p in self._ema_pairs[0]]
        tensors["optimizer"] = {
            id(p): {k: host(v) for k, v in state.items() if isinstance(v, torch.Tensor)}
            for p, state in self.optimizer.state.items()
        }
        return tensors

    @torch.no_grad()
    def _restore(self, snap: dict[str, Any]) -> None:
        """Undo the warm-up steps: weights, EMA and optimiser state as before (a state created by the
        warm-up, on a fresh optimiser, is zeroed: Adam's step count and moments start from 0)."""
        for p, saved in zip(self.params, snap["params"]):
            p.copy_(saved)
        if self._ema_pairs is not None:
            for p, saved in zip(self._ema_pairs[0], snap["ema"]):
                p.copy_(saved)
        for p, state in self.optimizer.state.items():
            before = snap["optimizer"].get(id(p), {})
            for key, value in state.items():
                if not isinstance(value, torch.Tensor):
                    continue
                if key in before:
                    value.copy_(before[key])
                else:
                    value.zero_()

    def _capture(self, warmup: int) -> None:
        snap = self._snapshot()
        rng = torch.cuda.get_rng_state()
        first = torch.arange(self.batch_size) % self.dataset.n_train
        if self.feed is not None:
            self.feed.load(first)
        else:
            self.static_ids.copy_(first.to(self.static_ids.device))
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(max(warmup, 1)):
                self.optimizer.zero_grad(set_to_none=True)
                self._body()
        torch.cuda.current_stream().wait_stream(stream)
        self.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=stream):  # the warm-up's stream: one stream for every autograd node
            self.static_loss, self.static_grad_norm = self._body()
        torch.cuda.synchronize()
        self._restore(snap)
        torch.cuda.set_rng_state(rng)

    def __call__(
        self, window_ids: torch.Tensor, seed: int, next_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one optimiser step on ``window_ids``; returns device tensors (loss, grad_norm)."""
        if self.feed is not None:
            self.feed.load(window_ids, next_ids)
        else:
            self.static_ids.copy_(window_ids, non_blocking=True)
        torch.cuda.manual_seed(seed)
        if self.ema is not None:
            decay = self.ema.decay(self.ema.optimization_step)
            self.decay.fill_(decay)
            self.one_minus_decay.fill_(1.0 - decay)
        self.graph.replay()
        if self.ema is not None:
            self.ema.optimization_step += 1
        return self.static_loss.clone(), self.static_grad_norm.clone()

    def close(self) -> None:
        """Stop the host feed's worker thread (nothing to do with the dataset on the GPU)."""
        if self.feed is not None:
            self.feed.close()


__all__ = ["GraphedTrainStep", "StepChoice", "ema_step_", "make_graph_safe", "make_optimizer", "portable_state_dict"]
