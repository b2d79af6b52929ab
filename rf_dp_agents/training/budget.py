"""The wall-clock budget of a training run (``--max-minutes``) and the cosine schedule fitted to it.

A cosine schedule laid out over ``--epochs`` and cut by a time budget ends with the learning rate still high. With
``--fit-schedule`` (the default under a budget) the trainer asks, after every epoch, how many epochs fit the time
left (from the measured training time per epoch and the measured validation time, a validation every
``--val-every`` epochs and after the last), and sets the schedule's length to that (at most ``--epochs``): the
learning rate reaches 0 at the end of the budget. Only this module reads the clock for the budget, so tests can
drive it with a clock of their own.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

from torch.optim.lr_scheduler import LRScheduler

from rf_dp_agents.model.schedulers import WarmupCosine
from rf_dp_agents.training.config import TrainConfig

log = logging.getLogger("rf_dp_agents.train")

Clock = Callable[[], float]


def monotonic() -> float:
    """The budget's default clock (seconds)."""
    return time.perf_counter()


def epochs_that_fit(remaining_s: float, train_s: float, val_s: float, epochs_done: int, max_epochs: int,
                    val_every: int) -> int:
    """The last epoch (counted from 1) that ends within ``remaining_s`` seconds, at most ``max_epochs`` and at
    least ``epochs_done``: each further epoch costs ``train_s``, plus ``val_s`` where it validates (every
    ``val_every``-th epoch) and on the final one, which always validates."""
    if train_s <= 0 or val_s < 0 or val_every < 1:
        raise ValueError(f"epochs_that_fit needs train_s > 0, val_s >= 0 and val_every >= 1, "
                         f"got {train_s}, {val_s}, {val_every}")
    best, spent = epochs_done, 0.0
    for epoch in range(epochs_done + 1, max_epochs + 1):
        validates = epoch % val_every == 0
        spent += train_s + (val_s if validates else 0.0)
        if spent + (0.0 if validates else val_s) > remaining_s:  # ending here adds its validation
            break
        best = epoch
    return best


@dataclass
class Budget:
    """Elapsed time against ``--max-minutes``, and the epoch and validation times measured in this process."""

    max_minutes: float | None
    clock: Clock = field(default_factory=lambda: monotonic)
    started: float = 0.0
    epoch_starts: list[float] = field(default_factory=list)
    train_times: list[float] = field(default_factory=list)
    val_times: list[float] = field(default_factory=list)
    _val_in_epoch: list[float] = field(default_factory=list)

    def start(self) -> None:
        """Start the budget's clock (before the first epoch this process runs)."""
        self.started = self.clock()

    def now(self) -> float:
        """The budget's clock."""
        return self.clock()

    def elapsed_s(self) -> float:
        """Seconds since :meth:`start`."""
        return self.clock() - self.started

    def spent(self) -> bool:
        """Whether the budget has run out (never without ``--max-minutes``)."""
        return self.max_minutes is not None and self.elapsed_s() / 60.0 >= self.max_minutes

    def epoch_started(self) -> float:
        """Mark the start of an epoch; returns the clock reading."""
        now = self.clock()
        self.epoch_starts.append(now)
        self._val_in_epoch.append(0.0)
        return now

    def record_train(self, seconds: float) -> None:
        """The current epoch's training time (its optimiser steps)."""
        self.train_times.append(float(seconds))

    def record_validation(self, seconds: float) -> None:
        """The current epoch's validation time (losses, action error, snapshot)."""
        self.val_times.append(float(seconds))
        if self._val_in_epoch:
            self._val_in_epoch[-1] += float(seconds)

    def epoch_seconds(self) -> float:
        """An epoch's cost without validation: the median span between epoch starts (validations taken out),
        leaving out the first epoch (graph capture, warm-up) once a later one has been timed; before any span,
        the first epoch's training time."""
        starts = self.epoch_starts
        spans = [b - a - v for a, b, v in zip(starts, starts[1:], self._val_in_epoch)]
        if spans:
            return statistics.median(spans[1:] or spans)
        return statistics.median(self.train_times)

    def fitted_epochs(self, epochs_done: int, max_epochs: int, val_every: int) -> int:
        """The schedule length that fits the time left, asked after epoch ``epochs_done``'s training: the rest of
        that epoch (its share of an epoch's cost beyond training, and its validation when due) comes first."""
        if self.max_minutes is None or not self.train_times:
            return max_epochs
        per_epoch = max(self.epoch_seconds(), 1e-9)
        val_s = self.val_times[-1] if self.val_times else 0.0
        tail = max(0.0, per_epoch - self.train_times[-1]) + (val_s if epochs_done % val_every == 0 else 0.0)
        remaining = self.max_minutes * 60.0 - self.elapsed_s() - tail
        return epochs_that_fit(remaining, per_epoch, val_s, epochs_done, max_epochs, val_every)


def _cosines(scheduler: LRScheduler) -> list[WarmupCosine]:
    """The scheduler's cosine factors (one per parameter group; none for a constant schedule)."""
    return [fn for fn in getattr(scheduler, "lr_lambdas", []) if isinstance(fn, WarmupCosine)]


def set_schedule_steps(scheduler: LRScheduler, total_steps: int) -> bool:
    """Make a cosine schedule end at ``total_steps``; returns False for a schedule without a length (constant)."""
    cosines = _cosines(scheduler)
    for fn in cosines:
        fn.num_training_steps = int(total_steps)
    return bool(cosines)


def schedule_steps(scheduler: LRScheduler) -> int | None:
    """The step at which a cosine schedule reaches 0, or None for a schedule without a length."""
    cosines = _cosines(scheduler)
    return cosines[0].num_training_steps if cosines else None


def fit_schedule(budget: Budget, scheduler: LRScheduler, cfg: TrainConfig, epochs_done: int, current: int,
                 steps_per_epoch: int, agree: Callable[[int], int], announce: bool) -> int:
    """The schedule length after epoch ``epochs_done``'s training: with --fit-schedule under --max-minutes and a
    cosine schedule, the epochs that fit the time left (``agree`` gives every rank rank 0's estimate), else
    ``current``. The scheduler is set to it; a change is logged when ``announce``."""
    if not (cfg.fit_schedule and cfg.max_minutes is not None and cfg.lr_scheduler == "cosine"):
        return current
    fitted = agree(budget.fitted_epochs(epochs_done, cfg.epochs, cfg.val_every))
    if fitted != current:
        if announce:
            log.info("LR schedule fitted to the --max-minutes budget after epoch %d: %d epochs (was %d; --epochs %d)",
                     epochs_done, fitted, current, cfg.epochs)
        set_schedule_steps(scheduler, fitted * steps_per_epoch)
    return fitted


__all__ = ["Budget", "epochs_that_fit", "fit_schedule", "monotonic", "schedule_steps", "set_schedule_steps"]
