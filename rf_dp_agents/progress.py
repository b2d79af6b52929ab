"""Progress bars that suit both a terminal and a log file.

On a terminal a bar redraws as often as tqdm likes. Written to a file or a pipe (a job under nohup, a cluster
scheduler, ``pipeline.sh``'s logs), every redraw is appended, so a run of a few thousand steps leaves tens of
kilobytes of bars; there the bar redraws at most every ``RF_PROGRESS_SECONDS`` seconds (default 30).
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 30.0
"""Least seconds between two redraws of a bar that writes to a file or a pipe."""


def log_interval(stream: TextIO | None = None) -> float | None:
    """Seconds between redraws for a bar on ``stream`` (stderr by default): None on a terminal (tqdm's own),
    else ``RF_PROGRESS_SECONDS`` or 30. A bad ``RF_PROGRESS_SECONDS`` is an error naming it."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if callable(isatty) and isatty():
        return None
    raw = os.environ.get("RF_PROGRESS_SECONDS")
    if raw is None:
        return LOG_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"RF_PROGRESS_SECONDS must be a number of seconds, got {raw!r}") from None
    if not value >= 0:
        raise ValueError(f"RF_PROGRESS_SECONDS must be >= 0, got {raw!r}")
    return value


class _LogBar(tqdm):
    """A bar off a terminal: a new postfix waits for the next timed redraw instead of forcing one."""

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh=False, **kwargs)


def progress_bar(iterable: Any = None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)`` that, off a terminal, redraws at most every :func:`log_interval` seconds."""
    interval = log_interval(kwargs.get("file"))
    if interval is None:
        return tqdm(iterable, **kwargs)
    kwargs.setdefault("mininterval", interval)
    kwargs.setdefault("maxinterval", max(interval, 10.0))
    return _LogBar(iterable, **kwargs)


__all__ = ["LOG_INTERVAL_S", "log_interval", "progress_bar"]
