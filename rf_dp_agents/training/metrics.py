"""Where training metrics go: ``<run>/metrics.jsonl`` always, wandb on request, and a loss-curve PNG.

Every record is one JSON line carrying ``train/global_step`` and ``train/epoch`` plus its values, with the
seed's names (``train/loss`` every step; ``train/loss_std|min|max``, ``train/samples_per_s``,
``train/data_wait_s`` per epoch; ``val/loss`` per validation). On resume, lines past the resumed step
are dropped so the file describes exactly one history.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger("rf_dp_agents.train")

STEP_METRICS = ("train/loss", "train/learning_rate", "train/grad_norm", "train/epoch", "train/global_step")
EPOCH_METRICS = ("train/loss_std", "train/loss_min", "train/loss_max", "train/samples_per_s", "train/data_wait_s")
VAL_ACTION_MSE = "val/action_mse"
"""Logged at each validation with --best-metric action_mse: squared error of the sampled actions on held-out windows."""
VAL_METRICS = ("val/loss", VAL_ACTION_MSE)
ALL_METRICS = STEP_METRICS + EPOCH_METRICS + VAL_METRICS
PEAK_GPU_MEMORY = "train/peak_gpu_mem_gib"
"""Logged per epoch only when training on CUDA: the largest GPU memory this process has allocated so far."""


def wandb_reachable(host: str = "api.wandb.ai", port: int = 443, timeout_s: float = 3.0) -> bool:
    """True when a TCP connection to the wandb API can be opened."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


class MetricsLogger:
    """Appends records to ``metrics.jsonl``, mirrors them to wandb, and redraws ``loss.png`` on demand."""

    def __init__(
        self,
        run_dir: Path,
        resume_step: int | None = None,
        wandb_settings: dict[str, Any] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.path = run_dir / "metrics.jsonl"
        self.records: list[dict[str, Any]] = []
        if resume_step is not None and self.path.exists():
            self.records = [r for r in read_metrics(self.path) if r.get("train/global_step", 0) <= resume_step]
            tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
            with open(tmp, "w") as f:
                for record in self.records:
                    f.write(json.dumps(record) + "\n")
            os.replace(tmp, self.path)
        elif self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a")
        self._wandb = None
        if wandb_settings is not None:
            self._wandb = self._start_wandb(**wandb_settings)

    def _start_wandb(
        self, project: str, entity: str | None, mode: str, name: str, config: dict[str, Any], run_id: str | None
    ) -> Any:
        import wandb

        if mode == "auto":
            mode = "online" if wandb_reachable() else "offline"
            note = "" if mode == "online" else " (api.wandb.ai unreachable; sync later with `wandb sync`)"
            log.info("wandb mode: %s%s", mode, note)
        return wandb.init(
            project=project, entity=entity, mode=mode, name=name, config=config, dir=str(self.run_dir),
            id=run_id, resume="allow",
        )

    @property
    def wandb_run_id(self) -> str | None:
        """The wandb run id (kept in the resume state so a resumed run continues the same wandb run)."""
        return None if self._wandb is None else self._wandb.id

    def log_many(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records (each with ``train/global_step``) to the file and to wandb."""
        lines = []
        for record in records:
            clean = {k: (float(v) if isinstance(v, float) else v) for k, v in record.items()}
            self.records.append(clean)
            lines.append(json.dumps(clean))
            if self._wandb is not None:
                self._wandb.log(clean, step=int(clean["train/global_step"]))
        if lines:
            self._file.write("\n".join(lines) + "\n")
            self._file.flush()

    def plot(self) -> Path:
        """Redraw ``loss.png``: per-step train loss (raw and smoothed), val loss and val action MSE (right axis)
        against the global step."""
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt

        steps = [r["train/global_step"] for r in self.records if "train/loss" in r]
        loss = [r["train/loss"] for r in self.records if "train/loss" in r]
        vsteps = [r["train/global_step"] for r in self.records if "val/loss" in r]
        vloss = [r["val/loss"] for r in self.records if "val/loss" in r]
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        if loss:
            ax.plot(steps, loss, color="tab:blue", alpha=0.3, linewidth=0.8, label="train/loss")
            ax.plot(steps, smooth(loss), color="tab:blue", linewidth=1.5, label="train/loss (smoothed)")
        if vloss:
            ax.plot(vsteps, vloss, "o-", color="tab:orange", label="val/loss (EMA)")
        if loss and min(loss) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("global step")
        ax.set_ylabel("diffusion loss")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        asteps = [r["train/global_step"] for r in self.records if VAL_ACTION_MSE in r]
        amse = [r[VAL_ACTION_MSE] for r in self.records if VAL_ACTION_MSE in r]
        if amse:
            ax2 = ax.twinx()
            ax2.plot(asteps, amse, "s--", color="tab:green", label="val/action_mse (EMA)")
            ax2.set_ylabel("action MSE")
            if min(amse) > 0:
                ax2.set_yscale("log")
            more_handles, more_labels = ax2.get_legend_handles_labels()
            handles, labels = handles + more_handles, labels + more_labels
        ax.legend(handles, labels)
        fig.tight_layout()
        out = self.run_dir / "loss.png"
        tmp = self.run_dir / f".loss.tmp-{os.getpid()}.png"
        fig.savefig(tmp)
        plt.close(fig)
        os.replace(tmp, out)
        return out

    def close(self) -> None:
        """Flush and close the file; finish the wandb run."""
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential smoothing with bias correction (as TensorBoard draws it)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl``; a torn last line (from a killed run) is skipped."""
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def epoch_loss_stats(losses: list[float]) -> dict[str, float]:
    """``train/loss_std``, ``train/loss_min``, ``train/loss_max`` of an epoch's step losses."""
    n = len(losses)
    mean = sum(losses) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in losses) / n)
    return {"train/loss_std": std, "train/loss_min": min(losses), "train/loss_max": max(losses)}


__all__ = [
    "ALL_METRICS",
    "EPOCH_METRICS",
    "MetricsLogger",
    "PEAK_GPU_MEMORY",
    "STEP_METRICS",
    "VAL_ACTION_MSE",
    "VAL_METRICS",
    "epoch_loss_stats",
    "read_metrics",
    "smooth",
    "wandb_reachable",
]
