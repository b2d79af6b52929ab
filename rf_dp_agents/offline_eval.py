"""Offline action error of a trained policy on the windows of its dataset split, per sampler.

For every window the model samples a chunk from the window's observations; the error is taken on the
executed part ``pred[:, To-1 : To-1+Ta]`` against the recorded actions, in raw units (rad for the joints,
[-1, 1] for the gripper). Comparing samplers (DDPM-100 against DDPM-10 or DDIM-10, say) on the same windows
and the same noise seeds tells whether a faster sampler loses accuracy, without a simulator. The held-out
(``val``) windows measure the policy; the ``train`` windows, which a trained model fits closely, isolate the
sampler's own error from the model's generalisation error. A ``:bf16`` suffix samples through CUDA graphs that
run the U-Net from bfloat16 weights (``DiffusionPolicy.bf16_graphs``); ``:fused`` and ``:compiled`` choose graphs
that run it with the fused Triton kernels (``DiffusionPolicy.fused_graphs``, the default on CUDA) or compiled by
torch.compile, so their cost in accuracy is measured the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from rf_dp_agents.checkpoint import CONFIG_NAME, load_checkpoint, resolve_checkpoint_dir, resolve_device, sampling_config
from rf_dp_agents.data.dataset import SequenceDataset
from rf_dp_agents.model.diffusion import DiffusionPolicy


SPLITS = ("val", "train")


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler and its number of denoising steps, written ``name:steps`` (``ddim:10``), with ``:bf16`` when
    the U-Net runs from bfloat16 weights in CUDA graphs (``ddpm:10:bf16``), and ``:fused`` or ``:compiled`` to name
    how the graphs run the U-Net: through the fused Triton kernels (``ddpm:10:fused``, also the library's default)
    or compiled by torch.compile (``ddpm:10:compiled``); ``ddpm:10:bf16:fused`` combines them."""

    name: str
    steps: int
    bf16: bool = False
    fused: bool | None = None
    """The model's ``fused_graphs`` switch: True for ``:fused``, False for ``:compiled``, None (no suffix) keeps
    the model's own setting."""

    @classmethod
    def parse(cls, text: str) -> "SamplerSpec":
        """Parse ``name:steps[:bf16][:fused|:compiled]``; a clear error for anything else."""
        name, _, rest = text.partition(":")
        steps, _, suffix = rest.partition(":")
        flags = suffix.split(":") if suffix else []
        unet = flags[1:] if flags[:1] == ["bf16"] else flags
        if (name not in ("ddpm", "ddim", "dpmsolver") or not steps.isdigit() or int(steps) <= 0
                or unet not in ([], ["fused"], ["compiled"])):
            raise ValueError(f"sampler spec {text!r}: expected ddpm|ddim|dpmsolver:<steps>[:bf16][:fused|:compiled], "
                             f"e.g. ddim:10")
        return cls(name, int(steps), "bf16" in flags, unet == ["fused"] if unet else None)

    @property
    def graphs_only(self) -> bool:
        """Whether the spec samples through CUDA graphs only (``:bf16``, ``:fused`` or ``:compiled``)."""
        return self.bf16 or self.fused is not None

    def __str__(self) -> str:
        unet = {True: ":fused", False: ":compiled", None: ""}[self.fused]
        return f"{self.name}:{self.steps}" + (":bf16" if self.bf16 else "") + unet


def run_settings(run_or_checkpoint: Path) -> dict:
    """Dataset path and split settings recorded in the training run's ``run.json`` (searched upwards)."""
    for folder in [run_or_checkpoint, *run_or_checkpoint.resolve().parents][:4]:
        if (folder / "run.json").is_file():
            doc = json.loads((folder / "run.json").read_text())
            cfg = doc["config"]
            return {"zarr_path": doc["dataset"]["path"], "val_ratio": cfg["val_ratio"], "seed": cfg["seed"],
                    "max_train_episodes": cfg["max_train_episodes"], "image_key": cfg["image_key"]}
    raise FileNotFoundError(f"no run.json in {run_or_checkpoint} or its parents: pass --zarr-path and the split")


@torch.no_grad()
def chunk_error_sums(
    model: DiffusionPolicy,
    dataset: SequenceDataset,
    ids: torch.Tensor,
    split: str,
    seed: int,
    num_inference_steps: int | None = None,
) -> tuple[float, float, int]:
    """Sums of squared and absolute errors of the executed chunk over windows ``ids`` of ``split``, and the
    number of values summed. Window ``i`` samples with noise seeded ``seed + i``, so the result does not depend on
    how the windows are batched or spread over processes."""
    cfg = model.config
    start, stop = cfg.obs_horizon - 1, cfg.obs_horizon - 1 + cfg.action_horizon
    batch = dataset.get_batch(ids, split=split)
    gens = [torch.Generator().manual_seed(seed + int(i)) for i in ids]
    obs = {key: value.to(model.device) for key, value in batch.items() if key != "action"}
    pred = model.predict_action(obs, generator=gens, num_inference_steps=num_inference_steps).cpu()
    err = pred[:, start:stop] - batch["action"][:, start:stop].cpu()
    return float(err.pow(2).sum()), float(err.abs().sum()), err.numel()


@torch.no_grad()
def action_errors(
    checkpoint: str | Path,
    samplers: Sequence[SamplerSpec],
    zarr_path: str | Path | None = None,
    batch_size: int = 64,
    max_windows: int | None = None,
    device: str = "auto",
    seed: int = 0,
    split: str = "val",
) -> dict:
    """Mean squared and mean absolute error of the executed chunk on the ``split`` windows ('val' or 'train'),
    per sampler."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    ckpt = resolve_checkpoint_dir(checkpoint)
    settings = run_settings(Path(checkpoint))
    model, metadata = load_checkpoint(ckpt, resolve_device(device))
    cfg = model.config
    dataset = SequenceDataset.for_model(
        zarr_path or settings["zarr_path"], cfg, settings["val_ratio"], settings["seed"],
        settings["max_train_episodes"], settings["image_key"],
    )
    available = dataset.n_val if split == "val" else dataset.n_train
    n = available if max_windows is None else min(available, max_windows)
    if n == 0:
        raise ValueError(f"{dataset.source}: no {split} windows (val_ratio {settings['val_ratio']})")
    if any(spec.graphs_only for spec in samplers) and not (model.device.type == "cuda" and model.cuda_graphs):
        raise ValueError(f"samplers {', '.join(str(s) for s in samplers if s.graphs_only)} run in CUDA graphs only; "
                         f"the model is on {model.device}")
    # every spec checked (as load_policy checks them) before any sampling starts
    configs = [sampling_config(cfg, spec.name, spec.steps, source=str(ckpt / CONFIG_NAME)) for spec in samplers]
    results = {}
    default_fused = model.fused_graphs
    for spec, config in zip(samplers, configs):
        model.config = config
        model.bf16_graphs = spec.bf16
        model.fused_graphs = default_fused if spec.fused is None else spec.fused
        sq = ab = 0.0
        count = 0
        for lo in range(0, n, batch_size):
            ids = torch.arange(lo, min(lo + batch_size, n))
            squared, absolute, values = chunk_error_sums(model, dataset, ids, split, seed)
            sq, ab, count = sq + squared, ab + absolute, count + values
        results[str(spec)] = {"mse": sq / count, "mae": ab / count}
    return {"checkpoint": str(ckpt), "dataset": str(dataset.source), "split": split, "windows": n,
            "epoch": metadata.get("epoch"), "errors": results}


__all__ = ["SPLITS", "SamplerSpec", "action_errors", "chunk_error_sums", "run_settings"]
